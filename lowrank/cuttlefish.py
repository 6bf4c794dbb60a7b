"""Cuttlefish (Wang et al., MLSys 2023; docs/maestro.md): train full rank while tracking each layer's stable
rank, switch to low rank once every tracked rank has stopped changing, at ranks the stable ranks choose.

As in the reference (hwang595/Cuttlefish, utils.rank_estimation and layer_rank_stable_detector):
- stable rank: int(‖W‖²_F / ‖W‖²_2) of the kernel as a (fan_in, out) matrix, measured at initialization and
  every `track_every` updates (the reference: every epoch);
- a layer is stable once `window` measurements after the first are in, when the mean of the last `recent`
  absolute gradients (np.gradient) of the EMA (α = 2/(window + 1)) of its measurements is <= `tolerance`
  (x `relax` when two layers are left unstable, x 2·`relax` when one is; the reference relaxes by 2.5 for
  ResNet-18 and VGG-19, 1 otherwise);
  a stable layer stays stable;
- once all are stable, the next measurement chooses the ranks: ceil(stable rank · full rank / its stable rank
  at initialization), at most the full rank min(fan_in, out); the factors are the truncated SVD, U·√S and √S·Vᵀ
  (`deploy.copy_svd`), with fresh optimizer moments;
- after the switch, Frobenius decay: λ/2·‖down·up‖²_F per factorized layer (the reference adds its gradient),
  and no ordinary weight decay on the factors while it is on; the reference also builds a fresh optimizer and
  re-warms its learning rate (experiment/methods/cuttlefish.py does both through the trainer).

Layers built by `linear`/`conv` are tracked: `FullRankLinear`/`FullRankConv` (dense, named) until a rank is
given for them, `LowRankLinear`/`LowRankConv` after. In any loop: call `host_update` when `host_update_due`;
when it returns True, build the model again with `ranks=cuttlefish.ranks`, `deploy.copy_svd(old, new)`, and
continue with `Cuttlefish(new)` (its Frobenius decay) and a fresh optimizer.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowrank.layers import LowRankConv, LowRankLinear
from lowrank.maestro import lod_layers, ranks


class FullRankLinear(nnx.Linear):
  """A dense layer Cuttlefish tracks, by name."""

  def __init__(self, *args, name: str, **kwargs):
    super().__init__(*args, **kwargs)
    self.name = name


class FullRankConv(nnx.Conv):
  """A dense conv Cuttlefish tracks, by name."""

  def __init__(self, *args, name: str, **kwargs):
    super().__init__(*args, **kwargs)
    self.name = name


def linear(in_features, out_features, *, rngs, name="", ranks=None, use_bias=True, dtype=jnp.float32):
  """Dense and tracked; an LoD layer at `ranks[name]` once that rank is chosen."""
  if ranks and name in ranks:
    return LowRankLinear(in_features, out_features, rank=int(ranks[name]), rngs=rngs, use_bias=use_bias, name=name,
                         dtype=dtype)
  return FullRankLinear(in_features, out_features, use_bias=use_bias, dtype=dtype, rngs=rngs, name=name)


def conv(in_features, out_features, kernel_size, *, rngs, name="", ranks=None, strides=1, padding="SAME",
         use_bias=True, dtype=jnp.float32):
  """Dense and tracked; an LoD conv at `ranks[name]` once that rank is chosen."""
  if ranks and name in ranks:
    return LowRankConv(in_features, out_features, kernel_size, rank=int(ranks[name]), rngs=rngs, strides=strides,
                       padding=padding, use_bias=use_bias, name=name, dtype=dtype)
  return FullRankConv(in_features, out_features, (kernel_size, kernel_size), strides=strides, padding=padding,
                      use_bias=use_bias, dtype=dtype, rngs=rngs, name=name)


def tracked_layers(model: nnx.Module) -> list[FullRankLinear | FullRankConv]:
  return [m for _, m in nnx.iter_graph(model) if isinstance(m, (FullRankLinear, FullRankConv))]


def _matrix(layer) -> np.ndarray:
  kernel = np.asarray(layer.kernel[...], np.float64)
  return kernel.reshape(-1, kernel.shape[-1])  # (fan_in, out)


def stable_rank(layer: FullRankLinear | FullRankConv) -> int:
  """int(‖W‖²_F / ‖W‖²_2) of the layer's kernel as a (fan_in, out) matrix."""
  s = np.linalg.svd(_matrix(layer), compute_uv=False)
  return int(np.sum(s ** 2) / s[0] ** 2)


def full_rank(layer) -> int:
  return min(math.prod(layer.kernel.shape[:-1]), layer.kernel.shape[-1])


def settled(history: list[int], window: int, recent: int, tolerance: float) -> bool:
  """The reference's test: `window` + 1 measurements in, and the mean of the last `recent` |gradients| of their
  EMA (α = 2/(window + 1)) at most `tolerance`."""
  if len(history) <= window:
    return False
  alpha, ema = 2 / (window + 1), [float(history[0])]
  for value in history[1:]:
    ema.append(alpha * value + (1 - alpha) * ema[-1])
  return float(np.mean(np.abs(np.gradient(ema))[-recent:])) <= tolerance


class Cuttlefish:
  """Cuttlefish's hooks for `model` (the module docstring says what it does). Before the switch: every
  `track_every` updates, `host_update` measures the tracked layers' stable ranks and returns True when it has
  chosen `ranks`; after it (a model with LoD layers and none tracked), Frobenius decay `frobenius_decay`.
  A bad value is a ValueError naming the argument."""

  observes = updates_after = False

  def __init__(self, model: nnx.Module, *, track_every: int, window: int = 15, recent: int = 11,
               tolerance: float = 0.1, relax: float = 1.0, frobenius_decay: float = 1e-4):
    checks = {
        "track_every": (track_every, isinstance(track_every, int) and track_every >= 1, "must be an integer >= 1"),
        "window": (window, isinstance(window, int) and window >= 1, "must be an integer >= 1"),
        "recent": (recent, isinstance(recent, int) and recent >= 1, "must be an integer >= 1"),
        "tolerance": (tolerance, 0 <= tolerance < math.inf, "must be >= 0 and finite"),
        "relax": (relax, 0 < relax < math.inf, "must be > 0 and finite"),
        "frobenius_decay": (frobenius_decay, 0 <= frobenius_decay < math.inf, "must be >= 0 and finite"),
    }
    for field, (value, ok, requirement) in checks.items():
      if not ok:
        raise ValueError(f"{field}={value!r} {requirement}")
    self.track_every, self.window, self.recent, self.tolerance = track_every, window, recent, tolerance
    self.relax, self.frobenius_decay = relax, frobenius_decay
    layers = tracked_layers(model)
    self.full = {layer.name: full_rank(layer) for layer in layers}
    self.initial = {layer.name: stable_rank(layer) for layer in layers}
    self.history = {name: [r] for name, r in self.initial.items()}  # The reference's epoch 0: the same weights.
    self.stable = {name: False for name in self.full}
    self.switch_next = False  # All stable: the next measurement chooses the ranks.
    self.ranks: dict[str, int] | None = None
    self.switched_at: int | None = None  # The update after which the ranks were chosen.

  def loss(self, model, step, key, forward):
    loss, logits = forward(model, None)
    if not lod_layers(model):
      return loss, logits, {}
    decay = sum(frobenius_squared(layer) for layer in lod_layers(model)) / 2
    return loss + self.frobenius_decay * decay, logits, {"lowrank/frobenius": decay}

  def observe(self, model, step, grads) -> None:
    pass

  def after_update(self, model, step, learning_rate) -> None:
    pass

  def host_update_due(self, step: int) -> bool:
    return bool(self.full) and self.ranks is None and step % self.track_every == 0

  def host_update(self, step: int, model: nnx.Module, optimizer=None) -> bool:
    """Measures the stable ranks; True when they have chosen `ranks` (the model must be rebuilt at them)."""
    measured = {layer.name: stable_rank(layer) for layer in tracked_layers(model)}
    for name, r in measured.items():
      self.history[name].append(r)
    if self.switch_next:
      self.ranks = {name: self.rank_of(name, r) for name, r in measured.items()}
      self.switched_at = step
      return True
    unstable = sum(not s for s in self.stable.values())
    tolerance = self.tolerance * {2: self.relax, 1: 2 * self.relax}.get(unstable, 1.0)
    for name, history in self.history.items():
      self.stable[name] = self.stable[name] or settled(history, self.window, self.recent, tolerance)
    self.switch_next = all(self.stable.values())
    return False

  def rank_of(self, name: str, stable: int) -> int:
    """The reference's scaled stable rank: ceil(stable · full / initial), the full rank where int() exceeds it."""
    scaled = stable * self.full[name] / self.initial[name]
    return self.full[name] if int(scaled) > self.full[name] else math.ceil(scaled)

  def state(self, step: int, model: nnx.Module) -> dict:
    """Before the switch, the measurements; from it on, the chosen ranks (which decide the model) and the update
    after which they were chosen (where the reference restarts its learning rate)."""
    if self.ranks is not None or not self.full:
      chosen = {"ranks": self.ranks if self.ranks is not None else ranks(model)}
      return chosen | ({"switched_at": self.switched_at} if self.switched_at is not None else {})
    return {"initial": self.initial, "history": self.history, "stable": self.stable, "switch_next": self.switch_next}

  def restore(self, model: nnx.Module, optimizer, state: dict) -> None:
    """A checkpoint's state, or (after the switch) the state that chose this model's ranks."""
    self.switched_at = state.get("switched_at", self.switched_at)
    if "history" in state:
      self.initial, self.history = dict(state["initial"]), {k: list(v) for k, v in state["history"].items()}
      self.stable, self.switch_next = dict(state["stable"]), state["switch_next"]

  def metrics(self, step: int, model: nnx.Module) -> dict[str, float]:
    """rank/<layer>: its rank now (full before the switch); cuttlefish/rank/<layer>: the rank the latest stable
    rank would choose."""
    current = {**{name: self.full[name] for name in self.history}, **ranks(model)}
    chosen = {f"cuttlefish/rank/{name}": self.rank_of(name, h[-1]) for name, h in self.history.items()
              if self.ranks is None}
    return {**{f"rank/{name}": r for name, r in current.items()}, **chosen}


def frobenius_squared(layer: LowRankLinear | LowRankConv) -> jax.Array:
  """‖down·up‖²_F = Σ (downᵀdown) ⊙ (up·upᵀ), in r×r products (never the dense kernel)."""
  down = layer.down[...].reshape(-1, layer.rank)
  up = layer.up[...]
  return jnp.sum((down.T @ down) * (up @ up.T))
