"""Step-indexed checkpoints (Orbax): the train state, the input iterator's
position, the method's state (JSON) and the per-step metrics logged since the
last log step (JSON), so a resumed run logs the same window means.

A kill can land anywhere, so a checkpoint counts only once it is known whole:
after Orbax has finished writing step s, the size of each of its files goes to
`<workdir>/checkpoint_manifests/<s>.json`, and only then are old checkpoints
deleted. A resume takes the newest checkpoint whose files all match their
manifest, and moves newer ones (truncated, partly deleted, or killed before
their manifest was written) to `<workdir>/damaged_checkpoints/`.
"""

import json
import pathlib
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from experiment.config import ConfigError
from experiment.workdir import write_atomic


class Checkpoints:
  """`keep`: how many whole checkpoints training keeps; None: only to read (eval.py; it never saves)."""

  def __init__(self, workdir: pathlib.Path, keep: int | None = None):
    self.keep, self.workdir = keep, workdir
    self.manifests = workdir / "checkpoint_manifests"
    self.manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), item_names=("state", "data", "method", "window"),
        options=ocp.CheckpointManagerOptions(create=keep is not None,
                                             cleanup_tmp_directories=keep is not None,  # Of a save a kill cut short.
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, method_state: dict, window: list[dict],
           *, primary: bool = True) -> None:
    """Writes step `step`, then its manifest, then deletes the checkpoints beyond `keep` (in that order, so a kill
    at any point leaves the newest whole checkpoint in place). `primary`: the process that writes manifests."""
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                                    method=ocp.args.JsonSave(method_state),
                                                    window=ocp.args.JsonSave({"steps": window})))
    if primary:
      self.manifests.mkdir(exist_ok=True)
      write_atomic(self.manifests / f"{step}.json", json.dumps(_file_sizes(self._folder(step)), indent=0, sort_keys=True))
    if jax.process_count() > 1:  # Every process deletes (Orbax waits for all), after the manifest is written.
      multihost_utils.sync_global_devices(f"manifest {step}")
    for old in sorted(self.manager.all_steps())[:-self.keep]:
      self.manager.delete(old)
      if primary:
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
        (self.manifests / f"{step}.json").unlink(missing_ok=True)
        self.manager.reload()
        message += f"; moved it to {aside}"
      warnings.append(message)
    return None, warnings

  def _damage(self, step: int) -> str | None:
    """What is wrong with checkpoint `step`, or None if every file has its manifest's size."""
    manifest = self.manifests / f"{step}.json"
    if not manifest.is_file():
      return "no manifest: the run was stopped while writing it"
    try:
      expected = json.loads(manifest.read_text())
    except json.JSONDecodeError:
      return f"{manifest} is unreadable"
    found = _file_sizes(self._folder(step))
    for name, size in sorted(expected.items()):
      if name not in found:
        return f"{name} is missing"
      if found[name] != size:
        return f"{name} has {found[name]} of its {size} bytes"
    return None

  def _folder(self, step: int) -> pathlib.Path:
    return pathlib.Path(self.manager.directory) / str(step)

  def restore_method(self, step: int) -> dict:
    """The method's JSON state (e.g. kept ranks), which fixes the shapes to restore onto."""
    return self._restore(step, method=ocp.args.JsonRestore()).method

  def restore(self, step: int, like: Any) -> tuple[Any, dict, list[dict]]:
    """The state (onto the shapes, dtypes and shardings of `like`), the data iterator's state and the metrics window."""
    restored = self._restore(step, state=ocp.args.StandardRestore(_abstract(like)), data=ocp.args.JsonRestore(),
                             window=ocp.args.JsonRestore())
    return restored.state, restored.data, restored.window["steps"]

  def restore_state(self, step: int, like: Any) -> Any:
    return self._restore(step, state=ocp.args.StandardRestore(_abstract(like))).state

  def _restore(self, step: int, **items) -> Any:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:  # Orbax lists every mismatching array; the first line says what is wrong.
      raise ConfigError(f"{self._folder(step)} does not match the model its run's config builds (a "
                        f"checkpoint of another version of the code?): {str(e).strip().splitlines()[0]}") from e


def _file_sizes(folder: pathlib.Path) -> dict[str, int]:
  return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
