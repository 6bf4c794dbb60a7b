"""Datasets (TFDS builders), what train.py needs to know of each, and the grain input pipeline."""

import dataclasses
from typing import Callable

import numpy as np

from data import austen, fashion_mnist
from data.idx import DataError
from data.pipeline import eval_batches, train_iterator


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset as train.py sees it: `load(split, **config.dataset fields)` prepares it on first use and returns a
  random-access split; `collate(records)` makes a batch `{"inputs", "targets"}`; one example's inputs have
  `input_shape` and `input_dtype`; the model predicts `num_classes` logits per target; `vocab`: for text, the
  characters the ids stand for (evaluation then reports bits per character)."""
  load: Callable
  collate: Callable[[list[dict]], dict[str, np.ndarray]]
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


class Split:
  """A random-access split that reads whole batches, collated."""

  def __init__(self, records, collate: Callable[[list[dict]], dict[str, np.ndarray]]):
    self.records, self.collate = records, collate

  def __len__(self) -> int:
    return len(self.records)

  def batch(self, indices) -> dict[str, np.ndarray]:
    return self.collate(self.records.__getitems__([int(i) for i in indices]))


DATASETS = {
    "fashion_mnist": Dataset(fashion_mnist.load, fashion_mnist.collate, (28, 28, 1), np.float32, 10),
    "austen": Dataset(austen.load, austen.collate, (austen.WINDOW,), np.int32, len(austen.VOCAB), austen.VOCAB),
}
