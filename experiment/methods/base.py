"""What every method is: its hooks (the `Hooks` protocol; `Method`, plain training, implements it with defaults)
and its declaration (`Spec`)."""

import dataclasses
import pathlib
from typing import Callable, Protocol, runtime_checkable

import jax
import ml_collections
from flax import nnx

from models.layers import dense_conv, dense_linear

# forward(model, soft_targets or None) -> (loss, logits)
Forward = Callable[[nnx.Module, jax.Array | None], tuple[jax.Array, jax.Array]]


@runtime_checkable
class Hooks(Protocol):
  """The contract between a method and the trainer: what train.py and the jitted steps call (each documented on
  `Method`, which implements them for plain training). The libraries' classes (lowrank.Maestro, sparsity.NMTraining,
  lowrank.Cuttlefish) satisfy it structurally: they import nothing of this package."""

  observes: bool
  updates_after: bool

  def loss(self, model: nnx.Module, step: jax.Array, key: jax.Array,
           forward: Forward) -> tuple[jax.Array, jax.Array, dict]: ...
  def observe(self, model: nnx.Module, step: jax.Array, grads: nnx.State) -> None: ...
  def after_update(self, model: nnx.Module, step: jax.Array, learning_rate: jax.Array) -> None: ...
  def host_update_due(self, step: int) -> bool: ...
  def host_update(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> bool: ...
  def state(self, step: int, model: nnx.Module) -> dict: ...
  def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None, state: dict) -> None: ...
  def metrics(self, step: int, model: nnx.Module) -> dict[str, float]: ...


@runtime_checkable
class InnerHooks(Hooks, Protocol):
  """A method that runs inside another's forward passes (the N:M rule inside Maestro's, `Composed`): its rule for
  one pass, and its penalty once per step."""

  def forward_pass(self, model: nnx.Module, step: jax.Array, key: jax.Array,
                   forward: Callable[[nnx.Module], tuple[jax.Array, jax.Array]]) -> tuple[jax.Array, jax.Array]: ...
  def penalty(self, model: nnx.Module, step: jax.Array) -> jax.Array: ...


class Method:
  """Plain training; the hooks every method has (`Hooks`), with their defaults."""

  def loss(self, model: nnx.Module, step: jax.Array, key: jax.Array,
           forward: Forward) -> tuple[jax.Array, jax.Array, dict]:
    """Inside the jitted step: (loss to minimise, logits, extra metrics)."""
    loss, logits = forward(model, None)
    return loss, logits, {}

  def forward_pass(self, model: nnx.Module, step: jax.Array, key: jax.Array,
                   forward: Callable[[nnx.Module], tuple[jax.Array, jax.Array]]) -> tuple[jax.Array, jax.Array]:
    """One forward pass `forward(model) -> (loss, logits)` under the method's rule (the inner part of a
    composition runs each of the outer part's passes through this)."""
    return forward(model)

  def penalty(self, model: nnx.Module, step: jax.Array) -> jax.Array:
    """The term the method adds to the loss once per step (the inner part of a composition: once, whatever the
    number of forward passes the outer part makes)."""
    return 0.0

  updates_after = False  # True: the train step calls `after_update` after the optimizer's update.

  def after_update(self, model: nnx.Module, step: jax.Array, learning_rate: jax.Array) -> None:
    """Inside the jitted step, after the optimizer's update, which used `learning_rate`: changes to the updated
    parameters that no optimizer should rescale (decoupled SR-STE)."""

  observes = False  # True: train.py runs `observe` at log steps.

  def observe(self, model: nnx.Module, step: jax.Array, grads: nnx.State) -> None:
    """Jitted, at log steps only, before the update, with the gradients it will
    use: records on the model what `metrics` reports (so training steps pay nothing)."""

  def host_update_due(self, step: int) -> bool:
    """Whether `host_update` runs after this step (checked every step: keep it cheap)."""
    return False

  def host_update(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> bool:
    """Between steps, outside jit, when due; True if it changed shapes or the graph (one recompilation follows),
    or if its `state` now asks for another model (`Spec.layers`: the trainer then builds that one)."""
    return False

  def state(self, step: int, model: nnx.Module) -> dict:
    """JSON method state saved with each checkpoint (it may decide shapes and the model, so it is read first)."""
    return {}

  def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None, state: dict) -> None:
    """Before the arrays are restored; `state` is {} at a fresh start."""

  def metrics(self, step: int, model: nnx.Module) -> dict[str, float]:
    return {}


def same_layers(config: ml_collections.ConfigDict, state: dict) -> ml_collections.ConfigDict:
  return config.layers


@dataclasses.dataclass(frozen=True)
class Spec:
  """A method. `linear`/`conv`: its layer builders, given `config.layers`' options (`layer_options`: their names
  and defaults) and what the model passes; `sections`: its config sections, each {field: default} (every field
  it has);
  `make(config, model)`: its hooks for that model; `smoke(config)`: its changes to a `:smoke` config;
  `objective(config)`: the terms it adds to the cross-entropy (a config or a config.json's dict), for plots;
  `plots`: the plots of a run of it beside the training curves, each `(workdir, config) -> path or None`;
  at method state `state`, `decay_exempt(config, state)`: the parameter names (kernel, down, up, ...) the
  optimizer's weight decay skips, and `rewarm(config, state)`: (start, steps) where the learning rate restarts
  (the first update after `start` at 1/steps of the schedule's value) and re-warms linearly to it over `steps`
  updates, or None.

  A method that moves from one model to another during training (Maestro after a dense warm-up, Cuttlefish at
  its switch to low rank) says which in its state: `layers(config, state)` is the `config.layers` its model is
  built from at method state `state` ({}: a fresh start), and `switch(old, new)` fills a new model from the one
  before (the SVD of its kernels); the trainer then gives it fresh hooks and fresh optimizer moments."""
  name: str
  linear: Callable[..., nnx.Module] = dense_linear
  conv: Callable[..., nnx.Module] = dense_conv
  layer_options: dict = dataclasses.field(default_factory=dict)
  sections: dict[str, dict] = dataclasses.field(default_factory=dict)
  make: Callable[[ml_collections.ConfigDict, nnx.Module], Hooks] = lambda config, model: Method()
  smoke: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  objective: Callable[[ml_collections.ConfigDict | dict], list[str]] = lambda config: []
  plots: tuple[Callable[[pathlib.Path, ml_collections.ConfigDict], pathlib.Path | None], ...] = ()
  layers: Callable[[ml_collections.ConfigDict, dict], ml_collections.ConfigDict | dict] = same_layers
  switch: Callable[[nnx.Module, nnx.Module], None] | None = None
  decay_exempt: Callable[[ml_collections.ConfigDict, dict], tuple[str, ...]] = lambda config, state: ()
  rewarm: Callable[[ml_collections.ConfigDict, dict], tuple[int, int] | None] = lambda config, state: None


class Composed(Method):
  """Several methods' hooks on one model, by section ({"lowrank": Maestro, "nm": NMTraining}): the first part's
  loss runs each of its forward passes through the later parts' `forward_pass` (so every pass Maestro makes runs
  under the N:M rule, with its soft targets), and the later parts' penalties are added once per step (their own
  `loss` is not called: an inner part's rule must be in those two hooks); host updates run in order, states and
  metrics side by side."""

  def __init__(self, parts: dict[str, Hooks]):
    if bad := [name for name, part in list(parts.items())[1:] if not isinstance(part, InnerHooks)]:
      raise TypeError(f"the hooks of {bad} cannot run inside another method's passes: no forward_pass or penalty")
    self.parts = parts
    self.observes = any(part.observes for part in parts.values())
    self.updates_after = any(part.updates_after for part in parts.values())

  def loss(self, model, step, key, forward):
    outer, *inner = self.parts.values()
    keys = jax.random.split(key, len(self.parts))  # The innermost part's first, the outer part's last.

    def wrapped(part, inner_forward, key):
      return lambda model, soft_targets: part.forward_pass(model, step, key, lambda m: inner_forward(m, soft_targets))

    for part, part_key in zip(reversed(inner), keys):
      forward = wrapped(part, forward, part_key)
    loss, logits, extra = outer.loss(model, step, keys[-1], forward)
    return loss + sum(part.penalty(model, step) for part in inner), logits, extra

  def after_update(self, model, step, learning_rate) -> None:
    for part in self.parts.values():
      if part.updates_after:
        part.after_update(model, step, learning_rate)

  def observe(self, model, step, grads) -> None:
    for part in self.parts.values():
      if part.observes:
        part.observe(model, step, grads)

  def host_update_due(self, step: int) -> bool:
    return any(part.host_update_due(step) for part in self.parts.values())

  def host_update(self, step, model, optimizer) -> bool:
    changed = False
    for part in self.parts.values():
      if part.host_update_due(step):
        changed |= part.host_update(step, model, optimizer)
    return changed

  def state(self, step, model) -> dict:
    return {name: part.state(step, model) for name, part in self.parts.items()}

  def restore(self, model, optimizer, state: dict) -> None:
    for name, part in self.parts.items():
      part.restore(model, optimizer, state.get(name, {}))

  def metrics(self, step, model) -> dict[str, float]:
    return {k: v for part in self.parts.values() for k, v in part.metrics(step, model).items()}
