"""Low-rank ordered decomposition (LoD) layers (docs/maestro.md).

A layer keeps `down` and `up` factors of its current rank `r` (their shapes:
shrinking slices them) and an `ActiveRank`, a traced integer `k <= r`: the
forward pass uses only the first `k` components, so a sampled rank never
changes a shape and never recompiles.

The factors are float32 parameters; a layer computes in its `dtype` (e.g.
bfloat16), casting the input and the factors at use, so the group lasso and
the rank importance always read the float32 factors.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx


class ActiveRank(nnx.Variable):
  """The number of leading components the forward pass uses (not trained)."""


def _spectral(kernel: jax.Array, rank: int) -> tuple[jax.Array, jax.Array]:
  """down = P·√S, up = √S·Qᵀ from the SVD of a `(fan_in, out)` kernel, truncated to `rank`."""
  p, s, qt = jnp.linalg.svd(kernel, full_matrices=False)
  root = jnp.sqrt(s[:rank])
  return p[:, :rank] * root, root[:, None] * qt[:rank]


def _factors(key: jax.Array, fan_in: int, out: int, rank: int, init: str) -> tuple[jax.Array, jax.Array]:
  """(fan_in, rank) and (rank, out) factors; `spectral` factorizes a dense
  LeCun-normal kernel (the full-rank product equals it), `random` draws each
  factor so that the product has the same scale."""
  if init == "spectral":
    return _spectral(nnx.initializers.lecun_normal()(key, (fan_in, out)), rank)
  if init == "random":
    k1, k2 = jax.random.split(key)
    scale = (1.0 / (fan_in * rank)) ** 0.25  # Var(x·D·U) ≈ Var(x) like LeCun init of the product.
    return scale * jax.random.normal(k1, (fan_in, rank)), scale * jax.random.normal(k2, (rank, out))
  raise ValueError(f"config.layers.init={init!r} is unknown; choose 'spectral' or 'random'")


def default_rank(name: str, fan_in: int, out: int, rank_ratio: float, ranks: dict | None) -> int:
  """`ranks[name]` if given, else ceil(rank_ratio · min(fan_in, out)), at least 1."""
  if ranks and name in ranks:
    return int(ranks[name])
  if not 0 < rank_ratio <= 1:
    raise ValueError(f"config.layers.rank_ratio={rank_ratio!r} must be in (0, 1]")
  return max(1, math.ceil(rank_ratio * min(fan_in, out) - 1e-9))


class LowRank(nnx.Module):
  """What LowRankLinear and LowRankConv share: the rank `r` of their factors and how a shrink cuts it."""

  rank_multiple = 1  # A shrink keeps r a multiple of this (an N:M-sparse `up` needs whole groups along r).

  @property
  def rank(self) -> int:
    return self.down.shape[-1]

  def truncate(self, k: int) -> None:
    """Keeps the first `k` components: the factors sliced (new shapes)."""
    self.down = nnx.Param(self.down[...][..., :k])
    self.up = nnx.Param(self.up[...][:k])
    self.active_rank[...] = jnp.asarray(k, jnp.int32)


class LowRankLinear(LowRank):
  """y = (x · down[:, :k]) · up[:k] + bias, `down: (in, r)`, `up: (r, out)`."""

  def __init__(self, in_features: int, out_features: int, *, rank: int, rngs: nnx.Rngs, use_bias: bool = True,
               init: str = "spectral", name: str = "", dtype: jnp.dtype = jnp.float32):
    down, up = _factors(rngs.params(), in_features, out_features, rank, init)
    self.name, self.dtype = name, dtype
    self.down, self.up = nnx.Param(down), nnx.Param(up)
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.active_rank = ActiveRank(jnp.array(rank, jnp.int32))

  def __call__(self, x: jax.Array) -> jax.Array:  # (..., in) -> (..., out)
    keep = jnp.arange(self.rank) < self.active_rank[...]  # (r,)
    x, down, up = (a.astype(self.dtype) for a in (x, self.down[...], self.up[...]))
    y = ((x @ down) * keep) @ up
    return y + self.bias[...].astype(self.dtype) if self.bias is not None else y


class LowRankConv(LowRank):
  """A kh×kw conv from `in` to `r` channels (stride/padding/dilation of the
  original, no bias), then a 1×1 conv `up: (r, out)` with bias (unless `use_bias` is False).
  `down: (kh, kw, in, r)`; r_max = min(out, in·kh·kw)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, rank: int, rngs: nnx.Rngs,
               strides: int = 1, padding: str = "SAME", dilation: int = 1, groups: int = 1, use_bias: bool = True,
               init: str = "spectral", name: str = "", dtype: jnp.dtype = jnp.float32):
    if groups != 1:
      raise ValueError(f"low-rank conv {name!r}: groups={groups} is not supported; keep this layer dense "
                       f"with --config.layers.keep_dense")
    fan_in = kernel_size * kernel_size * in_features
    down, up = _factors(rngs.params(), fan_in, out_features, rank, init)
    self.name, self.strides, self.padding, self.dilation, self.dtype = name, strides, padding, dilation, dtype
    self.down = nnx.Param(down.reshape(kernel_size, kernel_size, in_features, rank))
    self.up = nnx.Param(up)
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.active_rank = ActiveRank(jnp.array(rank, jnp.int32))

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, in) -> (b, h', w', out)
    keep = jnp.arange(self.rank) < self.active_rank[...]
    x, down, up = (a.astype(self.dtype) for a in (x, self.down[...], self.up[...]))
    h = jax.lax.conv_general_dilated(x, down, (self.strides,) * 2, self.padding, rhs_dilation=(self.dilation,) * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))  # (b, h', w', r)
    y = (h * keep) @ up
    return y + self.bias[...].astype(self.dtype) if self.bias is not None else y
