"""What a training method adds to the dense loop: a few small hooks.

The base class is plain training. `lowrank.maestro.Maestro` and
`sparsity.training.NMTraining` override what they need; train.py calls the
hooks and nothing else. `step` is 1-based: the update being made (in `loss`,
`observe`) or the number of updates done (in the host-side hooks).
"""

from typing import Callable

import jax
import ml_collections
from flax import nnx

from experiment.config import ConfigError

# forward(model, soft_targets or None) -> (loss, logits)
Forward = Callable[[nnx.Module, jax.Array | None], tuple[jax.Array, jax.Array]]


class Method:

  def loss(self, model: nnx.Module, step: jax.Array, key: jax.Array, forward: Forward) -> tuple[jax.Array, jax.Array, dict]:
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


def build(config: ml_collections.ConfigDict, model: nnx.Module) -> Method:
  kind = config.layers.type
  if kind in ("lowrank", "nm") and kind not in config:  # The method's settings live in config.<layer type>.
    raise ConfigError(f"config.layers.type={kind!r} needs a config.{kind} section, which this config has not; "
                      f"start from one that has (configs/*_{'maestro' if kind == 'lowrank' else 'nm'}.py)")
  if config.layers.type == "lowrank":
    from lowrank.maestro import Maestro
    return Maestro(config)
  if config.layers.type == "nm":
    from sparsity.training import NMTraining
    return NMTraining(config, model)
  return Method()
