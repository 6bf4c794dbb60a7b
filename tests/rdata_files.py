"""Writes the two files of an R lazy-load database (`Rdata.rdx`, `Rdata.rdb`)
holding character vectors, in R's XDR serialization format (version 2): the
layout of the Debian package r-cran-janeaustenr, so tests can make their own."""

import gzip
import pathlib
import struct
import zlib

_NIL, _SYM, _LIST, _CHAR, _LGL, _INT, _STR, _VEC = 254, 1, 2, 9, 10, 13, 16, 19
_HAS_ATTR, _HAS_TAG, _UTF8 = 1 << 9, 1 << 10, 8 << 12


def _int(*values: int) -> bytes:
  return struct.pack(f">{len(values)}i", *values)


def _char(s: str) -> bytes:
  raw = s.encode("utf-8")
  return _int(_CHAR | _UTF8, len(raw)) + raw


def _strings(values: list[str]) -> bytes:
  return _int(_STR, len(values)) + b"".join(map(_char, values))


def _named_list(items: dict[str, bytes]) -> bytes:
  """A list of already serialized values, with a `names` attribute."""
  body = _int(_VEC | _HAS_ATTR, len(items)) + b"".join(items.values())
  return body + _int(_LIST | _HAS_TAG) + _int(_SYM) + _char("names") + _strings(list(items)) + _int(_NIL)


def _stream(obj: bytes) -> bytes:
  return b"X\n" + _int(2, 0x040201, 0x020300) + obj


def write(folder: pathlib.Path, vectors: dict[str, list[str]]) -> pathlib.Path:
  """`folder/Rdata.rdx` and `folder/Rdata.rdb` with each named character vector."""
  folder.mkdir(parents=True, exist_ok=True)
  rdb, index = b"", {}
  for name, lines in vectors.items():
    data = _stream(_strings(lines))
    record = struct.pack(">I", len(data)) + zlib.compress(data)
    index[name] = _int(_INT, 2, len(rdb), len(record))
    rdb += record
  (folder / "Rdata.rdb").write_bytes(rdb)
  rdx = _named_list({"variables": _named_list(index), "references": _named_list({}), "compressed": _int(_LGL, 1, 1)})
  (folder / "Rdata.rdx").write_bytes(gzip.compress(_stream(rdx)))
  return folder
