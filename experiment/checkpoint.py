"""Step-indexed checkpoints (Orbax): the train state and the input iterator's position."""

import pathlib
from typing import Any

import orbax.checkpoint as ocp


class Checkpoints:

  def __init__(self, workdir: pathlib.Path, keep: int):
    self.manager = ocp.CheckpointManager(
        (workdir / "checkpoints").absolute(), item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, like: Any) -> tuple[Any, dict]:
    """Restores onto the shapes, dtypes and shardings of `like`."""
    abstract = ocp.utils.to_shape_dtype_struct(like)
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                  data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def restore_state(self, step: int, like: Any) -> Any:
    abstract = ocp.utils.to_shape_dtype_struct(like)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
