"""Export of N:M models (ALGORITHMS.md B1): every N:M kernel hard-masked and
packed as its kept values plus their positions in the group (uint8), the
layout sparse kernels consume; everything else as it is. The round trip is exact.

An export folder holds `config.json`, `export.json` (the report: patterns,
bytes) and `weights.npz`.
"""

import json
import pathlib

import ml_collections
import numpy as np
from flax import nnx

from experiment import build
from sparsity.masks import nm_mask
from sparsity.training import nm_layers


def pack(w: np.ndarray, n: int, m: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
  """(values, indices), each `(..., size/m, n)` with the grouped axis moved last:
  the kept entries of every group of `m` and their positions in it (ascending)."""
  def groups(a: np.ndarray) -> np.ndarray:  # (..., size/m, m)
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(*moved.shape[:-1], -1, m)

  kept = groups(np.asarray(nm_mask(w, n, m, axis)))
  indices = np.argsort(~kept, axis=-1, kind="stable")[..., :n]  # Kept first, each group's in ascending order.
  return np.take_along_axis(groups(np.asarray(w)), indices, axis=-1), indices.astype(np.uint8)


def unpack(values: np.ndarray, indices: np.ndarray, m: int, axis: int, shape: tuple[int, ...]) -> np.ndarray:
  """The hard-masked kernel of `shape` back from `pack`'s output (zeros where pruned)."""
  groups = np.zeros((*values.shape[:-1], m), values.dtype)
  np.put_along_axis(groups, indices.astype(np.int64), values, axis=-1)
  moved = list(shape)
  moved.append(moved.pop(axis))
  return np.moveaxis(groups.reshape(moved), -1, axis)


def export(model: nnx.Module, config: ml_collections.ConfigDict, folder: pathlib.Path, report: dict) -> dict:
  """Writes the packed model; returns the report with its sizes in bytes."""
  packed_paths = {}
  arrays = {}
  kernels_dense = kernels_packed = 0
  for path, layer in nm_layers(model):
    s = layer.sparsity
    if s.pattern is None or s.unstructured:
      raise ValueError(f"layer {layer.name!r} has no N:M pattern to pack (dense phase or unstructured baseline)")
    values, indices = pack(np.asarray(layer.kernel[...]), *s.pattern, layer.axis)
    key = "/".join(map(str, (*path, "kernel")))
    arrays[key + ".values"], arrays[key + ".indices"] = values, indices
    packed_paths[key] = list(s.pattern)
    kernels_dense += layer.kernel[...].nbytes
    kernels_packed += values.nbytes + indices.nbytes
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key = "/".join(map(str, path))
    if key not in packed_paths:
      arrays[key] = np.asarray(var[...])
  dense_bytes = sum(int(np.asarray(v[...]).nbytes) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  report = {**report, "format": "nm", "patterns": packed_paths,
            "bytes": {"nm_kernels_dense": int(kernels_dense), "nm_kernels_packed": int(kernels_packed),
                      "model_dense": dense_bytes, "model_packed": dense_bytes - int(kernels_dense) + int(kernels_packed)}}
  folder.mkdir(parents=True, exist_ok=True)
  np.savez(folder / "weights.npz", **arrays)
  (folder / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  (folder / "export.json").write_text(json.dumps(report, indent=2) + "\n")
  return report


def load(folder: pathlib.Path) -> tuple[nnx.Module, ml_collections.ConfigDict]:
  """The exported model, standalone: rebuilt from its config, kernels unpacked, patterns set (hard masks)."""
  config = ml_collections.ConfigDict(json.loads((folder / "config.json").read_text()))
  patterns = json.loads((folder / "export.json").read_text())["patterns"]
  model = build.model(config)
  layers = {"/".join(map(str, (*path, "kernel"))): layer for path, layer in nm_layers(model)}
  weights = np.load(folder / "weights.npz")
  flat = []
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key = "/".join(map(str, path))
    if key in patterns:
      n, m = patterns[key]
      layer = layers[key]
      layer.sparsity = type(layer.sparsity)((n, m))
      value = unpack(weights[key + ".values"], weights[key + ".indices"], m, layer.axis, var[...].shape)
    else:
      value = weights[key]
    flat.append((path, var.replace(value)))
  nnx.update(model, nnx.from_flat_state(flat))
  return model, config
