"""The run folder: one train.py at a time (a lock), the config it was started
with (and the refusal to continue it with another), and writes a kill cannot
leave half done."""

import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys

import ml_collections

from experiment.config import ConfigError
from experiment.files import read_rows, write_atomic

LOCK_FILE = "train.lock"
# What a config.json must hold to be read at all (the rest is checked where used, as for a config file).
CONFIG_SCHEMA = {"num_steps": int, "seed": int, "batch_size": int, "dataset": {"name": str}, "model": {"name": str},
                 "layers": {"type": str}}
# What a failed write or read of the machine says, and what the user can do about it.
FIXES = {"No space left on device": "free space on that disk", "Disk quota exceeded": "free space within your quota",
         "File too large": "raise the file-size limit (ulimit -f)",
         "Read-only file system": "make the folder writable or pass another folder",
         "Permission denied": "make the folder writable or pass another folder",
         "No such file or directory": "restore the folder (it was removed or never existed) or pass another one"}


def machine_failure(what: str, error: BaseException, then: str) -> str:
  """One line for a failure of the machine (a full disk, a removed folder): `what` failed, the reason, its fix,
  and `then` (what running again does)."""
  text = str(error)
  reason = next((r for r in FIXES if r in text), text.strip().splitlines()[0][:300] if text.strip() else repr(error))
  return f"{what} failed: {reason}; {FIXES.get(reason, 'fix the cause')}, then {then}"


def _lock(workdir: pathlib.Path) -> None:
  """Takes the workdir's lock for the life of this process (its descriptor is never closed; the OS drops the lock
  when the process ends, however it ends); raises ConfigError if another process holds it."""
  fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
    os.close(fd)
    raise ConfigError(f"--workdir {workdir} is in use by another train.py ({holder}); wait for it to finish, "
                      f"stop it, or pass another --workdir") from None
  os.ftruncate(fd, 0)
  os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.datetime.now():%Y-%m-%d %H:%M:%S}".encode())


def claim(workdir: pathlib.Path, config: ml_collections.ConfigDict, saved: dict | None, *, allow_change: bool,
          lock: bool) -> list[str]:
  """Creates and (`lock`) locks the workdir for this process. Raises ConfigError, before writing anything, if
  the workdir holds a run of another config (`saved`, None: no run) and not `allow_change`. Returns the changes
  (`config_changes`)."""
  changes = config_changes(config, saved)
  if changes and not allow_change:
    raise ConfigError(f"--workdir {workdir} holds a run of another config ({'; '.join(changes)}); pass another "
                      f"--workdir, or --allow_config_change to continue that run with this config")
  workdir.mkdir(parents=True, exist_ok=True)
  if lock:
    _lock(workdir)
  return changes


def save_config(config: ml_collections.ConfigDict, workdir: pathlib.Path, *, replaced: str | None = None) -> None:
  """Writes config.json; `replaced`: first keep the current one under this name (a run continued with a change)."""
  if replaced and (workdir / "config.json").exists():
    os.replace(workdir / "config.json", workdir / replaced)
    print(f"warning: {workdir} continues with a changed config; the one it started with is now {replaced}",
          file=sys.stderr)
  write_atomic(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def record_launch(workdir: pathlib.Path, step: int, command: list[str], code: str, machine: str) -> None:
  """Appends this start (or resume) of the run to launches.jsonl: when, from which step, the command, the code
  version and the machine, so every run says where each of its steps was computed."""
  launch = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "step": step,
            "command": " ".join(command), "code": code, "machine": machine}
  path = workdir / "launches.jsonl"
  cut = path.is_file() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"  # A line a kill cut short.
  with path.open("a") as f:
    f.write("\n" * cut + json.dumps(launch) + "\n")


def launches(workdir: pathlib.Path) -> list[dict]:
  """The run's launches.jsonl records (none for runs made before it existed; a damaged one's readable records)."""
  return read_rows(workdir / "launches.jsonl", lambda r: isinstance(r.get("machine"), str))


def config_changes(config: ml_collections.ConfigDict, saved: dict | None) -> list[str]:
  """`field: saved -> requested` for each field where `config` differs from the run's saved config."""
  if saved is None:
    return []
  saved = _flat(saved)
  requested = _flat(json.loads(config.to_json_best_effort()))
  return [f"{k}: {saved.get(k, '(absent)')!r} -> {requested.get(k, '(absent)')!r}"
          for k in sorted(saved.keys() | requested.keys()) if saved.get(k, "(absent)") != requested.get(k, "(absent)")]


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out |= _flat(value, f"{prefix}{key}.")
    else:
      out[prefix + key] = value
  return out
