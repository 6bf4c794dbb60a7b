"""Progressive gradient flow for N:M sparsity (ALGORITHMS.md part B)."""

import fnmatch

import jax.numpy as jnp

from sparsity.layers import NMConv, NMLinear, Sparsity
from sparsity.masks import nm_mask, unstructured_mask
from sparsity.packing import pack, pack_model, unpack, unpack_into
from sparsity.schedules import mask_decay, structure_decay_frames
from sparsity.training import NMTraining, nm_layers

__all__ = ["NMConv", "NMLinear", "NMTraining", "Sparsity", "conv", "linear", "mask_decay", "nm_layers", "nm_mask",
           "pack", "pack_model", "pattern_for", "structure_decay_frames", "unpack", "unpack_into", "unstructured_mask"]


def pattern_for(name: str, n: int, m: int, patterns: dict | None) -> tuple[int, int]:
  """The N:M of layer `name`: the first fnmatch pattern of `patterns` ({"block*/mlp/*": "1:8"}) that
  matches it, else `n:m`."""
  for pattern, nm in (patterns or {}).items():
    if fnmatch.fnmatchcase(name, pattern):
      try:
        a, b = (int(v) for v in str(nm).split(":"))
      except ValueError:
        raise ValueError(f"config.layers.patterns[{pattern!r}]={nm!r} must look like '1:8'") from None
      return a, b
  return n, m


def _checked(name: str, n, m) -> tuple[int, int]:
  if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
    raise ValueError(f"config.layers.n / config.layers.m (or config.layers.patterns): layer {name!r} has N:M = {n}:{m}; "
                     f"need integers 0 < N <= M")
  return n, m


def linear(in_features, out_features, *, rngs, name="", n=2, m=4, patterns=None, use_bias=True, dtype=jnp.float32):
  """The layer factory's `nm` linear."""
  n, m = _checked(name, *pattern_for(name, n, m, patterns))
  return NMLinear(in_features, out_features, n=n, m=m, rngs=rngs, use_bias=use_bias, name=name, dtype=dtype)


def conv(in_features, out_features, kernel_size, *, rngs, name="", n=2, m=4, patterns=None, strides=1,
         padding="SAME", use_bias=True, dtype=jnp.float32):
  """The layer factory's `nm` conv (HWIO, groups along the input channels)."""
  n, m = _checked(name, *pattern_for(name, n, m, patterns))
  return NMConv(in_features, out_features, kernel_size, n=n, m=m, rngs=rngs, strides=strides, padding=padding,
                use_bias=use_bias, name=name, dtype=dtype)
