"""The small files a run, a sweep or an export keeps and reads back (config.json, metrics.jsonl, launches.jsonl,
sweep.json, export.json, the checkpoint manifests, wandb_id): written whole or not at all (`write_atomic`), and
read through `read_json` and `read_rows`, which turn damage (a power cut's truncation or NUL bytes, random bytes,
a careless edit, a deleted file) into a decision: rows that cannot be read are dropped with one warning line; a
file that cannot be done without is a `DamagedFile` naming it, what is wrong and the fix. Never a traceback."""

import json
import os
import pathlib
import sys
from typing import Any, Callable

from experiment.config import ConfigError

# What a JSON object read back must hold: {key: type}, where a type may itself be such a dict (an object holding
# those keys) or a one-item list [schema] (a list of such items).
Schema = dict[str, Any]
_warned: set[pathlib.Path] = set()  # The files `warn` has warned about.


class DamagedFile(ConfigError):
  """A file read back is missing or damaged: `<path> is <problem>; <fix>`."""

  def __init__(self, path: pathlib.Path, problem: str, fix: str):
    super().__init__(f"{path} is {problem}; {fix}")
    self.path, self.problem = path, problem


def write_atomic(path: pathlib.Path, text: str) -> None:
  """`path` holds either its old content or `text`, whenever the process dies; the last of several processes
  writing it at once wins (each writes a file of its own first)."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with tmp.open("w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: pathlib.Path, schema: Schema, fix: str) -> dict:
  """The JSON object in `path`, holding what `schema` names; else DamagedFile: `<path> is missing|damaged (what is
  wrong); <fix>`."""
  if not path.is_file():
    raise DamagedFile(path, "missing", fix)
  try:
    value = json.loads(path.read_bytes().decode())
    problem = mismatch(value, schema)
  except UnicodeDecodeError:
    problem = "not text"
  except json.JSONDecodeError as e:
    problem = f"not JSON: {e.msg} at byte {e.pos}"
  if problem:
    raise DamagedFile(path, f"damaged ({problem})", fix)
  return value


def read_rows(path: pathlib.Path, is_row: Callable[[Any], bool], *, complete_only: bool = False) -> list[dict]:
  """The rows of a JSON-lines file (none if it does not exist) for which `is_row` holds. Lines that are not such rows
  are dropped, with one warning line naming the file and their count. `complete_only`: also drop, silently, a last
  line that does not end in a newline (a row a kill cut short)."""
  if not path.is_file():
    return []
  lines = path.read_bytes().decode(errors="replace").split("\n")
  if complete_only:
    lines = lines[:-1]  # After the last newline: empty, or a row being written when the process died.
  rows, dropped = [], 0
  for line in filter(str.strip, lines):
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None
    if isinstance(row, dict) and is_row(row):
      rows.append(row)
    else:
      dropped += 1
  if dropped:
    warn(path, f"{path} is damaged: dropped {dropped} unreadable line(s), kept {len(rows)}")
  return rows


def warn(path: pathlib.Path, message: str) -> None:
  """Prints `warning: <message>` the first time this process warns about `path`."""
  if path not in _warned:
    _warned.add(path)
    print(f"warning: {message}", file=sys.stderr)


def mismatch(value: Any, schema: Any, where: str = "") -> str | None:
  """What in `value` does not have the shape `schema` describes (None: nothing)."""
  if isinstance(schema, dict):
    if not isinstance(value, dict):
      return f"{where or 'the file'} is a JSON {type(value).__name__}, not an object"
    for key, inner in schema.items():
      if key not in value:
        return f"no {where}{key}"
      if problem := mismatch(value[key], inner, f"{where}{key}."):
        return problem
    return None
  if isinstance(schema, list):
    if not isinstance(value, list):
      return f"{where.rstrip('.')} is not a list"
    return next(filter(None, (mismatch(v, schema[0], f"{where.rstrip('.')}[{i}].") for i, v in enumerate(value))),
                None)
  if not isinstance(value, schema) or (schema in (int, float) and isinstance(value, bool)):
    return f"{where.rstrip('.')} is not a{'n' * (schema is int)} {schema.__name__}"
  return None
