"""N:M masks, schedules, gradient rules, layers and packing against docs/nm_sparsity.md."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparsity
from sparsity.layers import NMConv, NMLinear, Sparsity

PATTERNS = [(1, 2), (2, 4), (1, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8), (1, 16), (15, 16), (1, 32), (8, 64)]


@pytest.mark.parametrize("n,m", PATTERNS)
def test_exactly_n_kept_per_group_and_they_are_the_largest(n, m):
  rng = np.random.default_rng(n * 100 + m)
  for shape, axis in (((2 * m, 3), 0), ((3, 3, m, 5), 2), ((4 * m, 7), 0), ((5, 3 * m), 1)):
    w = rng.normal(size=shape).astype(np.float32)
    mask = np.asarray(sparsity.nm_mask(w, n, m, axis))
    groups = np.moveaxis(mask, axis, -1).reshape(-1, m)
    np.testing.assert_array_equal(groups.sum(-1), n)
    mags = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
    kept_min = np.where(groups, mags, np.inf).min(-1)
    pruned_max = np.where(groups, -np.inf, mags).max(-1)
    assert np.all(kept_min >= pruned_max)


def test_groups_are_consecutive_entries_along_the_axis():
  w = np.zeros((8, 2), np.float32)
  w[[1, 6], 0] = 5.0  # One large entry in each group of 4 along axis 0 of column 0.
  w[[2, 3], 1] = 5.0  # Both in the first group of column 1.
  mask = np.asarray(sparsity.nm_mask(w, 1, 4, 0))
  assert mask[:, 0].tolist() == [False, True, False, False, False, False, True, False]
  assert mask[:4, 1].tolist() == [False, False, True, False]  # Tie: the lower index wins.


def test_ties_keep_the_lower_index_deterministically():
  w = jnp.ones((16, 3))
  mask = np.asarray(sparsity.nm_mask(w, 2, 8, 0))
  expected = np.tile(np.array([1, 1, 0, 0, 0, 0, 0, 0], bool), 2)
  for col in range(3):
    np.testing.assert_array_equal(mask[:, col], expected)
  np.testing.assert_array_equal(mask, np.asarray(jax.jit(sparsity.nm_mask, static_argnums=(1, 2, 3))(w, 2, 8, 0)))
  signed = jnp.array([[-2.0], [2.0], [1.0], [-1.0]])  # |−2| = |2|: the first one.
  assert np.asarray(sparsity.nm_mask(signed, 1, 4, 0))[:, 0].tolist() == [True, False, False, False]


@pytest.mark.parametrize("n,m", PATTERNS + [(16, 32)])  # Rounds of argmax, pairwise ranks, top_k: one answer.
def test_every_mask_algorithm_matches_a_stable_sort_with_ties(n, m):
  rng = np.random.default_rng(m * 7 + n)
  for shape, axis in (((4 * m, 6), 0), ((3, 3, 2 * m, 5), 2)):
    w = rng.integers(-3, 4, size=shape).astype(np.float32)  # Many ties, signs.
    groups = np.moveaxis(np.abs(w), axis, -1).reshape(-1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")[:, :n]  # Largest first, the lower index on ties.
    expected = np.zeros(groups.shape, bool)
    np.put_along_axis(expected, order, True, axis=-1)
    moved = np.moveaxis(np.abs(w), axis, -1).shape
    expected = np.moveaxis(expected.reshape(moved), -1, axis)
    np.testing.assert_array_equal(np.asarray(sparsity.nm_mask(w, n, m, axis)), expected)


def test_grouped_axis_must_be_divisible_by_m():
  with pytest.raises(ValueError, match="not divisible by M=8"):
    sparsity.nm_mask(jnp.ones((12, 4)), 1, 8, 0)
  with pytest.raises(ValueError, match="not divisible by M=8"):
    NMLinear(12, 4, n=1, m=8, rngs=nnx.Rngs(0), name="fc")
  with pytest.raises(ValueError, match="not divisible by M=4"):
    NMConv(6, 8, 3, n=2, m=4, rngs=nnx.Rngs(0), name="conv")


def test_unstructured_mask_keeps_the_largest_at_the_density():
  w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
  mask = np.asarray(sparsity.unstructured_mask(w, 1 / 8))
  assert mask.sum() == 64 * 32 // 8
  assert np.abs(w[mask]).min() >= np.abs(w[~mask]).max()
  ties = np.asarray(sparsity.unstructured_mask(jnp.ones((8, 8)), 1 / 4)).reshape(-1)
  assert ties.tolist() == [True] * 16 + [False] * 48  # Ties: the lowest indices.


def _linear(n=2, m=4, **sparsity_kwargs):
  layer = NMLinear(8, 3, n=n, m=m, rngs=nnx.Rngs(0), name="fc")
  layer.bias[...] = jnp.array([0.5, -1.0, 2.0])
  layer.sparsity = Sparsity((n, m), **sparsity_kwargs)
  return layer


def _kernel_grad(layer, x, alpha=0.0):
  def loss(layer):
    layer.alpha[...] = jnp.asarray(alpha)
    return jnp.sum(layer(x) ** 2)
  return nnx.grad(loss)(layer)["kernel"][...]


X = jax.random.normal(jax.random.key(1), (5, 8))


def test_forward_uses_the_hard_mask_and_the_bias():
  layer = _linear()
  w = layer.kernel[...]
  mask = sparsity.nm_mask(w, 2, 4, 0)
  np.testing.assert_allclose(layer(X), X @ (w * mask) + layer.bias[...], rtol=1e-6)
  assert not np.allclose(layer(X), X @ (w * mask))  # The bias is used.


def test_ste_gradient_is_the_masked_kernels_gradient_unmasked():
  layer = _linear(grad="ste")
  w, b = layer.kernel[...], layer.bias[...]
  masked = w * sparsity.nm_mask(w, 2, 4, 0)
  expected = jax.grad(lambda v: jnp.sum((X @ v + b) ** 2))(masked)
  np.testing.assert_allclose(_kernel_grad(layer, X), expected, rtol=1e-5)
  assert np.all(np.asarray(expected)[~np.asarray(sparsity.nm_mask(w, 2, 4, 0))] != 0)  # Pruned weights get gradient.


@pytest.mark.parametrize("reads", [1, 3])
def test_srste_gradient_adds_decay_times_pruned_weights_once_per_step(reads):
  """However often the loss reads the kernel (Maestro's distillation and penalty read low-rank N:M factors up to
  three times), λ_w·(1 − m)⊙W is added once."""
  lam = 0.3
  layer = _linear()
  training = sparsity.NMTraining(layer, num_steps=10, method="srste", srste_decay=lam)
  training.restore(layer, None, {})
  w, b = layer.kernel[...], layer.bias[...]
  mask = sparsity.nm_mask(w, 2, 4, 0)
  g = jax.grad(lambda v: jnp.sum((X @ v + b) ** 2))(w * mask)
  forward = lambda model, _: (sum(jnp.sum((model(X)) ** 2) for _ in range(reads)) / reads, None)
  grads = nnx.grad(lambda model: training.loss(model, jnp.int32(1), None, forward)[0])(layer)
  np.testing.assert_allclose(grads.kernel[...], g + lam * (1 - mask) * w, rtol=1e-5)


def test_decoupled_srste_leaves_the_gradient_alone_and_shrinks_pruned_weights_after_the_update():
  """Decoupled SR-STE: no term in the gradient (which an adaptive optimizer would normalize away); after the
  update, W ← W − lr·λ_w·(1 − m)⊙W, kept weights untouched."""
  lam, lr = 0.3, 0.5
  layer = _linear()
  training = sparsity.NMTraining(layer, num_steps=10, method="srste", srste_decay=lam, srste_mode="decoupled")
  training.restore(layer, None, {})
  assert training.updates_after
  w, b = layer.kernel[...], layer.bias[...]
  mask = sparsity.nm_mask(w, 2, 4, 0)
  forward = lambda model, _: (jnp.sum(model(X) ** 2), None)
  grads = nnx.grad(lambda model: training.loss(model, jnp.int32(1), None, forward)[0])(layer)
  np.testing.assert_allclose(grads.kernel[...], jax.grad(lambda v: jnp.sum((X @ v + b) ** 2))(w * mask), rtol=1e-5)
  training.after_update(layer, jnp.int32(1), jnp.float32(lr))
  np.testing.assert_allclose(layer.kernel[...], jnp.where(mask, w, (1 - lr * lam) * w), rtol=1e-6)
  assert not sparsity.NMTraining(_linear(), num_steps=10, method="srste").updates_after  # coupled (the paper's)
  with pytest.raises(ValueError, match="srste_mode"):
    sparsity.NMTraining(_linear(), num_steps=10, method="srste", srste_mode="both")


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mdgf_effective_weight_and_ste_backward(alpha):
  layer = _linear(soft=True)
  w, b = layer.kernel[...], layer.bias[...]
  mask = sparsity.nm_mask(w, 2, 4, 0)
  effective = w * (mask + alpha * (1 - mask))

  def out(layer):
    layer.alpha[...] = jnp.asarray(alpha)
    return layer(X)
  np.testing.assert_allclose(out(layer), X @ effective + b, rtol=1e-6)
  g = jax.grad(lambda v: jnp.sum((X @ v + b) ** 2))(effective)
  np.testing.assert_allclose(_kernel_grad(layer, X, alpha), g, rtol=1e-5)  # STE: unscaled.
  autodiff = _linear(soft=True, grad="autodiff")
  np.testing.assert_allclose(_kernel_grad(autodiff, X, alpha), g * (mask + alpha * (1 - mask)), rtol=1e-5, atol=1e-7)


def test_mask_decay_formulas():
  for t, k in itertools.product([0, 1, 10, 500, 2000], [1e-4, 2e-3, 8e-4]):
    assert float(sparsity.mask_decay(t, "linear", k)) == pytest.approx(max(1 - k * t, 0.0), abs=1e-6)
    assert float(sparsity.mask_decay(t, "exp", k)) == pytest.approx(np.exp(-k * t), rel=1e-5)
  assert float(jax.jit(lambda t: sparsity.mask_decay(t, "exp", 0.01))(jnp.int32(100))) == pytest.approx(np.exp(-1.0), rel=1e-5)
  with pytest.raises(ValueError, match="cosine"):
    sparsity.mask_decay(0, "cosine", 0.1)


@pytest.mark.parametrize("n,m,kind,expected", [
    (1, 8, "stepwise", [(7, 8), (4, 8), (2, 8), (1, 8)]),
    (1, 16, "stepwise", [(15, 16), (8, 16), (4, 16), (2, 16), (1, 16)]),
    (1, 32, "stepwise", [(31, 32), (16, 32), (8, 32), (4, 32), (2, 32), (1, 32)]),
    (1, 8, "geometric", [(8, 64), (4, 32), (2, 16), (1, 8)]),
    (1, 16, "geometric", [(8, 128), (4, 64), (2, 32), (1, 16)]),
    (1, 32, "geometric", [(8, 256), (4, 128), (2, 64), (1, 32)]),
    (1, 8, "densify", [(1, 64), (1, 32), (1, 16), (1, 8)]),
    (1, 16, "densify", [(1, 128), (1, 64), (1, 32), (1, 16)]),
    (1, 32, "densify", [(1, 256), (1, 128), (1, 64), (1, 32)]),
    (2, 8, "stepwise", [(7, 8), (4, 8), (2, 8)]),
])
def test_structure_decay_frames(n, m, kind, expected):
  frames = sparsity.structure_decay_frames(n, m, kind, 1200)
  assert [(a, b) for _, a, b in frames] == expected
  assert [s for s, _, _ in frames] == [i * 1200 // len(expected) for i in range(len(expected))]  # Equal slices.


def test_structure_decay_rejects_what_it_cannot_schedule():
  with pytest.raises(ValueError, match="power of two"):
    sparsity.structure_decay_frames(3, 8, "stepwise", 100)
  with pytest.raises(ValueError, match="unknown"):
    sparsity.structure_decay_frames(1, 8, "cubic", 100)


@pytest.mark.parametrize("n,m,axis,shape", [(2, 4, 0, (16, 6)), (1, 8, 0, (64, 5)), (1, 16, 2, (3, 3, 32, 4)),
                                            (8, 64, 0, (128, 3)), (3, 4, 1, (5, 8))])
def test_pack_unpack_round_trip_is_exact(n, m, axis, shape):
  w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  w[0] = 0.0  # Zeros and ties are packed like any value.
  values, indices = sparsity.pack(w, n, m, axis)
  assert indices.dtype == np.uint8 and values.size == w.size * n // m
  assert values.nbytes + indices.nbytes == w.nbytes * n // m * 5 // 4  # fp32 values + one byte per kept entry.
  back = sparsity.unpack(values, indices, m, axis, shape)
  np.testing.assert_array_equal(back, w * np.asarray(sparsity.nm_mask(w, n, m, axis)))


def test_layer_groups_choose_their_own_pattern_and_kept_layers_stay_dense():
  import models
  from experiment import methods
  layers = dict(type="nm", keep_dense=("patch_embed", "head"), n=2, m=4, patterns={"block*/attn/*": "1:8"})
  vit = models.build(dict(name="vit", patch=7, dim=32, depth=2, num_heads=2, mlp_dim=64),
                     methods.layer_factory(layers, jnp.float32), input_shape=(28, 28, 1), num_classes=10, seed=0)
  targets = {m.name: m.target for _, m in nnx.iter_graph(vit) if isinstance(m, NMLinear)}
  assert targets["block0/attn/query"] == targets["block1/attn/out"] == (1, 8)
  assert targets["block0/mlp/fc1"] == targets["block1/mlp/fc2"] == (2, 4)
  assert len(targets) == 12 and isinstance(vit.head, nnx.Linear) and isinstance(vit.patch_embed, nnx.Linear)
  with pytest.raises(ValueError, match="must look like '1:8'"):
    models.build(dict(name="mlp", hidden=(64,)), methods.layer_factory({**layers, "patterns": {"fc1": "half"}},
                                                                     jnp.float32), input_shape=(28, 28, 1),
                 num_classes=10, seed=0)


def test_conv_groups_input_channels_and_uses_the_hard_mask_and_bias():
  conv = NMConv(8, 4, 3, n=1, m=4, rngs=nnx.Rngs(0), strides=2, name="conv")
  conv.bias[...] = jnp.arange(4.0)
  x = jax.random.normal(jax.random.key(2), (2, 6, 6, 8))
  kernel = conv.kernel[...]
  mask = sparsity.nm_mask(kernel, 1, 4, 2)
  assert np.all(np.asarray(mask).reshape(3, 3, 2, 4, 4).sum(axis=3) == 1)  # One of every 4 input channels.
  expected = jax.lax.conv_general_dilated(x, kernel * mask, (2, 2), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv.bias[...]
  np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-6)


def test_forward_macs_and_the_flops_n_m_hardware_saves():
  """MACs of each N:M layer in one forward pass; the saving counts binary-mask updates only (not the dense warm-up,
  not MDGF's soft mask), at 1 − N/M of 2·MACs."""
  model = nnx.Sequential(NMLinear(8, 16, n=1, m=8, rngs=nnx.Rngs(0), name="a"), jax.nn.relu,
                         NMLinear(16, 4, n=1, m=8, rngs=nnx.Rngs(1), name="b"))
  inputs = jax.ShapeDtypeStruct((5, 3, 8), jnp.float32)  # 15 rows.
  assert sparsity.layers.forward_macs(model, inputs) == {"a": 15 * 8 * 16, "b": 15 * 16 * 4}
  per_update = 2 * (1 - 1 / 8) * 15 * (8 * 16 + 16 * 4)
  ste = sparsity.NMTraining(model, num_steps=10, method="ste", dense_warmup=0.2, inputs=inputs)
  assert [ste.forward_flops_saved(t, model) for t in (2, 5, 10)] == pytest.approx([0, 3 * per_update, 8 * per_update])
  mdgf = sparsity.NMTraining(model, num_steps=10, method="mdgf", dense_warmup=0.2, finetune=0.3, inputs=inputs)
  assert [mdgf.forward_flops_saved(t, model) for t in (7, 10)] == pytest.approx([0, 3 * per_update])
  assert "nm/forward_flops_saved" not in sparsity.NMTraining(model, num_steps=10).metrics(1, model)  # No inputs.


def test_a_mask_after_a_dense_warmup_counts_its_flips_from_its_first_mask():
  """The dense phase logs an all-kept mask; the first mask after it is not 1 − N/M of the entries flipped (which
  would dominate the run's flip rate), but the start the flips are counted from, as at a fresh start."""
  layer = _linear()
  training = sparsity.NMTraining(layer, num_steps=10, method="ste", dense_warmup=0.2)
  training.restore(layer, None, {})
  assert np.all(layer.logged_mask[...]) and training.host_update_due(2)
  training.host_update(2, layer, None)
  np.testing.assert_array_equal(layer.logged_mask[...], sparsity.nm_mask(layer.kernel[...], 2, 4, 0))
