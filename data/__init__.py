"""Datasets (TFDS builders) and the grain input pipeline."""

from data.fashion_mnist import load
from data.idx import DataError
from data.pipeline import eval_batches, train_iterator

DATASETS = {"fashion_mnist": load}
