"""Datasets (TFDS builders), what train.py needs to know of each, and the grain input pipeline."""

import dataclasses
import functools
from typing import Callable

import numpy as np

from data import austen, fashion_mnist
from data.idx import DataError
from data.pipeline import eval_batches, train_iterator


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset as train.py sees it: `load(split, **config.dataset fields)` prepares it on first use and returns a
  random-access split; `collate(features)` makes a batch `{"inputs", "targets"}` of records stacked by feature;
  one example's inputs have `input_shape` and `input_dtype`; the model predicts `num_classes` logits per target;
  `vocab`: for text, the characters the ids stand for (evaluation then reports bits per character)."""
  load: Callable
  collate: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
  input_shape: tuple[int, ...]
  input_dtype: type
  num_classes: int
  vocab: str | None = None

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

  def __init__(self, records, collate: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
    self.records, self.collate = records, collate
    self.in_memory = len(records) * sum(np.asarray(v).nbytes for v in records[0].values()) <= IN_MEMORY_BYTES

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

  def batch(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    if self.in_memory:
      return self.collate({k: v[indices] for k, v in self.arrays.items()})
    return self.collate(_stack(self.records.__getitems__(indices.tolist())))

  def __getstate__(self) -> dict:  # To grain's worker processes (large splits only): without the arrays.
    return {k: v for k, v in self.__dict__.items() if k != "arrays"}


def _stack(records: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


DATASETS = {
    "fashion_mnist": Dataset(fashion_mnist.load, fashion_mnist.collate, (28, 28, 1), np.float32, 10),
    "austen": Dataset(austen.load, austen.collate, (austen.WINDOW,), np.int32, len(austen.VOCAB), austen.VOCAB),
}
