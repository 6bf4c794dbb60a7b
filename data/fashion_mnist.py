"""Fashion-MNIST as a TFDS dataset built from the original IDX files.

No TensorFlow needed: features are plain `Tensor`/`ClassLabel`, stored as
`array_record`, and read back with random access (`as_data_source`).
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from data import idx, prepare

DEFAULT_DATA_DIR = idx.PROJECT_ROOT / ".data" / "tfds"
MISSING_HELP = ("run `bash scripts/setup.sh` (installs the Debian package dataset-fashion-mnist), "
                "or set --config.dataset.idx_dir to a folder holding the four IDX .gz files")


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (60k train / 10k test, 28x28x1 uint8, 10 classes)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "Records kept in the IDX files' order."}

  def __init__(self, *, idx_dir: str | None = None, **kwargs):
    self._idx_dir = idx_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Record i is IDX example i.
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    files = self._locate_files(dl_manager)
    return {
        "train": self._generate_examples(files["train_images"], files["train_labels"]),
        "test": self._generate_examples(files["test_images"], files["test_labels"]),
    }

  def _locate_files(self, dl_manager) -> dict[str, pathlib.Path]:
    found = idx.find_idx_dir(self._idx_dir)
    if found is not None:
      return {k: found / name for k, name in idx.FILES.items()}
    if self._idx_dir:  # An explicit folder is never silently replaced by a download.
      raise idx.DataError(f"config.dataset.idx_dir={self._idx_dir} lacks {sorted(idx.FILES.values())}; {MISSING_HELP}")
    try:
      return dl_manager.download({k: idx.UPSTREAM_URL + name for k, name in idx.FILES.items()})
    except Exception as e:  # Offline: every kind of network failure ends here.
      raise idx.DataError(f"Fashion-MNIST not found in {idx.DEBIAN_DIR} or {idx.LOCAL_DEBIAN_DIR} "
                          f"and the download failed ({type(e).__name__}); {MISSING_HELP}") from e

  def _generate_examples(self, images_path, labels_path):
    images = idx.read_idx(images_path, ndim=3)
    labels = idx.read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
      raise idx.DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


def load(split: str, data_dir: str | None = None, idx_dir: str | None = None):
  """Prepares the dataset once (a few seconds) and returns a random-access source."""
  make = lambda: FashionMnistIdx(data_dir=data_dir or DEFAULT_DATA_DIR, idx_dir=idx_dir, file_format="array_record")
  return prepare.prepared(make, split)
