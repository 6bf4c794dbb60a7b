"""The checks Maestro's theory gives (docs/maestro.md), on the real layer and sampler.

Thresholds are set from measured values with a margin, and each is far from
what a wrong method gives (noted beside it), so they can fail. Each test prints
what it measured: `python -m pytest tests/test_lowrank_theory.py -q -n 0 -s`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lowrank import maestro
from lowrank.layers import LowRankLinear


def _train(layer, x, y, *, steps, lr, sampler="single_layer", lam=0.0, seed=0):
  """Plain SGD on mean-over-samples squared error, ranks sampled each step."""
  graphdef, state = nnx.split(layer)

  def step(state, key):
    m = nnx.merge(graphdef, state)

    def loss_fn(m):
      maestro.set_active_ranks(m, maestro.sample_ranks(key, [m.rank], sampler))
      err = jnp.sum((m(x) - y) ** 2) / x.shape[0]
      return err + lam * maestro.penalty(m)

    grads = nnx.grad(loss_fn)(m)
    nnx.update(m, jax.tree.map(lambda p, g: p - lr * g, nnx.state(m, nnx.Param), grads))
    maestro.set_active_ranks(m, None)
    return nnx.state(m), None

  state, _ = jax.lax.scan(step, state, jax.random.split(jax.random.key(seed), steps))
  nnx.update(layer, state)
  return layer


def _truncated(a, k):
  u, s, vt = np.linalg.svd(a, full_matrices=False)
  return (u[:, :k] * s[:k]) @ vt[:k]


def _rank_k(layer, k):
  return np.asarray(layer.down[...][:, :k] @ layer.up[...][:k])


def test_svd_recovery_nested_truncations_and_singular_values():
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(9, 6)))
  v, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  sigma = np.array([3.0, 2.0, 1.0, 0.0, 0.0, 0.0])  # A: 9x6 of rank 3, as in the reference setup.
  a = (u * sigma) @ v.T
  layer = LowRankLinear(9, 6, rank=6, rngs=nnx.Rngs(0), use_bias=False, init="random")
  _train(layer, jnp.eye(9), jnp.asarray(a), steps=2000, lr=0.5)
  errors = [np.linalg.norm(_rank_k(layer, k) - _truncated(a, k)) for k in range(1, 7)]
  # Measured: 1.4e-4 (k=1) to 4.9e-3 (k=4); 3.2e-3 at full rank, the reference's ~3e-3.
  # Without ordered dropout the rank-1 error is 3.0 (next test).
  assert max(errors) < 1e-2, errors
  norms = np.linalg.norm(layer.down[...], axis=0) * np.linalg.norm(layer.up[...], axis=1)
  print(f"\nordered dropout, 9x6 rank-3 A: ||(D U)_k - A_k|| for k = 1..6: {', '.join(f'{e:.1e}' for e in errors)}; "
        f"||d_i||·||u_i|| - σ_i for i = 1..3: {', '.join(f'{n - s:.1e}' for n, s in zip(norms[:3], sigma[:3]))}")
  np.testing.assert_allclose(norms[:3], sigma[:3], atol=1e-2)  # Measured: within 1e-4.
  assert np.all(norms[3:] < 0.05)  # Measured: at most 7.4e-3.


def test_plain_low_rank_training_does_not_order_components():
  """The contrast that shows the test above can fail: without sampling, the
  rank-1 truncation of the learned factors is not A_1."""
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(9, 6)))
  v, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  a = (u * np.array([3.0, 2.0, 1.0, 0, 0, 0])) @ v.T
  layer = LowRankLinear(9, 6, rank=6, rngs=nnx.Rngs(0), use_bias=False, init="random")
  _train(layer, jnp.eye(9), jnp.asarray(a), steps=2000, lr=0.5, sampler="none")
  print(f"\nno ordered dropout: ||(D U)_6 - A|| = {np.linalg.norm(_rank_k(layer, 6) - a):.1e}, "
        f"||(D U)_1 - A_1|| = {np.linalg.norm(_rank_k(layer, 1) - _truncated(a, 1)):.2f}")
  assert np.linalg.norm(_rank_k(layer, 6) - a) < 1e-2  # It fits A ...
  assert np.linalg.norm(_rank_k(layer, 1) - _truncated(a, 1)) > 0.3  # ... but not in order (measured: 3.0).


def test_pca_recovery_with_group_lasso_keeps_exactly_the_data_rank():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 10)))  # 3 samples in 10-d: a rank-3 subspace.
  layer = LowRankLinear(10, 10, rank=10, rngs=nnx.Rngs(0), use_bias=False, init="random")
  _train(layer, x, x, steps=4000, lr=0.05, lam=1e-2)
  importance = np.asarray(maestro.rank_importance(layer.down[...], layer.up[...]))
  # Measured: 2.99, 1.97, 0.97, then 3.1e-6 for every other component.
  print(f"\ngroup lasso, 3 samples in 10-d: importances {', '.join(f'{i:.2g}' for i in importance)}; "
        f"kept {maestro.kept_ranks(layer, 1e-3)['']}")
  assert np.all(importance[:3] > 0.1) and np.all(importance[3:] < 1e-3), importance
  assert maestro.kept_ranks(layer, 1e-3) == {"": 3}
  # The kept components span the data's principal subspace, in order.
  top = np.linalg.svd(np.asarray(x), full_matrices=False)[2][:1]  # First principal direction (1, 10).
  np.testing.assert_allclose(np.abs(top @ _rank_k(layer, 1) @ top.T), np.abs(top @ top.T), atol=0.05)


def test_non_isotropic_inputs_order_by_the_svd_of_sigma_half_a():
  rng = np.random.default_rng(2)
  a = rng.normal(size=(5, 4))
  scales = np.array([3.0, 1.5, 1.0, 0.5, 0.25])  # Σ^{1/2} = diag(scales).
  x = rng.normal(size=(4000, 5))
  x = (x - x.mean(0)) / x.std(0) * scales
  layer = LowRankLinear(5, 4, rank=4, rngs=nnx.Rngs(0), use_bias=False, init="random")
  _train(layer, jnp.asarray(x), jnp.asarray(x @ a), steps=3000, lr=0.02)
  cov_half = np.linalg.cholesky(x.T @ x / len(x))  # Σ = L Lᵀ: the data-weighted norm is ||Lᵀ M||.
  weighted = np.linalg.solve(cov_half.T, _truncated(cov_half.T @ a, 1))  # Best rank 1 in that norm.
  learned = _rank_k(layer, 1)
  # Measured: 9.7e-5 from the data-weighted truncation, 1.40 from the plain SVD truncation of A.
  print(f"\nnon-isotropic inputs: rank 1 is {np.linalg.norm(learned - weighted):.1e} from the SVD of Σ^1/2 A, "
        f"{np.linalg.norm(learned - _truncated(a, 1)):.2f} from the SVD of A")
  assert np.linalg.norm(learned - weighted) < 0.1
  assert np.linalg.norm(learned - _truncated(a, 1)) > 0.5
