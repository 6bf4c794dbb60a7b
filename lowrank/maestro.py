"""Maestro training: ordered-dropout rank sampling, the group-lasso penalty
and progressive shrinking, acting on a model's LoD layers (ALGORITHMS.md A2-A5)."""

import fractions
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from experiment.config import ConfigError
from experiment.method import Method
from lowrank.group_lasso import group_lasso, hierarchical_group_lasso, rank_importance
from lowrank.layers import LowRankConv, LowRankLinear

SAMPLERS = ("single_layer", "independent", "fixed_ratio", "none")


def lod_layers(model: nnx.Module) -> list[LowRankLinear | LowRankConv]:
  """The model's LoD layers in a fixed (graph) order."""
  return [m for _, m in nnx.iter_graph(model) if isinstance(m, (LowRankLinear, LowRankConv))]


def ranks(model: nnx.Module) -> dict[str, int]:
  """Each LoD layer's current (kept) rank, by layer name."""
  return {layer.name: layer.rank for layer in lod_layers(model)}


def set_active_ranks(model: nnx.Module, active: jax.Array | dict[str, int] | None) -> None:
  """Runs layer i at `active[i]` (array, in `lod_layers` order) or `active[name]`; None: full rank."""
  for i, layer in enumerate(lod_layers(model)):
    k = layer.rank if active is None else active[layer.name] if isinstance(active, dict) else active[i]
    layer.active_rank[...] = jnp.asarray(k, jnp.int32)


def ceil_ratio(ratio: float, rank: int) -> int:
  """ceil(ratio · rank) in exact rational arithmetic, at least 1: 7/25 of 25 is 7
  (the float product 7.000000000000001 would give 8)."""
  return max(1, math.ceil(fractions.Fraction(ratio).limit_denominator(1_000_000) * rank))


def sample_ranks(key: jax.Array, current: list[int], sampler: str, ratio: float = 0.25) -> jax.Array:
  """Ordered-dropout ranks, one per layer, as a traced int32 vector (no recompilation).

  single_layer: one layer, picked with probability ∝ its rank r_i, runs at
    k ~ U{1..r_i}; every (layer, k) pair has probability 1/Σr, the marginals of
    the reference's shuffled walk over all pairs, drawn i.i.d. from the key.
  independent: every layer draws its own k_i ~ U{1..r_i}.
  fixed_ratio: every layer at ceil(ratio · r_i) (Pufferfish-style baseline).
  none: full rank.
  """
  full = jnp.asarray(current, jnp.int32)  # (layers,)
  if sampler == "none" or not current:
    return full
  if sampler == "fixed_ratio":
    return jnp.asarray([ceil_ratio(ratio, r) for r in current], jnp.int32)
  layer_key, rank_key = jax.random.split(key)
  draws = jax.random.randint(rank_key, full.shape, 1, full + 1)
  if sampler == "independent":
    return draws
  chosen = jax.random.categorical(layer_key, jnp.log(full.astype(jnp.float32)))
  return jnp.where(jnp.arange(len(current)) == chosen, draws, full)


def penalty(model: nnx.Module, hierarchical: bool = True) -> jax.Array:
  """Σ over LoD layers of the (hierarchical) group lasso, unnormalised."""
  fn = hierarchical_group_lasso if hierarchical else group_lasso
  return sum((fn(layer.down[...], layer.up[...]) for layer in lod_layers(model)), jnp.zeros(()))


def kept_ranks(model: nnx.Module, eps: float) -> dict[str, int]:
  """The prefix of components with importance ≥ eps, per layer (at least 1)."""
  return {layer.name: max(1, int(jnp.sum(rank_importance(layer.down[...], layer.up[...]) >= eps)))
          for layer in lod_layers(model)}


def slice_to(model: nnx.Module, new_ranks: dict[str, int], optimizer: nnx.Optimizer | None = None) -> None:
  """Really shrinks: slices each layer's factors, and the optimizer state that
  mirrors them, to its first `new_ranks[name]` components."""
  paths = {}
  for path, layer in nnx.iter_graph(model):
    if isinstance(layer, (LowRankLinear, LowRankConv)) and new_ranks.get(layer.name, layer.rank) < layer.rank:
      k = new_ranks[layer.name]
      layer.down = nnx.Param(layer.down[...][..., :k])
      layer.up = nnx.Param(layer.up[...][:k])
      layer.active_rank[...] = jnp.asarray(k, jnp.int32)
      paths[tuple(path)] = k
  if optimizer is None or not paths:
    return
  flat = []
  for path, var in nnx.to_flat_state(nnx.state(optimizer)):
    k = next((k for p, k in paths.items() if path[-len(p) - 1:-1] == p), None)
    if k is not None and path[-1] == "down":
      var = var.replace(var[...][..., :k])
    elif k is not None and path[-1] == "up":
      var = var.replace(var[...][:k])
    flat.append((path, var))
  nnx.update(optimizer, nnx.from_flat_state(flat))


class Maestro(Method):
  """config.lowrank: sampler, fixed_ratio, group_lasso (λ), hierarchical,
  distill, shrink_every (0: never), shrink_eps."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.c = config.lowrank
    checks = {
        "sampler": (self.c.sampler in SAMPLERS, f"is unknown; choose one of {list(SAMPLERS)}"),
        "fixed_ratio": (0 < self.c.fixed_ratio <= 1, "must be in (0, 1]"),
        "group_lasso": (0 <= self.c.group_lasso < math.inf, "must be >= 0 and finite"),
        "shrink_every": (self.c.shrink_every >= 0, "must be >= 0 (0: never shrink)"),
        "shrink_eps": (0 <= self.c.shrink_eps < math.inf, "must be >= 0 and finite"),
        "dense_warmup_steps": (self.c.dense_warmup_steps >= 0, "must be >= 0"),
    }
    for field, (ok, requirement) in checks.items():
      if not ok:
        raise ConfigError(f"config.lowrank.{field}={self.c[field]!r} {requirement}")

  def loss(self, model, step, key, forward):
    current = list(ranks(model).values())
    sampled = sample_ranks(key, current, self.c.sampler, self.c.fixed_ratio)
    extra = {}
    if self.c.distill:  # CE(f_full, y) + CE(f_sampled, stop_grad(softmax(f_full)))
      set_active_ranks(model, None)
      full_loss, full_logits = forward(model, None)
      set_active_ranks(model, sampled)
      sampled_loss, logits = forward(model, jax.nn.softmax(jax.lax.stop_gradient(full_logits)))
      loss = full_loss + sampled_loss
    else:
      set_active_ranks(model, sampled)
      loss, logits = forward(model, None)
    reg = penalty(model, self.c.hierarchical)
    set_active_ranks(model, None)
    extra["lowrank/group_lasso"] = reg
    return loss + self.c.group_lasso * reg, logits, extra

  def host_update_due(self, step: int) -> bool:
    return bool(self.c.shrink_every) and step % self.c.shrink_every == 0

  def host_update(self, step: int, model, optimizer) -> bool:
    before, after = ranks(model), kept_ranks(model, self.c.shrink_eps)
    if after == before:
      return False
    slice_to(model, after, optimizer)
    return True

  def state(self, step, model) -> dict:
    return {"ranks": ranks(model)}

  def restore(self, model, optimizer, state: dict) -> None:
    slice_to(model, state.get("ranks", {}), optimizer)

  def metrics(self, step, model) -> dict[str, float]:
    return {f"rank/{name}": r for name, r in ranks(model).items()}
