"""Deployment of low-rank models (ALGORITHMS.md A6): evaluation at any
per-layer rank, post-hoc SVD truncation of a dense model (the baseline),
the greedy per-layer rank search under a MACs budget, and export.

MACs are XLA's flop estimate of one forward pass at batch 1, halved, on the
model as exported (factors sliced; dense where that is cheaper).
"""

import copy
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from experiment import build
from experiment.step import flops
from lowrank.layers import LowRankConv, LowRankLinear
from lowrank.maestro import ceil_ratio, lod_layers, ranks, set_active_ranks


def _fan_in(layer) -> int:
  return math.prod(layer.down.shape[:-1])


def _is_lod(module) -> bool:
  return isinstance(module, (LowRankLinear, LowRankConv))


def forward_macs(model: nnx.Module, config: ml_collections.ConfigDict) -> float:
  """Multiply-accumulates of one forward pass of one example of `config`'s dataset (XLA's flops / 2)."""
  graphdef, state = nnx.split(model)
  return flops(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), state, build.example_input(config)) / 2


def fraction_ranks(model: nnx.Module, fraction: float) -> dict[str, int]:
  """Every LoD layer at ceil(fraction · its current rank)."""
  return {name: ceil_ratio(fraction, r) for name, r in ranks(model).items()}


def param_fraction_ranks(model: nnx.Module, fraction: float) -> dict[str, int]:
  """Ranks at which each LoD layer holds `fraction` of its dense kernel's parameters: r·(in + out) ≈ fraction·in·out."""
  sizes = {layer.name: (_fan_in(layer), layer.up.shape[1]) for layer in lod_layers(model)}
  return {name: max(1, round(fraction * i * o / (i + o))) for name, (i, o) in sizes.items()}


def export(model: nnx.Module, config: ml_collections.ConfigDict,
           chosen: dict[str, int]) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """A standalone model with each LoD layer sliced to `chosen[name]`; a layer
  where r·(in+out) ≥ in·out becomes a dense kernel `down @ up` again.
  Returns the model and the config that rebuilds it."""
  layers = {layer.name: layer for layer in lod_layers(model)}
  to_dense = [n for n, layer in layers.items() if chosen[n] * (_fan_in(layer) + layer.up.shape[1]) >= _fan_in(layer) * layer.up.shape[1]]
  config = copy.deepcopy(config)
  with config.unlocked():
    config.layers.type = "lowrank"
    config.layers.keep_dense = tuple(config.layers.get("keep_dense", ())) + tuple(to_dense)
    config.layers.ranks = {n: int(chosen[n]) for n in layers if n not in to_dense}
  new = build.model(config)
  old_modules = {tuple(p): m for p, m in nnx.iter_graph(model)}
  for path, module in nnx.iter_graph(new):
    old = old_modules.get(tuple(path))
    if _is_lod(old) and _is_lod(module):
      k = chosen[old.name]
      module.down[...], module.up[...] = old.down[...][..., :k], old.up[...][:k]
      module.active_rank[...] = jnp.int32(k)
      _copy_bias(old, module)
    elif _is_lod(old):  # Back to dense: (kh, kw, in, r) @ (r, out) -> (kh, kw, in, out), or (in, out).
      module.kernel[...] = (old.down[...] @ old.up[...]).reshape(module.kernel.shape)
      _copy_bias(old, module)
  _copy_other_params(model, new)
  return new, config


def from_dense(dense: nnx.Module, config: ml_collections.ConfigDict) -> nnx.Module:
  """The dense model with every layer that `config.layers` (type lowrank) factorizes
  replaced by its truncated SVD, down = P·√S, up = √S·Qᵀ, at that layer's
  configured rank: post-hoc SVD truncation (the baseline), and the switch after
  a dense warm-up."""
  lowrank_model = build.model(config)
  dense_modules = {tuple(p): m for p, m in nnx.iter_graph(dense)}
  for path, module in nnx.iter_graph(lowrank_model):
    if _is_lod(module):
      d, r = dense_modules[tuple(path)], module.rank
      kernel = d.kernel[...].reshape(-1, d.kernel.shape[-1])  # (fan_in, out)
      p, s, qt = jnp.linalg.svd(kernel, full_matrices=False)
      module.down[...] = (p[:, :r] * jnp.sqrt(s[:r])).reshape(module.down.shape)
      module.up[...] = jnp.sqrt(s[:r])[:, None] * qt[:r]
      _copy_bias(d, module)
  _copy_other_params(dense, lowrank_model)
  return lowrank_model


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


def greedy_rank_search(model: nnx.Module, budget_macs: float, score, config: ml_collections.ConfigDict,
                       step_fraction: float = 0.1) -> dict[str, int]:
  """Maestro's deploy-time search: from the current ranks, repeatedly cut the
  layer whose cut (by ceil(step_fraction · r)) loses the least score per MAC
  saved, until the low-rank MACs fit `budget_macs`. `score(model)` runs the
  model as it is (active ranks set) on a held-out batch."""
  current = ranks(model)
  full_macs = forward_macs(model, config)
  per_component = {}  # MACs one rank component of each layer costs.
  for layer in lod_layers(model):
    per_component[layer.name] = _fan_in(layer) + layer.up.shape[1]
  positions = _positions(model, config, per_component, full_macs)
  macs = lambda r: full_macs - sum(positions[n] * per_component[n] * (current[n] - r[n]) for n in r)
  chosen = dict(current)
  while macs(chosen) > budget_macs:
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


def _positions(model, config, per_component, full_macs) -> dict[str, float]:
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
    saved = full_macs - forward_macs(trial, config)
    result[layer.name] = max(1.0, round(saved / per_component[layer.name]))
  return result


def save_exported(folder: pathlib.Path, model: nnx.Module, config: ml_collections.ConfigDict, report: dict) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save((folder / "model").absolute(), nnx.state(model), force=True)


def load_exported(folder: pathlib.Path) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """The exported model, standalone: rebuilt from its config, weights restored."""
  config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text()))
  model = build.model(config)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model))
  with ocp.StandardCheckpointer() as ckpt:
    nnx.update(model, ckpt.restore((folder / "model").absolute(), abstract))
  return model, config


def rank_sweep(model: nnx.Module, config: ml_collections.ConfigDict, fractions: list[float],
               evaluate) -> list[dict]:
  """Parameters, MACs and test metrics (those `evaluate` returns) of the model exported at each rank fraction."""
  rows = []
  for f in fractions:
    chosen = fraction_ranks(model, f)
    exported, _ = export(model, config, chosen)
    result = evaluate(exported)
    rows.append({"rank_fraction": f, "params": build.count_params(exported), "macs": forward_macs(exported, config),
                 **result, "ranks": chosen})
  return rows


