"""Any dataset of the TFDS catalog by name (cifar10, cifar100, imagenet2012,
mnist, ...), read with `tfds.data_source` from its prepared array_record files.

Images are decoded by TFDS with Pillow (or OpenCV where installed), not
TensorFlow. The input shape, the number of classes and the split sizes come
from the builder's info and the splits themselves; the preprocessing from the
dataset's family (data/preprocess.py) or `config.dataset.preprocess`.
Preparing a dataset (`tfds build`) is done once, outside training: it needs
TensorFlow and, for ImageNet, the archives downloaded by hand.
"""

import functools

import numpy as np
import tensorflow_datasets as tfds

from data import preprocess
from data.idx import DataError

# (train, validation, test) of the datasets whose split choice is not the generic one: a validation split held
# out of train, the test split untouched (ImageNet's labelled test split is TFDS's `validation`).
SPLITS = {
    "cifar10": ("train[:45000]", "train[45000:]", "test"),
    "cifar100": ("train[:45000]", "train[45000:]", "test"),
    "mnist": ("train[:55000]", "train[55000:]", "test"),
    "imagenet2012": ("train[:99%]", "train[99%:]", "validation"),
}


def prepare_command(name: str, data_dir: str | None) -> str:
  """How to prepare `name` in `data_dir`, for an error line."""
  where = f" --data_dir={data_dir}" if data_dir else ""
  manual = (" (first put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in <data_dir>/downloads/manual/)"
            if name.startswith("imagenet2012") else "")
  return (f"`pip install tensorflow && tfds build {name}{where} --file_format=array_record`{manual} (needs the "
          f"internet: or prepare it elsewhere and copy it), or set --config.dataset.data_dir to where it is prepared")


@functools.cache
def builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(f"config.dataset.name={name}: no such dataset (the TFDS catalog's names, e.g. cifar10, "
                    f"imagenet2012, mnist; or this project's fashion_mnist, austen)") from None


def load(split: str, *, name: str, data_dir: str | None = None):
  """`split` (TFDS slicing syntax) of the prepared dataset `name` in `data_dir` (default: TFDS's, $TFDS_DATA_DIR
  or ~/tensorflow_datasets), as a random-access source. Never downloads. A split it does not have: ValueError."""
  found = builder(name, data_dir)
  try:
    return found.as_data_source(split=split)
  except Exception as e:  # noqa: BLE001 - TFDS's error for data it cannot read depends on what it found.
    if not found.is_prepared():
      raise DataError(f"{name} is not prepared in {found.data_dir}; prepare it with "
                      f"{prepare_command(name, data_dir)}") from None
    if isinstance(e, ValueError):  # A split it does not have, or a slice it cannot read: the caller names the field.
      raise
    reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    raise DataError(f"{name} in {found.data_dir} cannot be read with random access ({reason}); prepare it again "
                    f"with {prepare_command(name, data_dir)}") from None


def splits(name: str, data_dir: str | None) -> tuple[str, str, str]:
  """The default (train, validation, test) of `name`: its own `validation` split where it has one (and `test`, else
  that one is the test split and validation is held out of train), else the last 10% of train."""
  if name in SPLITS:
    return SPLITS[name]
  known = set(builder(name, data_dir).info.splits)
  if "validation" in known and "test" in known:
    return "train", "validation", "test"
  return "train[:90%]", "train[90%:]", "test" if "test" in known or not known else "validation"


def features(name: str, data_dir: str | None) -> tuple[str, str, tuple, int]:
  """The input and label features' names, the stored input shape (None where sizes vary) and the classes."""
  info = builder(name, data_dir).info
  if not info.supervised_keys or not hasattr(info.features[info.supervised_keys[1]], "num_classes"):
    raise DataError(f"config.dataset.name={name}: not a classification dataset (no (input, class label) pair in "
                    f"its TFDS info)")
  image, label = info.supervised_keys
  return image, label, tuple(info.features[image].shape), info.features[label].num_classes


def collate(records: dict, noise: np.ndarray | None, *, image: str, label: str,
            family: preprocess.Family) -> dict[str, np.ndarray]:
  """A batch of records (stacked, or lists where sizes vary) as {"inputs", "targets"}."""
  return {"inputs": family.apply(records[image], noise), "targets": np.asarray(records[label], np.int32)}
