"""Progressive gradient flow for N:M sparsity (docs/nm_sparsity.md); N:M-sparse low-rank layers (docs/nm_sparsity.md,
sparsity/lowrank.py)."""

import jax.numpy as jnp

from sparsity.layers import NMConv, NMFactor, NMKernel, NMLinear, Sparsity, checked_pattern, pattern_for
from sparsity.lowrank import NMLowRankConv, NMLowRankLinear
from sparsity.masks import nm_mask, unstructured_mask
from sparsity.packing import pack, pack_model, unpack, unpack_into
from sparsity.schedules import mask_decay, structure_decay_frames
from sparsity.training import NMTraining, nm_layers

__all__ = ["NMConv", "NMFactor", "NMKernel", "NMLinear", "NMLowRankConv", "NMLowRankLinear", "NMTraining", "Sparsity",
           "checked_pattern", "conv", "linear", "mask_decay", "nm_layers", "nm_mask", "pack", "pack_model",
           "pattern_for", "structure_decay_frames", "unpack", "unpack_into", "unstructured_mask"]


def linear(in_features, out_features, *, rngs, name="", n=2, m=4, patterns=None, use_bias=True, dtype=jnp.float32):
  """The layer factory's `nm` linear."""
  n, m = checked_pattern(name, n, m, patterns)
  return NMLinear(in_features, out_features, n=n, m=m, rngs=rngs, use_bias=use_bias, name=name, dtype=dtype)


def conv(in_features, out_features, kernel_size, *, rngs, name="", n=2, m=4, patterns=None, strides=1,
         padding="SAME", use_bias=True, dtype=jnp.float32):
  """The layer factory's `nm` conv (HWIO, groups along the input channels)."""
  n, m = checked_pattern(name, n, m, patterns)
  return NMConv(in_features, out_features, kernel_size, n=n, m=m, rngs=rngs, strides=strides, padding=padding,
                use_bias=use_bias, name=name, dtype=dtype)
