"""N:M models packed for deployment (docs/nm_sparsity.md): every N:M kernel
hard-masked and packed as its kept values plus their positions in the group
(uint8), the layout sparse kernels consume; everything else as it is. The round
trip is exact. experiment/export.py writes and reads such a model by config.
"""

import numpy as np
from flax import nnx

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


def pack_model(model: nnx.Module) -> tuple[dict[str, np.ndarray], dict[str, list[int]], dict[str, int]]:
  """Every parameter of `model` as arrays by "/"-joined path, each N:M kernel packed (`<path>.values`,
  `<path>.indices`); the packed kernels' N:M patterns by path; and the sizes in bytes (N:M kernels dense and
  packed, the whole model dense and packed)."""
  patterns, arrays = {}, {}
  kernels_dense = kernels_packed = 0
  for path, layer in nm_layers(model):
    s = layer.sparsity
    if s.pattern is None or s.unstructured:
      raise ValueError(f"layer {layer.name!r} has no N:M pattern to pack (dense phase or unstructured baseline)")
    values, indices = pack(np.asarray(layer.kernel[...]), *s.pattern, layer.axis)
    key = "/".join(map(str, (*path, "kernel")))
    arrays[key + ".values"], arrays[key + ".indices"] = values, indices
    patterns[key] = list(s.pattern)
    kernels_dense += layer.kernel[...].nbytes
    kernels_packed += values.nbytes + indices.nbytes
  params = nnx.to_flat_state(nnx.state(model, nnx.Param))
  for path, var in params:
    key = "/".join(map(str, path))
    if key not in patterns:
      arrays[key] = np.asarray(var[...])
  dense_bytes = sum(int(np.asarray(v[...]).nbytes) for _, v in params)
  return arrays, patterns, {"nm_kernels_dense": int(kernels_dense), "nm_kernels_packed": int(kernels_packed),
                            "model_dense": dense_bytes,
                            "model_packed": dense_bytes - int(kernels_dense) + int(kernels_packed)}


def unpack_into(model: nnx.Module, arrays, patterns: dict[str, list[int]]) -> None:
  """`pack_model`'s arrays and patterns back into `model` (the same architecture): kernels unpacked, each N:M
  layer's pattern set (hard masks)."""
  layers = {"/".join(map(str, (*path, "kernel"))): layer for path, layer in nm_layers(model)}
  flat = []
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key = "/".join(map(str, path))
    if key in patterns:
      n, m = patterns[key]
      layer = layers[key]
      layer.sparsity = type(layer.sparsity)((n, m))
      value = unpack(arrays[key + ".values"], arrays[key + ".indices"], m, layer.axis, var[...].shape)
    else:
      value = arrays[key]
    flat.append((path, var.replace(value)))
  nnx.update(model, nnx.from_flat_state(flat))
