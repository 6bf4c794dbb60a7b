"""Step-indexed checkpoints (Orbax): the train state, the input iterator's
position, the method's state (JSON) and the per-step metrics logged since the
last log step with the loop's running counters (training FLOPs; JSON), so a
resumed run logs the same values, and a copy of the run's config (JSON), from
which a damaged config.json is restored (`saved_config`).

Saving is asynchronous: `save` returns once the arrays are copied off the
devices, and Orbax writes the files while training goes on. A kill can land
anywhere, so a checkpoint counts only once it is known whole: after Orbax has
finished writing step s, a thread writes the size and BLAKE2b checksum of each
of its files to `<workdir>/checkpoint_manifests/<s>.json`, and checkpoints
beyond `keep` are deleted only at the next save (or at `close`), once that
manifest exists. A resume takes the newest checkpoint whose files all match
their manifest, and moves newer ones (truncated, changed, partly deleted, or
killed before their manifest was written) to `<workdir>/damaged_checkpoints/`.
"""

import errno
import hashlib
import json
import os
import pathlib
import shutil
import sys
import threading
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from experiment import files
from experiment.config import ConfigError
from experiment.workdir import CONFIG_SCHEMA, machine_failure


class CheckpointError(RuntimeError):
  """A checkpoint could not be written (a full disk, a read-only or vanished folder); says where and what to do."""


def _quiet_closed_event_loops(unraisable) -> None:
  """When a write fails, Orbax cancels the rest of it on asyncio event loops that are already closed, and Python
  reports each as an unraisable RuntimeError; the failure itself is reported once (CheckpointError)."""
  if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
    sys.__unraisablehook__(unraisable)


class Checkpoints:
  """`keep`: how many whole checkpoints training keeps; None: only to read (eval.py; it never saves). `config`: the
  run's config, kept with each checkpoint (training)."""

  def __init__(self, workdir: pathlib.Path, keep: int | None = None, config: dict | None = None):
    self.keep, self.workdir, self.config = keep, workdir, config
    self.manifests = workdir / "checkpoint_manifests"
    self.manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), item_names=("state", "data", "method", "window", "config"),
        options=ocp.CheckpointManagerOptions(create=keep is not None,
                                             cleanup_tmp_directories=keep is not None,  # Of a save a kill cut short.
                                             enable_async_checkpointing=keep is not None,
                                             # Reading beside train.py: no step's metadata read here, as a step
                                             # deleted meanwhile would fail it (eval.py lists steps by manifest).
                                             lightweight_initialize=keep is None))
    self._writing: tuple[int, threading.Thread] | None = None  # The save in progress and its manifest writer.
    self._failure: CheckpointError | None = None  # Of the save in progress, found by its manifest writer.
    self._inode = os.stat(workdir).st_ino if keep is not None else None  # The run's folder, to notice its loss.
    if keep is not None:
      sys.unraisablehook = _quiet_closed_event_loops

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, method_state: dict, window: list[dict],
           counters: dict[str, float], *, primary: bool = True) -> None:
    """Finishes the previous save (`close`), then starts writing step `step` and returns once its arrays are off
    the devices; a thread writes its manifest once Orbax has written it. `counters`: the loop's running totals
    (training FLOPs so far). `primary`: the process that writes manifests."""
    self.close()
    if self._folder_lost():  # Orbax would write on into a new folder unnoticed.
      raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.manager.directory))
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
          method=ocp.args.JsonSave(method_state),
          window=ocp.args.JsonSave({"steps": list(window), "counters": dict(counters)}),  # Written later, when the
          config=ocp.args.JsonSave(self.config)))  # loop has appended to `window`: a copy of it as it is now.
    except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise several kinds for a failed write.
      raise self._failed(step, e) from None
    self._writing = (step, threading.Thread(target=self._write_manifest, args=(step, primary), daemon=True))
    self._writing[1].start()

  def _write_manifest(self, step: int, primary: bool) -> None:
    try:
      self.manager.wait_until_finished()
      if primary:
        self.manifests.mkdir(exist_ok=True)
        files.write_atomic(self.manifests / f"{step}.json",
                           json.dumps(_file_digests(self._folder(step)), indent=0, sort_keys=True))
    except Exception as e:  # noqa: BLE001 - raised by `close`, in the loop's thread.
      self._failure = self._failed(step, e)

  def _folder_lost(self) -> bool:
    """The run's folder removed or moved away since this run began (a save in flight may have made a new one)."""
    return not self.manager.directory.exists() or os.stat(self.workdir).st_ino != self._inode

  def _failed(self, step: int, error: Exception) -> CheckpointError:
    if self._inode is not None and self._folder_lost():  # The cause, not Orbax's error about a vanished path.
      error = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.manager.directory))
    return CheckpointError(machine_failure(f"writing checkpoint {step} to {self.manager.directory}", error,
                                           "run the same command: training resumes from the newest whole checkpoint"))

  def close(self) -> None:
    """Waits for the save in progress and its manifest, then deletes the checkpoints beyond `keep` (in that order,
    so a kill at any point leaves the newest whole checkpoint in place)."""
    if self._writing is None:
      return
    step, writer = self._writing
    writer.join()
    self._writing = None
    if self._failure:
      failure, self._failure = self._failure, None
      raise failure
    if jax.process_count() > 1:  # Every process deletes (Orbax waits for all), after the manifest is written.
      multihost_utils.sync_global_devices(f"manifest {step}")
    for old in sorted(self.manager.all_steps())[:-self.keep]:
      self.manager.delete(old)
      (self.manifests / f"{old}.json").unlink(missing_ok=True)

  def resume_step(self, *, set_aside: bool = True) -> tuple[int | None, list[str]]:
    """The newest whole checkpoint's step (None: none), and a warning for each newer damaged one, which
    `set_aside` moves to `<workdir>/damaged_checkpoints/<step>` (nothing is deleted)."""
    warnings = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      damage = self._damage(step)
      if damage is None:
        return step, warnings
      message = f"checkpoint step {step} in {self.manager.directory} is damaged ({damage})"
      if set_aside:
        aside = self.workdir / "damaged_checkpoints" / str(step)
        aside.parent.mkdir(exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        self._folder(step).rename(aside)
        if (self.manifests / f"{step}.json").exists():
          (self.manifests / f"{step}.json").rename(aside.with_name(f"{step}.manifest.json"))
        self.manager.reload()
        message += f"; moved it to {aside}"
      warnings.append(message)
    return None, warnings

  def is_whole(self, step: int) -> bool:
    """Whether checkpoint `step` has its manifest and matches it, now; False also when the run that keeps `keep`
    of them deletes it while this looks (a reader beside train.py: eval.py)."""
    try:
      return self._damage(step) is None
    except FileNotFoundError:
      return False

  def _damage(self, step: int) -> str | None:
    """What is wrong with checkpoint `step`, or None if every file has its manifest's size and checksum (a manifest
    of an older version of the code has sizes only)."""
    manifest = self.manifests / f"{step}.json"
    if not manifest.is_file():
      return "no manifest: the run was stopped while writing it"
    try:
      expected = files.read_json(manifest, {}, "")
    except files.DamagedFile as e:
      return f"its manifest {manifest} is {e.problem}"
    if not expected or not all(map(_manifest_entry, expected.values())):
      return f"its manifest {manifest} is damaged (not sizes and checksums)"
    folder = self._folder(step)
    found = {str(p.relative_to(folder)): p for p in folder.rglob("*") if p.is_file()}
    for name, recorded in sorted(expected.items()):
      size, digest = recorded if isinstance(recorded, list) else (recorded, None)
      if name not in found:
        return f"{name} is missing"
      if found[name].stat().st_size != size:
        return f"{name} has {found[name].stat().st_size} of its {size} bytes"
      if digest is not None and _digest(found[name]) != digest:
        return f"{name} has changed since it was written (its checksum differs)"
    return None

  def _folder(self, step: int) -> pathlib.Path:
    return pathlib.Path(self.manager.directory) / str(step)

  def config_copy(self, step: int) -> dict | None:
    """The run's config kept with checkpoint `step` (None in a checkpoint older than that copy)."""
    if not (self._folder(step) / "config").is_dir():
      return None
    return self._restore(step, config=ocp.args.JsonRestore()).config

  def restore_method(self, step: int) -> dict:
    """The method's JSON state (e.g. kept ranks), which fixes the shapes to restore onto."""
    return self._restore(step, method=ocp.args.JsonRestore()).method

  def restore(self, step: int, like: Any) -> tuple[Any, dict, list[dict], dict[str, float]]:
    """The state (onto the shapes, dtypes and shardings of `like`), the data iterator's state, the metrics window
    and the loop's counters ({} in a checkpoint older than them)."""
    restored = self._restore(step, state=ocp.args.StandardRestore(_abstract(like)), data=ocp.args.JsonRestore(),
                             window=ocp.args.JsonRestore())
    return restored.state, restored.data, restored.window["steps"], restored.window.get("counters", {})

  def restore_state(self, step: int, like: Any) -> Any:
    return self._restore(step, state=ocp.args.StandardRestore(_abstract(like))).state

  def _restore(self, step: int, **items) -> Any:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:  # Orbax lists every mismatching array; the first line says what is wrong.
      raise ConfigError(f"{self._folder(step)} does not match the model its run's config builds (a "
                        f"checkpoint of another version of the code?): {str(e).strip().splitlines()[0]}") from e


def saved_config(workdir: pathlib.Path) -> tuple[dict | None, bool]:
  """The config the run in `workdir` runs with, and whether it was read from a copy: its config.json or, where that
  is missing or damaged, the copy kept with its newest whole checkpoint (one warning line says so). (None, False):
  no run there. Raises DamagedFile where config.json is damaged and no whole checkpoint keeps a copy."""
  path = workdir / "config.json"
  fix = "restore it, or continue the run with the config you pass: train.py --allow_config_change (it rewrites it)"
  try:
    return files.read_json(path, CONFIG_SCHEMA, fix), False
  except files.DamagedFile as e:
    damaged = e
  checkpoints = Checkpoints(workdir) if (workdir / "checkpoints").is_dir() else None
  step = checkpoints and checkpoints.resume_step(set_aside=False)[0]
  copy = checkpoints.config_copy(step) if step else None
  if copy is not None and not files.mismatch(copy, CONFIG_SCHEMA):
    files.warn(path, f"{path} is {damaged.problem}; read the copy of the config kept with checkpoint {step} instead")
    return copy, True
  if not path.exists():
    return None, False
  raise damaged


def load_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """`saved_config`, for a reader (eval.py, reports); ConfigError where `workdir` holds no run."""
  config, _ = saved_config(workdir)
  if config is None:
    raise ConfigError(f"{workdir / 'config.json'} does not exist; is {workdir} the folder of a train.py run?")
  return ml_collections.ConfigDict(config)


def _manifest_entry(recorded) -> bool:
  """A manifest's record of one file: [size, checksum] (or, written by older code, the size)."""
  return isinstance(recorded, int) or (isinstance(recorded, list) and len(recorded) == 2
                                       and isinstance(recorded[0], int) and isinstance(recorded[1], str))


def _digest(path: pathlib.Path) -> str:
  with path.open("rb") as f:
    return hashlib.file_digest(f, "blake2b").hexdigest()


def _file_digests(folder: pathlib.Path) -> dict[str, list]:
  """Each file's [size, BLAKE2b checksum], by its path in `folder`."""
  return {str(p.relative_to(folder)): [p.stat().st_size, _digest(p)] for p in sorted(folder.rglob("*")) if p.is_file()}


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
