"""Hierarchical group lasso and rank importance of one LoD layer (docs/maestro.md).

`down: (..., r)` (a dense `(in, r)` or a conv `(kh, kw, in, r)` factor) and
`up: (r, out)`; component `j` is `down[..., j]` with `up[j, :]`.
"""

import jax
import jax.numpy as jnp


def safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt with gradient 0 (not inf/NaN) where x == 0, e.g. a zero tail."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def _tail_sq_norms(down: jax.Array, up: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Σ_{j≥i} ||d_j||² and Σ_{j≥i} ||u_j||², each (r,)."""
  d_sq = jnp.sum(down.reshape(-1, down.shape[-1]) ** 2, axis=0)  # (r,)
  u_sq = jnp.sum(up ** 2, axis=1)  # (r,)
  tail = lambda v: jnp.cumsum(v[::-1])[::-1]
  return tail(d_sq), tail(u_sq)


def hierarchical_group_lasso(down: jax.Array, up: jax.Array) -> jax.Array:
  """Σ_i sqrt(Σ_{j≥i} ||d_j||²) + sqrt(Σ_{j≥i} ||u_j||²), a scalar."""
  d_tail, u_tail = _tail_sq_norms(down, up)
  return jnp.sum(safe_sqrt(d_tail)) + jnp.sum(safe_sqrt(u_tail))


def group_lasso(down: jax.Array, up: jax.Array) -> jax.Array:
  """The non-hierarchical variant: Σ_i ||d_i|| + ||u_i||."""
  d_sq = jnp.sum(down.reshape(-1, down.shape[-1]) ** 2, axis=0)
  return jnp.sum(safe_sqrt(d_sq)) + jnp.sum(safe_sqrt(jnp.sum(up ** 2, axis=1)))


def rank_importance(down: jax.Array, up: jax.Array) -> jax.Array:
  """sqrt(Σ_{j≥i} ||d_j||²) · sqrt(Σ_{j≥i} ||u_j||²), (r,) and non-increasing in i,
  so the components kept by a threshold are always a prefix."""
  d_tail, u_tail = _tail_sq_norms(down, up)
  return safe_sqrt(d_tail) * safe_sqrt(u_tail)
