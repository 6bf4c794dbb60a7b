"""What a training method adds to the dense loop: four small hooks.

The base class is plain training. `lowrank.maestro.Maestro` (and the N:M
method) override what they need; train.py calls the hooks and nothing else.
"""

from typing import Callable

import jax
import ml_collections
from flax import nnx

# forward(model, soft_targets or None) -> (loss, logits)
Forward = Callable[[nnx.Module, jax.Array | None], tuple[jax.Array, jax.Array]]


class Method:

  def loss(self, model: nnx.Module, key: jax.Array, forward: Forward) -> tuple[jax.Array, jax.Array, dict]:
    """Inside the jitted step: (loss to minimise, logits, extra metrics)."""
    loss, logits = forward(model, None)
    return loss, logits, {}

  def host_update_due(self, step: int) -> bool:
    """Whether `host_update` runs after this step (checked every step: keep it cheap)."""
    return False

  def host_update(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> bool:
    """Between steps, outside jit, when due; True if it changed shapes (one recompilation follows)."""
    return False

  def state(self, model: nnx.Module) -> dict:
    """JSON method state saved with each checkpoint (it decides shapes, so it is restored first)."""
    return {}

  def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None, state: dict) -> None:
    pass

  def metrics(self, model: nnx.Module) -> dict[str, float]:
    return {}


def build(config: ml_collections.ConfigDict) -> Method:
  if config.layers.type == "lowrank":
    from lowrank.maestro import Maestro
    return Maestro(config)
  return Method()
