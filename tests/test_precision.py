"""Mixed precision (`config.compute_dtype`): float32 parameters, gradients and logits; every layer type
computing in bfloat16; N:M masks from the float32 kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import models
import sparsity
from configs import fmnist_mlp_dense
from experiment import build
from experiment.config import ConfigError
from experiment import methods
from tests.conftest import saved_state, train_here

BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


def relative_error(actual: jax.Array, expected: jax.Array) -> float:
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def param_dtypes(module: nnx.Module) -> set:
  return {x.dtype for x in jax.tree.leaves(nnx.state(module, nnx.Param))}


def grad_dtypes(loss, module: nnx.Module) -> set:
  """The dtypes of the gradient of `loss(module)` w.r.t. its parameters (traced, not run)."""
  grads = nnx.eval_shape(lambda m: nnx.grad(loss)(m), module)
  assert len(jax.tree.leaves(grads)) == len(jax.tree.leaves(nnx.state(module, nnx.Param)))
  return {g.dtype for g in jax.tree.leaves(grads)}


def matmul_operand_dtypes(fn, *args) -> set:
  """The dtypes of every operand of every matmul and convolution `fn` runs, sub-computations included."""
  def eqns(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          sub = getattr(sub, "jaxpr", sub)  # A ClosedJaxpr's Jaxpr.
          if hasattr(sub, "eqns"):
            yield from eqns(sub)
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return {v.aval.dtype for e in eqns(jaxpr) if e.primitive.name in ("dot_general", "conv_general_dilated")
          for v in e.invars}


def make_layer(kind: str, shape: str, dtype) -> nnx.Module:
  layers = methods.layer_factory({"type": kind}, dtype)
  if shape == "linear":
    return layers.linear("layer", 8, 12, rngs=nnx.Rngs(0))
  return layers.conv("layer", 8, 12, 3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("shape", ["linear", "conv"])
@pytest.mark.parametrize("kind", ["dense", "lowrank", "nm"])
def test_layers_keep_float32_params_and_compute_in_bfloat16(kind, shape):
  low, full = make_layer(kind, shape, jnp.bfloat16), make_layer(kind, shape, jnp.float32)
  x = jax.random.normal(jax.random.key(1), (4, 8) if shape == "linear" else (2, 6, 6, 8))
  assert param_dtypes(low) == {F32}
  y = low(x)
  assert y.dtype == BF16 and full(x).dtype == F32
  assert matmul_operand_dtypes(lambda x: low(x), x) == {BF16}
  assert relative_error(y, full(x)) < 2e-2
  assert grad_dtypes(lambda layer: jnp.sum(layer(x).astype(jnp.float32) ** 2), low) == {F32}


def tie_breaking_kernel(shape: tuple[int, ...], axis: int) -> jax.Array:
  """Groups of 4 along `axis` whose 2nd and 3rd largest |w| (1 and 1 + 2^-10) are one value in bfloat16: a 2:4
  mask of the float32 kernel keeps entries 0 and 2, one of the rounded kernel entries 0 and 1."""
  pattern = jnp.array([2.0, 1.0, 1.0 + 2**-10, 0.25])
  reps = [1] * len(shape)
  reps[axis] = shape[axis] // 4
  groups = jnp.tile(pattern.reshape([4 if a == axis else 1 for a in range(len(shape))]), reps)
  signs = jnp.where(jax.random.bernoulli(jax.random.key(3), 0.5, shape), 1.0, -1.0)
  return jnp.broadcast_to(groups, shape) * signs


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("shape", ["linear", "conv"])
def test_nm_masks_come_from_the_float32_kernel(shape, soft):
  make = lambda dtype: (methods.layer_factory({"type": "nm"}, dtype).linear("layer", 8, 4, rngs=nnx.Rngs(0))
                        if shape == "linear" else
                        methods.layer_factory({"type": "nm"}, dtype).conv("layer", 8, 4, 1, rngs=nnx.Rngs(0)))
  low, full = make(jnp.bfloat16), make(jnp.float32)
  axis = low.axis
  kernel = tie_breaking_kernel(low.kernel.shape, axis)
  eye = jnp.eye(8, dtype=jnp.bfloat16)  # One-hot inputs: the output is the kernel the forward pass used.
  x = eye if shape == "linear" else eye.reshape(8, 1, 1, 8)
  for layer in (low, full):
    layer.kernel[...] = kernel
    layer.sparsity = sparsity.Sparsity((2, 4), soft=soft)
    layer.alpha[...] = jnp.asarray(0.5 if soft else 0.0)
  np.testing.assert_array_equal(low.hard_mask(low.kernel[...]), full.hard_mask(full.kernel[...]))
  mask = sparsity.nm_mask(kernel, 2, 4, axis)
  assert not np.array_equal(mask, sparsity.nm_mask(kernel.astype(jnp.bfloat16), 2, 4, axis))  # The test can fail.
  used = kernel * (mask + (0.5 if soft else 0.0) * (1 - mask))
  np.testing.assert_array_equal(low(x).reshape(8, 4), used.reshape(8, 4).astype(jnp.bfloat16))
  np.testing.assert_array_equal(full(x.astype(jnp.float32)).reshape(8, 4), used.reshape(8, 4))


MODELS = {"mlp": dict(hidden=(32,)), "cnn": dict(channels=(8, 16), hidden=32, groups=4),
          "vit": dict(patch=7, dim=32, depth=1, num_heads=2, mlp_dim=64),
          "lm": dict(dim=32, depth=1, num_heads=2, mlp_dim=64)}
LAYERS = {"dense": dict(type="dense"), "lowrank": dict(type="lowrank", rank_ratio=0.5),
          "nm": dict(type="nm", keep_dense=("conv1", "patch_embed"))}  # Layers with 1 or 49 inputs stay dense.


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_bfloat16_models_have_float32_params_gradients_and_logits(name, kind):
  shape, classes = ((16,), 12) if name == "lm" else ((28, 28, 1), 10)
  low, full = (models.build(dict(name=name, **MODELS[name]), methods.layer_factory(LAYERS[kind], dtype),
                            input_shape=shape, num_classes=classes, seed=0) for dtype in (jnp.bfloat16, jnp.float32))
  key = jax.random.key(1)
  x = jax.random.randint(key, (2, 16), 0, classes) if name == "lm" else jax.random.uniform(key, (2, 28, 28, 1))
  labels = x if name == "lm" else jnp.array([3, 7])
  assert param_dtypes(low) == {F32}
  forward = nnx.jit(lambda model, x: model(x))
  logits = forward(low, x)
  assert logits.dtype == F32 and relative_error(logits, forward(full, x)) < 5e-2
  assert matmul_operand_dtypes(lambda x: low(x), x) == {BF16}  # Every projection, attention and embedding.
  assert grad_dtypes(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean(), low) == {F32}


def test_compute_dtype_is_checked_and_reaches_the_model():
  config = fmnist_mlp_dense.get_config("smoke")
  config.model.hidden = (32,)
  config.compute_dtype = "float16"
  with pytest.raises(ConfigError, match=r"config\.compute_dtype.*'float16' is unknown"):
    build.check(config)
  config.compute_dtype = "bfloat16"
  build.check(config)
  model = build.model(config)
  assert model.head.dtype == BF16 and param_dtypes(model) == {F32}
  assert model(jnp.zeros((2, 28, 28, 1))).dtype == F32


def test_a_bfloat16_run_trains_and_saves_float32_state(tiny_data, tmp_path):
  """Through train.train (the command line's run): Maestro's low-rank layers computing in bfloat16 learn the task,
  and the checkpoint holds float32 parameters and optimizer moments."""
  workdir = tmp_path / "run"
  final = train_here("configs/fmnist_mlp_maestro.py:smoke", workdir, {**tiny_data, "compute_dtype": "bfloat16"})
  assert final["step"] == 20 and np.isfinite(final["train/loss"]) and final["eval/accuracy"] > 0.5
  state = saved_state(workdir, 20)
  floats = {path: leaf.dtype for path, leaf in state.items() if np.issubdtype(leaf.dtype, np.floating)}
  assert any("['mu']" in path for path in floats) and set(floats.values()) == {np.dtype(np.float32)}
