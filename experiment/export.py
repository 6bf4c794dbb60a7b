"""Trained models by config: a dense model switched to its truncated SVD, an
LoD model exported at chosen ranks, its MACs and rank sweep, and exported
models written and read back standalone (an export folder holds config.json,
export.json and the weights). The arithmetic is the libraries'
(lowrank/deploy.py, sparsity/packing.py); this adds the config that rebuilds
each model.

MACs are XLA's flop estimate of one forward pass at batch 1, halved, on the
model as exported (factors sliced; dense where that is cheaper).
"""

import copy
import json
import pathlib
import zipfile

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from experiment import build, files, workdir
from experiment.step import flops
import lowrank
from lowrank import deploy
from sparsity import packing


def forward_macs(model: nnx.Module, config: ml_collections.ConfigDict) -> float:
  """Multiply-accumulates of one forward pass of one example of `config`'s dataset (XLA's flops / 2)."""
  graphdef, state = nnx.split(model)
  return flops(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), state, build.example_input(config)) / 2


def from_dense(dense: nnx.Module, config: ml_collections.ConfigDict) -> nnx.Module:
  """The dense model with every layer that `config.layers` (type lowrank) factorizes replaced by its truncated SVD
  at that layer's configured rank: post-hoc SVD truncation (the baseline), whatever method `config` trained."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.layers.type = "lowrank"
  lowrank_model = build.model(config)
  deploy.copy_svd(dense, lowrank_model)
  return lowrank_model


def sliced(model: nnx.Module, config: ml_collections.ConfigDict,
           chosen: dict[str, int]) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """A standalone model with each LoD layer sliced to `chosen[name]`, or a dense kernel again where that is
  smaller (`deploy.cheaper_dense`). Returns the model and the config that rebuilds it."""
  to_dense = deploy.cheaper_dense(model, chosen)
  config = copy.deepcopy(config)
  with config.unlocked():
    config.layers.type = "lowrank"
    config.layers.keep_dense = tuple(config.layers.get("keep_dense", ())) + tuple(to_dense)
    config.layers.ranks = {n: int(r) for n, r in chosen.items() if n not in to_dense}
  new = build.model(config)
  deploy.copy_sliced(model, new, chosen)
  return new, config


def rank_sweep(model: nnx.Module, config: ml_collections.ConfigDict, fractions: list[float],
               evaluate) -> list[dict]:
  """Parameters, MACs and test metrics (those `evaluate` returns) of the model exported at each rank fraction."""
  rows = []
  for f in fractions:
    chosen = deploy.fraction_ranks(model, f)
    exported, _ = sliced(model, config, chosen)
    result = evaluate(exported)
    rows.append({"rank_fraction": f, "params": build.count_params(exported), "macs": forward_macs(exported, config),
                 **result, "ranks": chosen})
  return rows


def _write(folder: pathlib.Path, config: ml_collections.ConfigDict, report: dict) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  files.write_atomic(folder / "config.json", config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  files.write_atomic(folder / "export.json", json.dumps(report, indent=2) + "\n")


def save_lowrank(folder: pathlib.Path, model: nnx.Module, config: ml_collections.ConfigDict, report: dict) -> None:
  """`sliced`'s model and config, standalone (its weights an Orbax checkpoint)."""
  _write(folder, config, report)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save((folder / "model").absolute(), nnx.state(model), force=True)


def save_nm(folder: pathlib.Path, model: nnx.Module, config: ml_collections.ConfigDict, report: dict) -> dict:
  """An N:M model packed (`packing.pack_model`) in weights.npz; returns the report with its sizes in bytes. A model
  with low-rank layers too (N:M factors) is rebuilt at the ranks it has."""
  if ranks := lowrank.ranks(model):
    config = copy.deepcopy(config)
    with config.unlocked():
      config.layers.ranks = ranks
  arrays, patterns, sizes = packing.pack_model(model)
  report = {**report, "format": "nm", "patterns": patterns, "bytes": sizes}
  _write(folder, config, report)
  np.savez(folder / "weights.npz", **arrays)
  return report


def load(folder: pathlib.Path) -> tuple[nnx.Module, ml_collections.ConfigDict, dict]:
  """An exported model (either kind), standalone: rebuilt from its config, weights restored; and its export.json.
  A damaged file of the folder: DamagedFile."""
  fix = "export the run again (python eval.py --workdir=<its run folder> --export=<folder>)"
  config = ml_collections.ConfigDict(files.read_json(folder / "config.json", workdir.CONFIG_SCHEMA, fix))
  report = files.read_json(folder / "export.json", {"step": int}, fix)
  nm = report.get("format") == "nm"
  if nm and (problem := files.mismatch(report, {"patterns": dict})):
    raise files.DamagedFile(folder / "export.json", f"damaged ({problem})", fix)
  model = build.model(config)
  weights = folder / ("weights.npz" if nm else "model")
  try:
    if nm:
      packing.unpack_into(model, np.load(weights), report["patterns"])
    else:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model))
      with ocp.StandardCheckpointer() as ckpt:
        nnx.update(model, ckpt.restore(weights.absolute(), abstract))
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise files.DamagedFile(weights, f"damaged ({type(e).__name__})", fix) from None
  return model, config, report
