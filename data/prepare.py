"""Preparing a TFDS dataset once, also when several processes start together
(a sweep's workers on a fresh machine): the first prepares it under a lock
file, the others wait and then read what it wrote, instead of racing to
rename the same folder. A prepared dataset is checked before it is used:
a shard that is missing, truncated or unreadable (each must hold the records
its dataset_info.json lists) makes it be prepared again from its source files,
the damaged version set aside beside it."""

import fcntl
import pathlib
import sys
import time
from typing import Callable

import tensorflow_datasets as tfds
from array_record.python import array_record_module

from data.idx import DataError


def prepared(make_builder: Callable[[], tfds.core.DatasetBuilder], split: str):
  """`split` of the dataset `make_builder()` builds, as a random-access source; prepares the dataset first if no
  process has, or again if its files are damaged."""
  builder = make_builder()
  if not builder.is_prepared() or damage(builder):
    lock = pathlib.Path(builder.data_dir).parent.parent / f"{builder.name}.lock"  # <data_dir>/<name>/<version>
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      builder = make_builder()  # Another process may have prepared it while this one waited.
      if builder.is_prepared() and (problem := damage(builder)):
        folder = pathlib.Path(builder.data_dir)  # <data_dir>/<name>/<version>
        aside = folder.parent.parent / "damaged" / f"{builder.name}-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.parent.mkdir(exist_ok=True)
        folder.rename(aside)
        print(f"warning: the prepared dataset in {folder} is damaged ({problem}); moved it to {aside} and "
              f"preparing it again from its source files", file=sys.stderr)
        builder = make_builder()
      if not builder.is_prepared():
        builder.download_and_prepare()
        builder = make_builder()
        if problem := damage(builder):
          raise DataError(f"the dataset prepared in {builder.data_dir} is damaged ({problem}); check the disk "
                          f"(space, errors) and run again")
  return builder.as_data_source(split=split)


def damage(builder: tfds.core.DatasetBuilder) -> str | None:
  """What is wrong with a prepared dataset's shard files (missing, or not holding the records its dataset_info
  lists), or None. Reads each file's index only, not its records."""
  for name, split in builder.info.splits.items():
    for path, expected in zip(split.filepaths, split.shard_lengths):
      path = pathlib.Path(path)
      if not path.is_file():
        return f"{path.name} of its {name} split is missing"
      try:
        reader = array_record_module.ArrayRecordReader(str(path))
        found = reader.num_records()
        reader.close()
      except Exception as e:  # noqa: BLE001 - whatever the reader makes of a damaged file.
        return f"{path.name} cannot be read: {e}"
      if found != expected:
        return f"{path.name} holds {found} of its {expected} records"
  return None
