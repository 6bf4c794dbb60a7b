"""What every method is: its hooks (`Method`, plain training) and its declaration (`Spec`)."""

import dataclasses
from typing import Callable

import jax
import ml_collections
from flax import nnx

from models.layers import dense_conv, dense_linear

# forward(model, soft_targets or None) -> (loss, logits)
Forward = Callable[[nnx.Module, jax.Array | None], tuple[jax.Array, jax.Array]]


class Method:
  """Plain training; the hooks every method has."""

  def loss(self, model: nnx.Module, step: jax.Array, key: jax.Array,
           forward: Forward) -> tuple[jax.Array, jax.Array, dict]:
    """Inside the jitted step: (loss to minimise, logits, extra metrics)."""
    loss, logits = forward(model, None)
    return loss, logits, {}

  observes = False  # True: train.py runs `observe` at log steps.

  def observe(self, model: nnx.Module, step: jax.Array, grads: nnx.State) -> None:
    """Jitted, at log steps only, before the update, with the gradients it will
    use: records on the model what `metrics` reports (so training steps pay nothing)."""

  def host_update_due(self, step: int) -> bool:
    """Whether `host_update` runs after this step (checked every step: keep it cheap)."""
    return False

  def host_update(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> bool:
    """Between steps, outside jit, when due; True if it changed shapes or the
    graph (one recompilation follows)."""
    return False

  def state(self, step: int, model: nnx.Module) -> dict:
    """JSON method state saved with each checkpoint (it may decide shapes, so it is restored first)."""
    return {}

  def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None, state: dict) -> None:
    """Before the arrays are restored; `state` is {} at a fresh start."""

  def metrics(self, step: int, model: nnx.Module) -> dict[str, float]:
    return {}


@dataclasses.dataclass(frozen=True)
class Spec:
  """A method. `linear`/`conv`: its layer builders, given `config.layers`' options (`layer_options`: their names
  and defaults) and what the model passes; `section`/`defaults`: its config section and every key it has;
  `make(config, model)`: its hooks; `smoke(config)`: its changes to a `:smoke` config; `dense_warmup(config)`:
  updates trained dense before `switch(dense, target)` copies the dense model into the method's (its SVD)."""
  name: str
  linear: Callable[..., nnx.Module] = dense_linear
  conv: Callable[..., nnx.Module] = dense_conv
  layer_options: dict = dataclasses.field(default_factory=dict)
  section: str = ""
  defaults: dict = dataclasses.field(default_factory=dict)
  make: Callable[[ml_collections.ConfigDict, nnx.Module], Method] = lambda config, model: Method()
  smoke: Callable[[ml_collections.ConfigDict], None] = lambda config: None
  dense_warmup: Callable[[ml_collections.ConfigDict], int] = lambda config: 0
  switch: Callable[[nnx.Module, nnx.Module], None] | None = None
