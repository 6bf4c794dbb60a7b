"""Jane Austen's six novels as a character-level TFDS dataset.

The text comes from the Debian package `r-cran-janeaustenr` (R's lazy-load
database `data/Rdata.rdb` + `Rdata.rdx`, read with the `rdata` package, no R
needed): the novels in publication order, lines joined by newlines, about 4.0 M
characters. Split 90/5/5 into train/validation/test by position (contiguous
text), each split cut into non-overlapping windows of `WINDOW` + 1 characters
(a window's last character is the target of its last input). Characters are ids
into the fixed `VOCAB` (newline, printable ASCII, £: every character of the
novels), stored as uint8.
"""

import pathlib
import warnings
import zlib

import numpy as np
import tensorflow_datasets as tfds

from data import prepare
from data.idx import PROJECT_ROOT, DataError

VOCAB = "\n" + "".join(map(chr, range(32, 127))) + "£"
WINDOW = 128  # Inputs per example (the model's context); records hold WINDOW + 1 characters.
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
SPLITS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}
DEBIAN_DIR = pathlib.Path("/usr/lib/R/site-library/janeaustenr/data")
LOCAL_DEBIAN_DIR = PROJECT_ROOT / ".data" / "debian" / "usr/lib/R/site-library/janeaustenr/data"
DEFAULT_DATA_DIR = PROJECT_ROOT / ".data" / "tfds"
MISSING_HELP = ("run `bash scripts/setup.sh` (unpacks the Debian package r-cran-janeaustenr into .data/debian), or set "
                "--config.dataset.rdata_dir to a folder holding its Rdata.rdb and Rdata.rdx")


def read_novels(folder: pathlib.Path) -> dict[str, str]:
  """Each novel's text from the package's Rdata.rdx (name -> offset, length) and Rdata.rdb (a 4-byte header,
  then the zlib-compressed serialized character vector of its lines)."""
  import rdata  # Only needed to prepare the dataset.

  with warnings.catch_warnings():  # "Unknown file type: assumed RDS": they are, gzipped or zlib-compressed.
    warnings.simplefilter("ignore", UserWarning)
    try:
      index = rdata.conversion.convert(rdata.parser.parse_file(folder / "Rdata.rdx"))
      rdb = (folder / "Rdata.rdb").read_bytes()
    except (OSError, ValueError, EOFError) as e:
      raise DataError(f"{folder}: cannot read Rdata.rdx / Rdata.rdb ({e}); {MISSING_HELP}") from e
    novels = {}
    for name in NOVELS:
      if name not in index["variables"]:
        raise DataError(f"{folder}/Rdata.rdx has no novel {name!r} (it has {sorted(index['variables'])}); {MISSING_HELP}")
      offset, length = (int(v) for v in index["variables"][name])
      try:
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(rdb[offset + 4:offset + length])))
      except (zlib.error, ValueError) as e:
        raise DataError(f"{folder}/Rdata.rdb: the record of {name!r} is damaged ({e}); {MISSING_HELP}") from e
      novels[name] = "\n".join(str(line) for line in lines)
  return novels


def encode(text: str, vocab: str = VOCAB) -> np.ndarray:
  """Character ids (uint8) of `text`; a character outside `vocab` is an error naming it."""
  ids = np.frombuffer(text.encode("utf-32-le"), np.uint32)
  table = np.full(max(map(ord, vocab)) + 1, 255, np.uint8)
  table[[ord(c) for c in vocab]] = np.arange(len(vocab))
  unknown = sorted({chr(i) for i in ids[(ids >= len(table)) | (table[np.minimum(ids, len(table) - 1)] == 255)]})
  if unknown:
    raise DataError(f"the text has characters outside the vocabulary: {unknown[:10]}")
  return table[ids]


def decode(ids, vocab: str = VOCAB) -> str:
  return "".join(vocab[int(i)] for i in ids)


class Austen(tfds.core.GeneratorBasedBuilder):
  """Jane Austen's novels, character level: windows of WINDOW + 1 character ids."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, rdata_dir: str | None = None, **kwargs):
    self._rdata_dir = rdata_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"text": tfds.features.Tensor(shape=(WINDOW + 1,), dtype=np.uint8)}),
        disable_shuffling=True,  # Record i is the i-th window of its split.
        homepage="https://cran.r-project.org/package=janeaustenr")

  def _split_generators(self, dl_manager):
    candidates = [pathlib.Path(self._rdata_dir)] if self._rdata_dir else [DEBIAN_DIR, LOCAL_DEBIAN_DIR]
    folder = next((d for d in candidates if (d / "Rdata.rdx").is_file()), None)
    if folder is None:
      raise DataError(f"Jane Austen's novels not found in {' or '.join(map(str, candidates))}; {MISSING_HELP}")
    ids = encode("\n".join(read_novels(folder)[name] for name in NOVELS))
    return {split: self._generate_examples(ids[int(a * len(ids)):int(b * len(ids))]) for split, (a, b) in SPLITS.items()}

  def _generate_examples(self, ids: np.ndarray):
    for i in range((len(ids) - 1) // WINDOW):
      yield i, {"text": ids[i * WINDOW:(i + 1) * WINDOW + 1]}


def collate(features: dict[str, np.ndarray], noise: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Each window's first WINDOW characters as inputs, and the next character of each as its target.
  No augmentation (`noise` unused)."""
  text = features["text"].astype(np.int32)  # (b, WINDOW + 1)
  return {"inputs": text[:, :-1], "targets": text[:, 1:]}


def load(split: str, data_dir: str | None = None, rdata_dir: str | None = None):
  """Prepares the dataset once (seconds) and returns a random-access source."""
  make = lambda: Austen(data_dir=data_dir or DEFAULT_DATA_DIR, rdata_dir=rdata_dir, file_format="array_record")
  return prepare.prepared(make, split)
