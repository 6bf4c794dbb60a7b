"""Reading the IDX files of (Fashion-)MNIST, and finding them on disk.

Where the files are looked for, in order: a directory given in the config, the
Debian package's install path, and the project-local folder that
`scripts/setup.sh` unpacks the Debian package into when it is not root.
"""

import gzip
import os
import pathlib

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
PROJECT_ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCAL_DEBIAN_DIR = PROJECT_ROOT / ".data" / "debian" / "usr/share/datasets/fashion-mnist"

_MAGIC = {3: 2051, 1: 2049}  # ndim -> IDX magic number (uint8 data)


class DataError(ValueError):
  """Data that is missing or damaged; the message says which file and what to do."""


def read_idx(path: os.PathLike, ndim: int) -> np.ndarray:
  """Reads a gzipped IDX file of uint8 with `ndim` dimensions."""
  path = pathlib.Path(path)
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"{path}: not a readable gzip file ({e}); delete it and re-run scripts/setup.sh") from e
  magic = int.from_bytes(raw[:4], "big")
  if magic != _MAGIC[ndim]:
    raise DataError(f"{path}: wrong IDX magic number {magic} (expected {_MAGIC[ndim]}); the file is not a {ndim}-d uint8 IDX file")
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise DataError(f"{path}: truncated IDX file ({body.size} bytes of data, header says {shape}); delete it and re-run scripts/setup.sh")
  return body.reshape(shape)


def write_idx(path: os.PathLike, array: np.ndarray) -> None:
  """Writes a uint8 array as a gzipped IDX file (used by tests to make data)."""
  array = np.asarray(array, dtype=np.uint8)
  header = _MAGIC[array.ndim].to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def find_idx_dir(configured: str | None = None) -> pathlib.Path | None:
  """The first candidate directory that holds all four files, or None."""
  candidates = [pathlib.Path(configured)] if configured else [DEBIAN_DIR, LOCAL_DEBIAN_DIR]
  for d in candidates:
    if all((d / name).is_file() for name in FILES.values()):
      return d
  return None
