"""Masks from dense weights (docs/nm_sparsity.md): N:M along one axis, and the
unstructured magnitude baseline at a given density. True where a weight is kept.
Ties keep the lower index, so masks are deterministic.

Both run every training step, so they avoid sorting where they can
(`lax.top_k` over millions of tiny rows is 10-40x slower on CPU). An N:M mask
that keeps or prunes only k = min(N, M − N) entries per group takes k rounds of
`argmax` (about 3 passes over the kernel each: 1:8 and 7:8 in one round);
otherwise a group of M ≤ 16 ranks each entry by comparing it with the other
M − 1, and larger groups use `top_k`. The unstructured mask bisects for its
threshold (31 counting passes, no sort).
"""

import jax
import jax.numpy as jnp

_PAIRWISE_MAX_M = 16


def nm_mask(w: jax.Array, n: int, m: int, axis: int = 0) -> jax.Array:
  """The `n` largest |w| in every group of `m` consecutive entries along `axis`.

  Dense kernels `(in, out)` group along axis 0, HWIO conv kernels along axis 2
  (input channels): the layout sparse tensor cores accelerate.
  """
  axis = axis % w.ndim
  if not 0 < n <= m:
    raise ValueError(f"N:M = {n}:{m}: need 0 < N <= M")
  if w.shape[axis] % m:
    raise ValueError(f"N:M = {n}:{m}: axis {axis} of a {w.shape} kernel has {w.shape[axis]} entries, not divisible by M={m}")
  if n == m:
    return jnp.ones(w.shape, bool)
  groups = jnp.abs(w).reshape(*w.shape[:axis], -1, m, *w.shape[axis + 1:])  # members on axis `axis + 1`
  member = axis + 1
  if 3 * min(n, m - n) < m:
    return _by_rounds(groups, n, m, member).reshape(w.shape)
  if m <= _PAIRWISE_MAX_M:
    mine, other = jnp.expand_dims(groups, member + 1), jnp.expand_dims(groups, member)  # [.., i, 1, ..], [.., 1, j, ..]
    i, j = jnp.arange(m)[:, None], jnp.arange(m)[None, :]
    earlier = (j < i).reshape(m, m, *(1,) * (w.ndim - axis - 1))
    beaten_by = (other > mine) | ((other == mine) & earlier)  # [.., i, j, ..]: entry j ranks above entry i
    return (jnp.sum(beaten_by, axis=member + 1, dtype=jnp.int32) < n).reshape(w.shape)
  last = jnp.moveaxis(groups, member, -1)  # (..., m)
  _, kept = jax.lax.top_k(last, n)  # Stable: ties keep the lower index.
  mask = jnp.any(kept[..., None] == jnp.arange(m), axis=-2)
  return jnp.moveaxis(mask, -1, member).reshape(w.shape)


def _by_rounds(groups: jax.Array, n: int, m: int, member: int) -> jax.Array:
  """nm_mask of `groups` (members on axis `member`) in min(n, m − n) rounds: each takes the largest remaining
  entry of every group (argmax: the lower index on ties), or, to prune m − n < n, the smallest remaining (the higher
  index on ties, by taking argmax of −|w| over the reversed group)."""
  keep = n <= m - n
  scores = groups if keep else jnp.flip(-groups, member)
  position = jnp.arange(m).reshape(m, *(1,) * (groups.ndim - member - 1))
  taken = jnp.zeros(groups.shape, bool)
  for _ in range(n if keep else m - n):
    hit = position == jnp.expand_dims(jnp.argmax(scores, axis=member), member)
    taken, scores = taken | hit, jnp.where(hit, -jnp.inf, scores)
  return taken if keep else ~jnp.flip(taken, member)


def unstructured_mask(w: jax.Array, density: float) -> jax.Array:
  """The round(density · size) largest |w| of the whole kernel (no structure)."""
  keep = max(1, round(density * w.size))
  bits = jax.lax.bitcast_convert_type(jnp.abs(w).reshape(-1), jnp.int32)  # Ordered like the values (all >= 0).

  def bisect(_, bounds):  # Invariant: at least `keep` entries >= lo, fewer than `keep` >= hi.
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    enough = jnp.sum(bits >= mid) >= keep
    return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

  threshold, _ = jax.lax.fori_loop(0, 31, bisect, (jnp.int32(0), jnp.int32(2**31 - 1)))  # The keep-th largest.
  above, tied = bits > threshold, bits == threshold  # Ties at the threshold: the lowest indices, `keep` in all.
  return (above | (tied & (jnp.cumsum(tied) <= keep - jnp.sum(above)))).reshape(w.shape)
