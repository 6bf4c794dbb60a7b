"""Maestro: trainable low-rank ordered decomposition (docs/maestro.md); Cuttlefish's automatic rank
selection (part C, lowrank/cuttlefish.py)."""

import jax.numpy as jnp

from lowrank.cuttlefish import Cuttlefish
from lowrank.group_lasso import group_lasso, hierarchical_group_lasso, rank_importance
from lowrank.layers import LowRankConv, LowRankLinear, default_rank
from lowrank.maestro import Maestro, kept_ranks, lod_layers, penalty, ranks, sample_ranks, set_active_ranks, slice_to

__all__ = ["Cuttlefish", "LowRankConv", "LowRankLinear", "Maestro", "conv", "default_rank", "group_lasso",
           "hierarchical_group_lasso", "kept_ranks", "linear", "lod_layers", "penalty", "rank_importance", "ranks",
           "sample_ranks", "set_active_ranks", "slice_to"]


def linear(in_features, out_features, *, rngs, name="", rank_ratio=1.0, ranks=None, init="spectral",
           use_bias=True, dtype=jnp.float32):
  """The layer factory's `lowrank` linear: r_max = ranks[name] or ceil(rank_ratio · min(in, out))."""
  rank = default_rank(name, in_features, out_features, rank_ratio, ranks)
  return LowRankLinear(in_features, out_features, rank=rank, rngs=rngs, use_bias=use_bias, init=init, name=name,
                       dtype=dtype)


def conv(in_features, out_features, kernel_size, *, rngs, name="", rank_ratio=1.0, ranks=None, init="spectral",
         strides=1, padding="SAME", use_bias=True, dtype=jnp.float32):
  """The factory's `lowrank` conv: r_max = ranks[name] or ceil(rank_ratio · min(out, in·k·k))."""
  rank = default_rank(name, kernel_size * kernel_size * in_features, out_features, rank_ratio, ranks)
  return LowRankConv(in_features, out_features, kernel_size, rank=rank, rngs=rngs, strides=strides, padding=padding,
                     use_bias=use_bias, init=init, name=name, dtype=dtype)
