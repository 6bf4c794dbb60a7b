"""Maestro's pieces: group lasso and importance formulas, LoD layers, samplers, shrinking."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lowrank
from lowrank import deploy, maestro
from lowrank.layers import LowRankConv, LowRankLinear


def _naive_hgl(down, up):
  r = down.shape[-1]
  d = down.reshape(-1, r)
  return sum(np.sqrt(sum(np.sum(d[:, j] ** 2) for j in range(i, r))) +
             np.sqrt(sum(np.sum(up[j] ** 2) for j in range(i, r))) for i in range(r))


def test_group_lasso_and_importance_match_their_formulas():
  down, up = np.random.default_rng(0).normal(size=(2, 2, 3, 5)), np.random.default_rng(1).normal(size=(5, 4))
  np.testing.assert_allclose(lowrank.hierarchical_group_lasso(down, up), _naive_hgl(down, up), rtol=1e-5)
  d = down.reshape(-1, 5)
  np.testing.assert_allclose(lowrank.group_lasso(down, up),
                             np.linalg.norm(d, axis=0).sum() + np.linalg.norm(up, axis=1).sum(), rtol=1e-5)
  importance = np.asarray(lowrank.rank_importance(down, up))
  expected = [np.sqrt(np.sum(d[:, i:] ** 2)) * np.sqrt(np.sum(up[i:] ** 2)) for i in range(5)]
  np.testing.assert_allclose(importance, expected, rtol=1e-5)
  assert np.all(np.diff(importance) <= 0)  # Non-increasing: what is kept is a prefix.


def test_zero_tails_have_finite_gradients():
  down = jnp.zeros((4, 3)).at[:, 0].set(1.0)
  up = jnp.zeros((3, 2)).at[0].set(1.0)
  grads = jax.grad(lambda d, u: lowrank.hierarchical_group_lasso(d, u) + lowrank.rank_importance(d, u).sum(),
                   argnums=(0, 1))(down, up)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_linear_runs_any_prefix_rank_and_rank_zero_is_the_bias():
  layer = LowRankLinear(6, 4, rank=4, rngs=nnx.Rngs(0))
  layer.bias[...] = jnp.arange(4.0)
  x = jax.random.normal(jax.random.key(1), (2, 3, 6))
  for k in range(5):
    maestro.set_active_ranks(layer, {"": k})
    expected = x @ layer.down[...][:, :k] @ layer.up[...][:k] + layer.bias[...]
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
  maestro.set_active_ranks(layer, {"": 0})
  np.testing.assert_array_equal(layer(x), jnp.broadcast_to(jnp.arange(4.0), (2, 3, 4)))


@pytest.mark.parametrize("strides,padding,dilation", [(1, "SAME", 1), (2, "VALID", 1), (1, "SAME", 2)])
def test_conv_factors_compose_to_a_dense_conv(strides, padding, dilation):
  conv = LowRankConv(3, 8, 3, rank=8, rngs=nnx.Rngs(0), strides=strides, padding=padding, dilation=dilation)
  conv.bias[...] = jnp.ones(8)
  x = jax.random.normal(jax.random.key(2), (2, 9, 9, 3))
  kernel = jnp.einsum("hwir,ro->hwio", conv.down[...], conv.up[...])
  dense = jax.lax.conv_general_dilated(x, kernel, (strides,) * 2, padding, rhs_dilation=(dilation,) * 2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC")) + 1.0
  np.testing.assert_allclose(conv(x), dense, rtol=1e-4, atol=1e-5)
  maestro.set_active_ranks(conv, {"": 0})
  np.testing.assert_array_equal(conv(x), jnp.ones(dense.shape))  # Rank 0: bias, with the conv's output shape.


def test_conv_groups_are_rejected():
  with pytest.raises(ValueError, match="groups"):
    LowRankConv(4, 4, 3, rank=2, rngs=nnx.Rngs(0), groups=2)


def test_spectral_init_at_full_rank_is_the_dense_init():
  layer = LowRankLinear(7, 5, rank=5, rngs=nnx.Rngs(3), init="spectral")
  kernel = nnx.initializers.lecun_normal()(nnx.Rngs(3).params(), (7, 5))
  np.testing.assert_allclose(layer.down[...] @ layer.up[...], kernel, atol=1e-5)


def test_ceil_ratio_is_exact_where_floats_are_off_by_one():
  assert math.ceil(25 * (7 / 25)) == 8  # The reference's float round trip is off by one here ...
  assert maestro.ceil_ratio(7 / 25, 25) == 7  # ... and exact here.
  for r, j in itertools.product(range(1, 100), range(1, 100)):
    if j <= r:
      assert maestro.ceil_ratio(j / r, r) == j


def test_single_layer_sampler_marginals():
  current = [2, 6, 4]
  keys = jax.random.split(jax.random.key(0), 6000)
  draws = np.asarray(jax.vmap(lambda k: maestro.sample_ranks(k, current, "single_layer"))(keys))
  truncated = draws < np.asarray(current)
  assert truncated.sum(axis=1).max() == 1  # Never more than one layer below its rank.
  # Every (layer, k) pair equally likely: 1/12 each, so P(layer i picked, k < r_i) = (r_i - 1)/12.
  np.testing.assert_allclose(truncated.mean(axis=0), [(r - 1) / 12 for r in current], atol=0.015)
  layer1 = draws[:, 1][truncated[:, 1]]
  np.testing.assert_allclose(np.bincount(layer1, minlength=6)[1:6] / len(layer1), 0.2, atol=0.03)


def test_other_samplers():
  key, current = jax.random.key(1), [3, 10]
  draws = np.asarray(jax.vmap(lambda k: maestro.sample_ranks(k, current, "independent"))(jax.random.split(key, 500)))
  assert draws.min() == 1 and list(draws.max(axis=0)) == current
  np.testing.assert_array_equal(maestro.sample_ranks(key, current, "fixed_ratio", 0.25), [1, 3])
  np.testing.assert_array_equal(maestro.sample_ranks(key, current, "none"), current)


def test_sampled_ranks_never_recompile():
  model = nnx.Sequential(LowRankLinear(8, 8, rank=8, rngs=nnx.Rngs(0), name="a"),
                         LowRankLinear(8, 4, rank=4, rngs=nnx.Rngs(1), name="b"))
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, key):
    m = nnx.merge(graphdef, state)
    maestro.set_active_ranks(m, maestro.sample_ranks(key, [8, 4], "single_layer"))
    return m(jnp.ones((1, 8)))

  outputs = {tuple(np.asarray(run(state, jax.random.key(i))).ravel().round(5)) for i in range(40)}
  assert len(outputs) > 5 and run._cache_size() == 1


def test_sliced_model_equals_masked_model_and_optimizer_state_follows():
  model = nnx.Sequential(LowRankLinear(12, 10, rank=10, rngs=nnx.Rngs(0), name="a"), nnx.relu,
                         LowRankLinear(10, 6, rank=6, rngs=nnx.Rngs(1), name="b"))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(0), (5, 12))
  optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))  # Non-zero moments.
  keep = {"a": 4, "b": 2}
  maestro.set_active_ranks(model, keep)
  masked = model(x)
  maestro.slice_to(model, keep, optimizer)
  np.testing.assert_allclose(model(x), masked, atol=1e-5)
  assert maestro.ranks(model) == keep
  for path, var in nnx.to_flat_state(nnx.state(optimizer)):
    if path[-1] in ("down", "up"):
      layer = model.layers[path[-2]]
      assert var[...].shape == getattr(layer, path[-1]).shape
  optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))  # Training goes on.


def test_kept_ranks_threshold_importance():
  layer = LowRankLinear(6, 6, rank=6, rngs=nnx.Rngs(0), name="a")
  layer.down[...] = layer.down[...].at[:, 3:].set(0.0)
  layer.up[...] = layer.up[...].at[3:].set(0.0)
  assert maestro.kept_ranks(layer, 1e-6) == {"a": 3}


def test_group_lasso_schedule_and_penalty_free_finetune():
  """λ is 0 until the ramp starts, rises linearly to full, and is 0 in the fine-tune, where the loss is the plain
  cross-entropy of the kept ranks (no sampling, no penalty) and no shrink comes after the one that begins it."""
  hooks = lowrank.Maestro(group_lasso=0.5, group_lasso_ramp=(10, 30), finetune_from=80, shrink_every=25,
                          sampler="independent")
  assert [float(hooks.strength(t)) for t in (5, 10, 20, 30, 80, 81)] == [0.0, 0.0, 0.25, 0.5, 0.5, 0.0]
  assert float(jax.jit(hooks.strength)(jnp.int32(20))) == 0.25  # Traced: one compilation for every step.
  assert [t for t in range(1, 101) if hooks.host_update_due(t)] == [25, 50, 75, 80]
  assert float(lowrank.Maestro(group_lasso=0.5).strength(1)) == 0.5  # Constant by default.
  model = nnx.Sequential(LowRankLinear(8, 8, rank=8, rngs=nnx.Rngs(0), name="a"), nnx.relu,
                         LowRankLinear(8, 4, rank=4, rngs=nnx.Rngs(1), name="b"))
  x = jax.random.normal(jax.random.key(0), (5, 8))
  forward = lambda m, _: (jnp.mean(m(x) ** 2), m(x))
  full = float(forward(model, None)[0])
  reg = float(maestro.penalty(model))
  for step, expected in ((81, full), (30, full + 0.5 * reg)):
    losses = [float(hooks.loss(model, jnp.int32(step), jax.random.key(k), forward)[0]) for k in range(5)]
    if step > 80:
      assert losses == pytest.approx([expected] * 5)  # The kept ranks, whatever the key.
    else:
      assert len(set(losses)) > 1 and expected not in losses  # Sampled ranks.
  assert hooks.metrics(81, model)["lowrank/lambda"] == 0.0
  with pytest.raises(ValueError, match="group_lasso_ramp"):
    lowrank.Maestro(group_lasso_ramp=(5, 2))


def _moments(optimizer: nnx.Optimizer) -> dict[tuple, np.ndarray]:
  """Adam's first and second moments by (mu | nu, layer, factor)."""
  return {(p[2], p[-2], p[-1]): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(optimizer))
          if len(p) > 3 and p[2] in ("mu", "nu") and p[-1] in ("down", "up")}


@pytest.mark.parametrize("conv", [False, True])
def test_a_shrink_keeps_adams_moments_of_the_kept_components(conv):
  """slice_to cuts each factor's moments to the kept components (columns of down, rows of up), unchanged: not the
  other end, not reset."""
  if conv:
    layer = LowRankConv(3, 6, 3, rank=6, rngs=nnx.Rngs(0), name="c")
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  else:
    layer = LowRankLinear(12, 10, rank=10, rngs=nnx.Rngs(0), name="a")
    x = jax.random.normal(jax.random.key(0), (5, 12))
  model = nnx.Sequential(layer)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  for _ in range(2):
    optimizer.update(model, nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(model))
  before = _moments(optimizer)
  k = 4
  maestro.slice_to(model, {layer.name: k}, optimizer)
  after = _moments(optimizer)
  assert after.keys() == before.keys() and len(after) == 4
  for (moment, _, factor), value in before.items():
    kept = value[..., :k] if factor == "down" else value[:k]
    np.testing.assert_array_equal(after[moment, 0, factor], kept)
    assert np.all(kept != 0)


@pytest.mark.parametrize("conv", [False, True])
def test_copy_svd_at_rank_r_is_numpys_truncated_svd_split_by_its_square_root(conv):
  rngs = nnx.Rngs(0)
  if conv:
    dense, lod = nnx.Conv(4, 6, (3, 3), rngs=rngs), LowRankConv(4, 6, 3, rank=3, rngs=rngs, name="c")
  else:
    dense, lod = nnx.Linear(9, 7, rngs=rngs), LowRankLinear(9, 7, rank=3, rngs=rngs, name="a")
  dense.bias[...] = jnp.arange(dense.bias.shape[0], dtype=jnp.float32)
  deploy.copy_svd(nnx.Sequential(dense), nnx.Sequential(lod))
  kernel = np.asarray(dense.kernel[...], np.float64).reshape(-1, dense.kernel.shape[-1])
  p, s, qt = np.linalg.svd(kernel, full_matrices=False)
  down, up = np.asarray(lod.down[...]).reshape(-1, 3), np.asarray(lod.up[...])
  np.testing.assert_allclose(down @ up, (p[:, :3] * s[:3]) @ qt[:3], atol=1e-5)  # The best rank-3 product.
  np.testing.assert_allclose(np.linalg.norm(down, axis=0), np.sqrt(s[:3]), rtol=1e-5)  # √S on each side.
  np.testing.assert_allclose(np.linalg.norm(up, axis=1), np.sqrt(s[:3]), rtol=1e-5)
  np.testing.assert_array_equal(lod.bias[...], dense.bias[...])


def test_distillation_is_ce_full_plus_ce_sampled_against_the_stopped_full_softmax():
  """The distillation loss against a hand computation, and no gradient through the teacher: the gradient equals
  that of CE(full, y) + CE(sampled, fixed targets) with the full pass's softmax held constant."""
  model = nnx.Sequential(LowRankLinear(6, 5, rank=5, rngs=nnx.Rngs(0), name="a"))
  x, y = jax.random.normal(jax.random.key(0), (4, 6)), jnp.array([0, 1, 2, 3])
  hooks = lowrank.Maestro(distill=True, sampler="fixed_ratio", fixed_ratio=0.4)  # Rank 2 of 5, every step.

  def forward(m, soft):
    logits = m(x)
    if soft is None:
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits
    return optax.softmax_cross_entropy(logits, soft).mean(), logits

  loss = float(hooks.loss(model, jnp.int32(1), jax.random.key(0), forward)[0])
  full_logits = np.asarray(model(x), np.float64)
  maestro.set_active_ranks(model, {"a": 2})
  sampled_logits = np.asarray(model(x), np.float64)
  maestro.set_active_ranks(model, None)
  log_softmax = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))
  teacher = np.exp(log_softmax(full_logits))
  expected = -log_softmax(full_logits)[np.arange(4), y].mean() - (teacher * log_softmax(sampled_logits)).sum(-1).mean()
  assert loss == pytest.approx(expected, rel=1e-5)

  def by_hand(m):  # The teacher a constant.
    full = optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
    maestro.set_active_ranks(m, {"a": 2})
    sampled = optax.softmax_cross_entropy(m(x), jnp.asarray(teacher, jnp.float32)).mean()
    maestro.set_active_ranks(m, None)
    return full + sampled

  grads = nnx.grad(lambda m: hooks.loss(m, jnp.int32(1), jax.random.key(0), forward)[0])(model)
  expected_grads = nnx.grad(by_hand)(model)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, expected_grads)


def test_a_batch_norm_resnet_shrinks_and_recalibrates_its_statistics():
  """A low-rank ResNet-18 (BatchNorm) shrunk by Maestro's `slice_to` has fewer parameters; `recalibrate` then sets
  every BatchNorm's statistics to the mean of the batches' own, checked by hand for the stem (a dense convolution)
  and for the first block's BatchNorm (after a shrunk convolution)."""
  import ml_collections

  import models
  from experiment import evaluation, methods
  model = models.build(ml_collections.ConfigDict({"name": "resnet", "depth": 18, "width": 4}),
                       methods.layer_factory({"type": "lowrank", "keep_dense": ("stem",)}, jnp.float32),
                       input_shape=(8, 8, 3), num_classes=10, seed=0)
  count = lambda: sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  full = count()
  maestro.slice_to(model, {name: max(1, rank // 2) for name, rank in maestro.ranks(model).items()})
  assert count() < full and maestro.ranks(model)["stage1/block1/conv1"] == 2

  rng = np.random.default_rng(0)
  batches = [{"inputs": rng.normal(size=(8, 8, 8, 3)).astype(np.float32)} for _ in range(2)]
  assert evaluation.recalibrate(model, batches, put=lambda batch: batch) == 2
  stem = [model.stem.conv(jnp.asarray(b["inputs"])) for b in batches]
  norm = model.stem.norm  # Measuring, each BatchNorm normalizes by the batch's statistics (training mode).
  normalized = [(y - y.mean((0, 1, 2))) / jnp.sqrt(y.var((0, 1, 2)) + norm.epsilon) * norm.scale[...] + norm.bias[...]
                for y in stem]
  block = [model.blocks[0].convs[0].conv(jax.nn.relu(y)) for y in normalized]
  for norm, outputs in ((model.stem.norm, stem), (model.blocks[0].convs[0].norm, block)):
    np.testing.assert_allclose(norm.mean[...], np.mean([y.mean((0, 1, 2)) for y in outputs], 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.var[...], np.mean([y.var((0, 1, 2)) for y in outputs], 0), rtol=1e-4, atol=1e-5)
