"""Deployment of LoD models (docs/maestro.md) on models the caller builds:
ranks at a fraction, a dense model's truncated SVD copied into an LoD model
(post-hoc SVD, and the switch after a dense warm-up), a model copied at chosen
ranks into its exported form, and Maestro's greedy per-layer rank search under
a MACs budget. experiment/export.py does the same by config.
"""

import math
from typing import Callable

import jax.numpy as jnp
from flax import nnx

from lowrank.layers import LowRankConv, LowRankLinear
from lowrank.maestro import ceil_ratio, lod_layers, ranks, set_active_ranks


def _fan_in(layer) -> int:
  return math.prod(layer.down.shape[:-1])


def _is_lod(module) -> bool:
  return isinstance(module, (LowRankLinear, LowRankConv))


def fraction_ranks(model: nnx.Module, fraction: float) -> dict[str, int]:
  """Every LoD layer at ceil(fraction · its current rank)."""
  return {name: ceil_ratio(fraction, r) for name, r in ranks(model).items()}


def param_fraction_ranks(model: nnx.Module, fraction: float) -> dict[str, int]:
  """Ranks at which each LoD layer holds `fraction` of its dense kernel's parameters: r·(in + out) ≈ fraction·in·out."""
  sizes = {layer.name: (_fan_in(layer), layer.up.shape[1]) for layer in lod_layers(model)}
  return {name: max(1, round(fraction * i * o / (i + o))) for name, (i, o) in sizes.items()}


def cheaper_dense(model: nnx.Module, chosen: dict[str, int]) -> list[str]:
  """The LoD layers whose factors at rank `chosen[name]` hold at least the parameters of one dense kernel,
  r·(in + out) >= in·out: exported as that kernel, `down @ up`."""
  return [layer.name for layer in lod_layers(model)
          if chosen[layer.name] * (_fan_in(layer) + layer.up.shape[1]) >= _fan_in(layer) * layer.up.shape[1]]


def copy_sliced(model: nnx.Module, target: nnx.Module, chosen: dict[str, int]) -> None:
  """Copies `model` into `target`, the same architecture with each LoD layer at rank `chosen[name]` or, for
  `cheaper_dense` ones, dense: factors sliced, or multiplied back into one kernel; everything else unchanged."""
  old_modules = {tuple(p): m for p, m in nnx.iter_graph(model)}
  for path, module in nnx.iter_graph(target):
    old = old_modules.get(tuple(path))
    if _is_lod(old) and _is_lod(module):
      k = chosen[old.name]
      module.down[...], module.up[...] = old.down[...][..., :k], old.up[...][:k]
      module.active_rank[...] = jnp.int32(k)
      _copy_bias(old, module)
    elif _is_lod(old):  # Back to dense: (kh, kw, in, r) @ (r, out) -> (kh, kw, in, out), or (in, out).
      module.kernel[...] = (old.down[...] @ old.up[...]).reshape(module.kernel.shape)
      _copy_bias(old, module)
    elif _is_lod(module):
      raise ValueError(f"layer {module.name!r} is dense in the model to slice; slice a model with LoD layers there")
  _copy_other_params(model, target)


def copy_svd(dense: nnx.Module, target: nnx.Module) -> None:
  """Copies `dense` into `target`, the same architecture with LoD layers: each gets the truncated SVD of the
  dense kernel at its rank r, down = P·√S, up = √S·Qᵀ; everything else unchanged."""
  dense_modules = {tuple(p): m for p, m in nnx.iter_graph(dense)}
  for path, module in nnx.iter_graph(target):
    if _is_lod(module):
      d, r = dense_modules[tuple(path)], module.rank
      kernel = d.kernel[...].reshape(-1, d.kernel.shape[-1])  # (fan_in, out)
      p, s, qt = jnp.linalg.svd(kernel, full_matrices=False)
      module.down[...] = (p[:, :r] * jnp.sqrt(s[:r])).reshape(module.down.shape)
      module.up[...] = jnp.sqrt(s[:r])[:, None] * qt[:r]
      _copy_bias(d, module)
  _copy_other_params(dense, target)


def _copy_bias(source: nnx.Module, target: nnx.Module) -> None:
  """The bias of `source` into `target` (both built with or without one)."""
  if target.bias is not None:
    target.bias[...] = source.bias[...]


def _copy_other_params(source: nnx.Module, target: nnx.Module) -> None:
  """Copies every parameter and BatchNorm statistic outside the LoD layers of either model (norms, embeddings,
  layers kept dense) from `source` into `target`, unchanged."""
  lod_paths = {tuple(p) for m in (source, target) for p, layer in nnx.iter_graph(m) if _is_lod(layer)}
  kept = nnx.Any(nnx.Param, nnx.BatchStat)
  params = dict(nnx.to_flat_state(nnx.state(source, kept)))
  rest = [(p, v.replace(params[p][...])) for p, v in nnx.to_flat_state(nnx.state(target, kept))
          if p in params and not any(p[:len(q)] == q for q in lod_paths)]
  nnx.update(target, nnx.from_flat_state(rest))


def greedy_rank_search(model: nnx.Module, budget_macs: float, score: Callable[[nnx.Module], float],
                       macs: Callable[[nnx.Module], float], step_fraction: float = 0.1) -> dict[str, int]:
  """Maestro's deploy-time search: from the current ranks, repeatedly cut the
  layer whose cut (by ceil(step_fraction · r)) loses the least score per MAC
  saved, until the low-rank MACs fit `budget_macs`. `score(model)` runs the
  model as it is (active ranks set) on a held-out batch; `macs(model)`: the
  multiply-accumulates of its forward pass."""
  current = ranks(model)
  full_macs = macs(model)
  per_component = {}  # MACs one rank component of each layer costs.
  for layer in lod_layers(model):
    per_component[layer.name] = _fan_in(layer) + layer.up.shape[1]
  positions = _positions(model, macs, per_component, full_macs)
  cost_of = lambda r: full_macs - sum(positions[n] * per_component[n] * (current[n] - r[n]) for n in r)
  chosen = dict(current)
  while cost_of(chosen) > budget_macs:
    set_active_ranks(model, chosen)
    base = score(model)
    best = None
    for name, r in chosen.items():
      if r <= 1:
        continue
      cut = max(1, math.ceil(step_fraction * r))
      trial = {**chosen, name: r - cut}
      set_active_ranks(model, trial)
      cost = (base - score(model)) / (positions[name] * per_component[name] * cut)
      if best is None or cost < best[0]:
        best = (cost, trial)
    if best is None:
      break
    chosen = best[1]
  set_active_ranks(model, None)
  return chosen


def _positions(model, macs, per_component, full_macs) -> dict[str, float]:
  """How many positions (tokens, pixels) each LoD layer is applied at: the
  MACs saved by slicing one component off it, divided by that component's size."""
  result = {}
  for layer in lod_layers(model):
    if layer.rank < 2:
      result[layer.name] = 1.0
      continue
    trial = nnx.clone(model)
    for t in lod_layers(trial):
      if t.name == layer.name:
        t.down = nnx.Param(t.down[...][..., :-1])
        t.up = nnx.Param(t.up[...][:-1])
    saved = full_macs - macs(trial)
    result[layer.name] = max(1.0, round(saved / per_component[layer.name]))
  return result
