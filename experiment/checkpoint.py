"""Step-indexed checkpoints (Orbax): the train state, the input iterator's
position, the method's state (JSON) and the per-step metrics logged since the
last log step (JSON), so a resumed run logs the same window means."""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from experiment.config import ConfigError


class Checkpoints:

  def __init__(self, workdir: pathlib.Path, keep: int):
    self.manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), item_names=("state", "data", "method", "window"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, method_state: dict, window: list[dict]) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                                                    method=ocp.args.JsonSave(method_state),
                                                    window=ocp.args.JsonSave({"steps": window})))

  def restore_method(self, step: int) -> dict:
    """The method's JSON state (e.g. kept ranks), which fixes the shapes to restore onto."""
    return self.manager.restore(step, args=ocp.args.Composite(method=ocp.args.JsonRestore())).method

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
    except ValueError as e:  # Orbax lists every mismatching array; the first line says what is wrong.
      raise ConfigError(f"{self.manager.directory}/{step} does not match the model its run's config builds (a "
                        f"checkpoint of another version of the code?): {str(e).strip().splitlines()[0]}") from e


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
