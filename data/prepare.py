"""Preparing a TFDS dataset once, also when several processes start together
(a sweep's workers on a fresh machine): the first prepares it under a lock
file, the others wait and then read what it wrote, instead of racing to
rename the same folder."""

import fcntl
import pathlib
from typing import Callable

import tensorflow_datasets as tfds


def prepared(make_builder: Callable[[], tfds.core.DatasetBuilder], split: str):
  """`split` of the dataset `make_builder()` builds, as a random-access source; prepares the dataset first if no
  process has."""
  builder = make_builder()
  if not builder.is_prepared():
    lock = pathlib.Path(builder.data_dir).parent.parent / f"{builder.name}.lock"  # <data_dir>/<name>/<version>
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      builder = make_builder()  # Another process may have prepared it while this one waited.
      if not builder.is_prepared():
        builder.download_and_prepare()
        builder = make_builder()
  return builder.as_data_source(split=split)
