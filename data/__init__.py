"""Datasets, what train.py needs to know of each, and the grain input pipeline: this project's two TFDS builders
(Fashion-MNIST, Jane Austen's novels) and any dataset of the TFDS catalog by name (catalog.py)."""

import dataclasses
import functools
from typing import Callable

import numpy as np

from data import austen, catalog, fashion_mnist, preprocess
from data.idx import DataError
from data.pipeline import eval_batches, train_iterator


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset as train.py sees it: `load(split, **config.dataset fields)` prepares it on first use (this project's
  builders) and returns a random-access split; `collate(features, noise)` makes a batch `{"inputs", "targets"}` of
  records stacked by feature, augmented from `noise` (preprocess.NOISE uniforms per example) for training where
  `augments`, plain where `noise` is None; one example's inputs have `input_shape` and `input_dtype`; the model
  predicts `num_classes` logits per target; `splits`: the default (train, validation, test) in TFDS slicing syntax;
  `vocab`: for text, the characters the ids stand for (evaluation then reports bits per character)."""
  load: Callable
  collate: Callable[[dict, np.ndarray | None], dict[str, np.ndarray]]
  input_shape: tuple[int, ...]
  input_dtype: type
  num_classes: int
  splits: tuple[str, str, str]
  vocab: str | None = None
  augments: bool = False
  fixed_shapes: bool = True  # False: stored inputs of varying sizes (ImageNet), never stacked before `collate`.

  @property
  def text(self) -> bool:
    return self.vocab is not None

  def encode(self, text: str) -> np.ndarray:
    return austen.encode(text, self.vocab)

  def decode(self, ids) -> str:
    return austen.decode(ids, self.vocab)


IN_MEMORY_BYTES = 2 * 2**30  # A split up to this size is read once and kept in host memory.


class Split:
  """A random-access split that reads whole batches, collated. One of at most IN_MEMORY_BYTES (Fashion-MNIST,
  CIFAR, the novels) is read once, on first use, into one array per feature, and a batch is one vectorized gather;
  a larger one reads each batch's records."""

  def __init__(self, records, collate: Callable[[dict, np.ndarray | None], dict[str, np.ndarray]],
               fixed_shapes: bool = True):
    self.records, self.collate, self.fixed_shapes = records, collate, fixed_shapes
    size = len(records) * sum(np.asarray(v).nbytes for v in records[0].values())
    self.in_memory = fixed_shapes and size <= IN_MEMORY_BYTES

  def __len__(self) -> int:
    return len(self.records)

  @functools.cached_property
  def arrays(self) -> dict[str, np.ndarray]:
    """Every record, stacked by feature: {feature: (n, ...)}."""
    starts = range(0, len(self), 4096)
    try:
      chunks = [_stack(self.records.__getitems__(list(range(i, min(i + 4096, len(self)))))) for i in starts]
    except Exception as e:  # noqa: BLE001 - whatever the reader makes of a damaged record.
      folder = getattr(getattr(self.records, "dataset_info", None), "data_dir", "its data folder")
      raise DataError(f"the prepared dataset in {folder} is damaged ({str(e).strip().splitlines()[0]}); delete that "
                      f"folder and run again: it is prepared again from its source files") from None
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

  def preload(self) -> None:
    """Reads a split that is kept in memory now (where a damaged file is an error line, not a reading thread's)."""
    if self.in_memory:
      self.arrays

  def batch(self, indices, noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The records at `indices`, collated (augmented from `noise` where given)."""
    indices = np.asarray(indices, np.int64)
    if self.in_memory:
      return self.collate({k: v[indices] for k, v in self.arrays.items()}, noise)
    records = self.records.__getitems__(indices.tolist())
    return self.collate(_stack(records) if self.fixed_shapes else _lists(records), noise)

  def __getstate__(self) -> dict:  # To grain's worker processes (large splits only): without the arrays.
    return {k: v for k, v in self.__dict__.items() if k != "arrays"}


def _stack(records: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def _lists(records: list[dict]) -> dict[str, list]:
  return {k: [r[k] for r in records] for k in records[0]}


DATASETS = {  # This project's builders (offline); any other name is looked up in the TFDS catalog.
    "fashion_mnist": Dataset(fashion_mnist.load, functools.partial(catalog.collate, image="image", label="label",
                                                                   family=preprocess.FAMILIES["scale"]),
                             (28, 28, 1), np.float32, 10,
                             ("train[:55000]", "train[55000:]", "test")),
    "austen": Dataset(austen.load, austen.collate, (austen.WINDOW,), np.int32, len(austen.VOCAB),
                      ("train", "validation", "test"), austen.VOCAB),
}


def of_config(d) -> Dataset:
  """The dataset a config's `dataset` section names (its name, data_dir, preprocess)."""
  return dataset(d.name, d.get("data_dir") or None, d.get("preprocess", ""))


def dataset(name: str, data_dir: str | None = None, preprocessing: str = "") -> Dataset:
  """Dataset `name`: one of DATASETS, or a TFDS catalog dataset prepared in `data_dir`, preprocessed as its family
  (`preprocessing` "": the default for its name)."""
  if name in DATASETS:
    if preprocessing:
      raise DataError(f"config.dataset.preprocess={preprocessing}: {name} has its own preprocessing; leave it empty")
    return DATASETS[name]
  if preprocessing and preprocessing not in preprocess.FAMILIES:
    raise DataError(f"config.dataset.preprocess={preprocessing} is unknown; choose one of "
                    f"{sorted(preprocess.FAMILIES)} (or leave it empty: the default for {name})")
  image, label, stored, num_classes = catalog.features(name, data_dir)
  family = preprocessing or preprocess.family_of(name)
  try:
    shape = preprocess.FAMILIES[family].shape(stored)
  except ValueError as e:
    raise DataError(f"config.dataset.preprocess: {e}") from None
  return Dataset(functools.partial(catalog.load, name=name),
                 functools.partial(catalog.collate, image=image, label=label, family=preprocess.FAMILIES[family]),
                 shape, np.float32, num_classes, catalog.splits(name, data_dir), augments=family != "scale",
                 fixed_shapes=None not in stored)
