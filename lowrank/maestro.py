"""Maestro training: ordered-dropout rank sampling, the group-lasso penalty
and progressive shrinking, acting on a model's LoD layers (docs/maestro.md).

`Maestro` is usable from any NNX training loop: its `loss` wraps the loop's
forward pass inside the jitted step, `host_update` shrinks between steps (see
examples/custom_loop.py); train.py builds it from `config.lowrank`.
"""

import fractions
import math

import jax
import jax.numpy as jnp
from flax import nnx

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
  """The prefix of components with importance ≥ eps, per layer: at least 1, rounded up to a multiple of the
  layer's `rank_multiple` (at most its rank)."""
  kept = {}
  for layer in lod_layers(model):
    k, multiple = int(jnp.sum(rank_importance(layer.down[...], layer.up[...]) >= eps)), layer.rank_multiple
    kept[layer.name] = min(layer.rank, max(multiple, -(-k // multiple) * multiple))
  return kept


def slice_to(model: nnx.Module, new_ranks: dict[str, int], optimizer: nnx.Optimizer | None = None) -> None:
  """Really shrinks: slices each layer's factors (`truncate`), and the optimizer state that mirrors them, to its
  first `new_ranks[name]` components."""
  cut = []
  for path, layer in nnx.iter_graph(model):
    if isinstance(layer, (LowRankLinear, LowRankConv)) and new_ranks.get(layer.name, layer.rank) < layer.rank:
      layer.truncate(new_ranks[layer.name])
      cut.append(tuple(path))
  if optimizer is None or not cut:
    return
  shapes = {p: v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if any(p[:len(c)] == c for c in cut)}
  flat = []
  for path, var in nnx.to_flat_state(nnx.state(optimizer)):  # A parameter's moments (and EMA) end in its path.
    shape = next((shape for p, shape in shapes.items() if path[-len(p):] == p), None)
    flat.append((path, var.replace(var[...][tuple(map(slice, shape))]) if shape else var))
  nnx.update(optimizer, nnx.from_flat_state(flat))


class Maestro:
  """Maestro's training hooks. `sampler` (SAMPLERS) draws the ordered-dropout ranks, `fixed_ratio` the
  fixed_ratio sampler's ρ; `group_lasso`: λ of the (`hierarchical`) group lasso; `distill`: CE(full) +
  CE(sampled, softmax(full)) instead of CE(sampled); every `shrink_every` updates (0: never) each layer keeps its
  components of importance >= `shrink_eps`. λ's schedule: 0 until update `group_lasso_ramp[0]`, rising linearly to
  λ at update `group_lasso_ramp[1]` (equal: constant). `finetune_from` > 0: after that update (and a last shrink at
  it) a penalty-free fine-tune of the kept ranks: λ = 0, no sampling, no shrink. A bad value is a ValueError naming
  the argument."""

  observes = False  # Nothing to record from the gradients (train.py's hook for methods that do).
  updates_after = False  # Nothing to change after the optimizer's update (decoupled SR-STE's hook).

  def __init__(self, *, sampler: str = "single_layer", fixed_ratio: float = 0.25, group_lasso: float = 0.0,
               hierarchical: bool = True, distill: bool = False, shrink_every: int = 0, shrink_eps: float = 0.0,
               group_lasso_ramp: tuple[int, int] = (0, 0), finetune_from: int = 0):
    checks = {
        "sampler": (sampler, sampler in SAMPLERS, f"is unknown; choose one of {list(SAMPLERS)}"),
        "fixed_ratio": (fixed_ratio, 0 < fixed_ratio <= 1, "must be in (0, 1]"),
        "group_lasso": (group_lasso, 0 <= group_lasso < math.inf, "must be >= 0 and finite"),
        "shrink_every": (shrink_every, isinstance(shrink_every, int) and shrink_every >= 0,
                         "must be an integer >= 0 (0: never shrink)"),
        "shrink_eps": (shrink_eps, 0 <= shrink_eps < math.inf, "must be >= 0 and finite"),
        "group_lasso_ramp": (group_lasso_ramp, 0 <= group_lasso_ramp[0] <= group_lasso_ramp[1],
                             "must be (start, end) updates with 0 <= start <= end"),
        "finetune_from": (finetune_from, isinstance(finetune_from, int) and finetune_from >= 0,
                          "must be an integer >= 0 (0: no fine-tune)"),
    }
    for field, (value, ok, requirement) in checks.items():
      if not ok:
        raise ValueError(f"{field}={value!r} {requirement}")
    self.sampler, self.fixed_ratio, self.group_lasso, self.hierarchical = sampler, fixed_ratio, group_lasso, hierarchical
    self.distill, self.shrink_every, self.shrink_eps = distill, shrink_every, shrink_eps
    self.group_lasso_ramp, self.finetune_from = tuple(group_lasso_ramp), finetune_from

  def strength(self, step):
    """λ of update `step` (1-based; traced in the step, a number on the host)."""
    start, end = self.group_lasso_ramp
    ramp = jnp.clip((step - start) / (end - start), 0.0, 1.0) if end > start else 1.0
    return jnp.where(self.finetuning(step), 0.0, self.group_lasso * ramp)

  def finetuning(self, step):
    """Whether update `step` is in the penalty-free fine-tune."""
    return jnp.logical_and(self.finetune_from > 0, step > self.finetune_from)

  def loss(self, model: nnx.Module, step: jax.Array, key: jax.Array, forward) -> tuple[jax.Array, jax.Array, dict]:
    """Inside the jitted step: (loss, logits, {"lowrank/group_lasso"}) of the model at ranks sampled from `key`.
    `forward(model, soft_targets or None) -> (loss, logits)` is the loop's own forward pass and loss."""
    current = list(ranks(model).values())
    sampled = jnp.where(self.finetuning(step), jnp.asarray(current, jnp.int32),  # Fine-tune: the kept ranks.
                        sample_ranks(key, current, self.sampler, self.fixed_ratio))
    if self.distill:  # CE(f_full, y) + CE(f_sampled, stop_grad(softmax(f_full)))
      set_active_ranks(model, None)
      full_loss, full_logits = forward(model, None)
      set_active_ranks(model, sampled)
      sampled_loss, logits = forward(model, jax.nn.softmax(jax.lax.stop_gradient(full_logits)))
      loss = jnp.where(self.finetuning(step), full_loss, full_loss + sampled_loss)  # Fine-tune: sampled = full.
    else:
      set_active_ranks(model, sampled)
      loss, logits = forward(model, None)
    reg = penalty(model, self.hierarchical)
    set_active_ranks(model, None)
    return loss + self.strength(step) * reg, logits, {"lowrank/group_lasso": reg}

  def observe(self, model, step, grads) -> None:
    pass

  def after_update(self, model, step, learning_rate) -> None:
    pass

  def host_update_due(self, step: int) -> bool:
    """Whether `host_update` runs after update `step` (1-based; checked every step, cheap)."""
    if self.finetune_from and step >= self.finetune_from:
      return step == self.finetune_from  # A last shrink as the fine-tune begins, then none.
    return bool(self.shrink_every) and step % self.shrink_every == 0

  def host_update(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None) -> bool:
    """Between steps, outside jit: shrinks every layer (and the optimizer state that mirrors it) to the components
    of importance >= shrink_eps. True if a shape changed (a jitted step then compiles once for the new shapes)."""
    before, after = ranks(model), kept_ranks(model, self.shrink_eps)
    if after == before:
      return False
    slice_to(model, after, optimizer)
    return True

  def state(self, step: int, model: nnx.Module) -> dict:
    """What to save with a checkpoint (JSON): the kept ranks, which decide the shapes."""
    return {"ranks": ranks(model)}

  def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None, state: dict) -> None:
    """Before a checkpoint's arrays are restored into `model`: its shapes at the saved ranks ({}: a fresh start)."""
    slice_to(model, state.get("ranks", {}), optimizer)

  def metrics(self, step: int, model: nnx.Module) -> dict[str, float]:
    return {**{f"rank/{name}": r for name, r in ranks(model).items()}, "lowrank/lambda": float(self.strength(step))}
