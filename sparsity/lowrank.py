"""Low rank and N:M in one layer (docs/nm_sparsity.md): LoD layers whose factors are N:M-sparse `NMFactor`s, so a
deployed layer is both thin and sparse.

Each factor is grouped along the reduction axis of its product, the axis sparse tensor cores group:
`down (in, r)` (conv: `(kh, kw, in, r)`) along `in`, the reduction of x·down; `up (r, out)` along `r`, the
reduction of h·up. Maestro (lowrank/) sees ordinary LoD layers whose factors read as their masked values, so
ordered dropout, the group lasso, the importance and shrinking act on the effective weights; a shrink keeps `r` a
multiple of every M that `up` is grouped in (its `groups`, set by NMTraining), so its groups stay whole.
`NMTraining` (sparsity/training.py) finds the factors among its N:M kernels and trains them with its rule.
"""

import math

import jax.numpy as jnp
from flax import nnx

from lowrank.layers import LowRankConv, LowRankLinear, default_rank
from sparsity.layers import NMFactor, checked_pattern


class _SparseFactors:
  """What both layers add to their LoD base: the factors made NMFactors, and a shrink that slices them."""

  def _sparsify(self, n: int, m: int, in_axis: int) -> None:
    self.down = NMFactor(self.down[...], n=n, m=m, axis=in_axis, name=f"{self.name}.down", dtype=self.dtype)
    self.up = NMFactor(self.up[...], n=n, m=m, axis=0, name=f"{self.name}.up", dtype=self.dtype)

  @property
  def rank_multiple(self) -> int:
    return self.up.groups

  def truncate(self, k: int) -> None:
    self.down.truncate((*self.down.shape[:-1], k))
    self.up.truncate((k, self.up.shape[1]))
    self.active_rank[...] = jnp.asarray(k, jnp.int32)


class NMLowRankLinear(_SparseFactors, LowRankLinear):
  """An LoD linear layer with N:M-sparse factors (`down` grouped along `in`, `up` along `r`)."""

  def __init__(self, in_features: int, out_features: int, *, rank: int, n: int, m: int, rngs: nnx.Rngs,
               use_bias: bool = True, init: str = "spectral", name: str = "", dtype: jnp.dtype = jnp.float32):
    super().__init__(in_features, out_features, rank=rank, rngs=rngs, use_bias=use_bias, init=init, name=name,
                     dtype=dtype)
    self._sparsify(n, m, 0)


class NMLowRankConv(_SparseFactors, LowRankConv):
  """An LoD conv with N:M-sparse factors (`down` grouped along its input channels, `up` along `r`)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, rank: int, n: int, m: int,
               rngs: nnx.Rngs, strides: int = 1, padding: str = "SAME", use_bias: bool = True,
               init: str = "spectral", name: str = "", dtype: jnp.dtype = jnp.float32):
    super().__init__(in_features, out_features, kernel_size, rank=rank, rngs=rngs, strides=strides, padding=padding,
                     use_bias=use_bias, init=init, name=name, dtype=dtype)
    self._sparsify(n, m, 2)


def _rank(name: str, fan_in: int, out: int, rank_ratio: float, ranks, m: int) -> int:
  """The LoD rank rounded up to a multiple of M (`up`'s groups), at most min(fan_in, out) rounded down to one."""
  rank = default_rank(name, fan_in, out, rank_ratio, ranks)
  return max(m, min(math.ceil(rank / m) * m, min(fan_in, out) // m * m))


def linear(in_features, out_features, *, rngs, name="", rank_ratio=1.0, ranks=None, init="spectral", n=2, m=4,
           patterns=None, use_bias=True, dtype=jnp.float32):
  """The layer factory's `lowrank+nm` linear: Maestro's rank options and the N:M ones."""
  n, m = checked_pattern(name, n, m, patterns)
  return NMLowRankLinear(in_features, out_features, rank=_rank(name, in_features, out_features, rank_ratio, ranks, m),
                         n=n, m=m, rngs=rngs, use_bias=use_bias, init=init, name=name, dtype=dtype)


def conv(in_features, out_features, kernel_size, *, rngs, name="", rank_ratio=1.0, ranks=None, init="spectral", n=2,
         m=4, patterns=None, strides=1, padding="SAME", use_bias=True, dtype=jnp.float32):
  """The layer factory's `lowrank+nm` conv."""
  n, m = checked_pattern(name, n, m, patterns)
  rank = _rank(name, kernel_size * kernel_size * in_features, out_features, rank_ratio, ranks, m)
  return NMLowRankConv(in_features, out_features, kernel_size, rank=rank, n=n, m=m, rngs=rngs, strides=strides,
                       padding=padding, use_bias=use_bias, init=init, name=name, dtype=dtype)
