"""The accelerator-grade loop: gradient accumulation, the optimizer's weight-decay mask, schedules and parameter
EMA, compile counting, profiling, and the input pipeline's vectorized batches and worker processes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import flags
from flax import nnx

import data
from configs import fmnist_mlp_dense, fmnist_mlp_maestro
from data import fashion_mnist, pipeline
from experiment import build, metrics, sharding
from experiment import methods
from experiment.step import count_compilations, make_train_step
from tests.conftest import assert_one_line_error, main_here, run, saved_state


def _batch(size: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {"inputs": rng.random((size, 28, 28, 1), np.float32), "targets": rng.integers(0, 10, size).astype(np.int32)}


def _steps(config, micro: int, steps: int = 3):
  """`steps` train steps of `config`'s model with `micro` micro-batches: (metrics of each step, final params)."""
  model, mesh = build.model(config), sharding.mesh()
  method = methods.build(config, model)
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  method.restore(model, optimizer, {})
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  state = sharding.place((model_state, opt_state), mesh, "data")
  step = make_train_step(method, config.seed, mesh, accumulate_steps=micro)
  out = []
  for i in range(1, steps + 1):
    state, m = step(model_def, opt_def, state, _batch(32, i), jnp.int32(i))
    out.append({k: float(v) for k, v in m.items()})
  return out, jax.tree.map(np.asarray, nnx.state(nnx.merge(model_def, state[0]), nnx.Param))


@pytest.mark.parametrize("get_config", [fmnist_mlp_dense.get_config, fmnist_mlp_maestro.get_config])
def test_accumulated_micro_batches_make_the_same_update_as_the_whole_batch(get_config):
  config = get_config("smoke")
  config.optimizer.update(warmup_steps=0, name="sgd")  # Adam would blow float rounding of tiny gradients up to ~lr.
  whole, whole_params = _steps(config, 1)
  for micro in (2, 4):
    parts, parts_params = _steps(config, micro)
    for a, b in zip(whole, parts):
      assert a.keys() == b.keys()
      for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), whole_params, parts_params)


def test_weight_decay_hits_only_kernels_unless_told():
  config = fmnist_mlp_dense.get_config("smoke")
  config.optimizer.update(weight_decay=0.5, warmup_steps=0, schedule="constant", grad_clip=0.0)
  params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
  zero = jax.tree.map(jnp.zeros_like, params)
  for name in ("adamw", "sgd"):
    config.optimizer.name = name
    for decay, decayed in (("kernels", {"kernel"}), ("all", {"kernel", "bias", "scale"})):
      config.optimizer.decay = decay
      tx = build.optimizer(config)
      updates, _ = tx.update(zero, tx.init(params), params)
      assert {k for k, u in updates.items() if np.any(u != 0)} == decayed, (name, decay)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "warmup_stable_decay"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
  config = fmnist_mlp_dense.get_config()
  config.num_steps, config.optimizer.warmup_steps, config.optimizer.schedule = 100, 10, schedule
  lr, peak = build.learning_rate(config), config.optimizer.learning_rate
  assert float(lr(0)) == 0 and float(lr(5)) == pytest.approx(peak / 2) and float(lr(10)) == pytest.approx(peak)
  expected = {"cosine": (peak / 2, 0.0), "linear": (peak / 2, 0.0), "constant": (peak, peak),
              "warmup_stable_decay": (peak, 0.0)}[schedule]  # At the middle of the decay phase (step 55), and 100.
  assert float(lr(55)) == pytest.approx(expected[0], abs=1e-9) and float(lr(100)) == pytest.approx(expected[1])
  if schedule == "warmup_stable_decay":  # Stable until the last 20% of the steps, then linear to 0.
    assert float(lr(80)) == pytest.approx(peak) and float(lr(90)) == pytest.approx(peak / 2)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_the_first_update_after_a_model_switch_is_a_fresh_optimizers_at_the_schedules_rate(name):
  """After a switch (Maestro's dense warm-up, Cuttlefish, Pufferfish) the optimizer restarts: its first update
  is a fresh optax optimizer's first update at lr(step), not one whose Adam bias correction reads the step
  reached (which made it 1.99x lr at step 500)."""
  config = fmnist_mlp_dense.get_config("smoke")
  config.num_steps = 1000
  config.optimizer.update(name=name, weight_decay=0.1, grad_clip=0.0, warmup_steps=100, schedule="cosine")
  model = build.model(config)
  params = jax.tree.map(jnp.copy, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # Before the update.
  grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params)
  step = 500
  optimizer = build.optimizer_at(model, config, step, {})
  state_grads = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state_grads, grads)
  optimizer.update(model, state_grads)
  rate = float(build.learning_rate(config)(step))
  decayed = lambda tree: jax.tree.map(lambda p: p.ndim >= 2, tree)
  fresh = (optax.adamw(rate, weight_decay=0.1, mask=decayed) if name == "adamw" else
           optax.chain(optax.add_decayed_weights(0.1, decayed), optax.sgd(rate, momentum=0.9)))
  updates, _ = fresh.update(grads, fresh.init(params), params)
  expected = optax.apply_updates(params, updates)
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), after, expected)
  if name == "adamw":  # Adam's first step moves each weight by at most lr (plus its weight decay).
    moved = jax.tree.map(lambda a, b, p: float(jnp.max(jnp.abs(a - b) - rate * 0.1 * jnp.abs(p))), after, params,
                         params)
    assert max(jax.tree.leaves(moved)) <= rate * 1.001
  assert int(optimizer.step[...]) == step + 1  # The schedule continues from the step reached.


def test_the_ema_of_the_parameters_follows_each_update():
  tx = build.ema_parameters(0.9)
  params = {"w": jnp.array([1.0, 2.0])}
  state = tx.init(params)
  for step in range(3):
    updates = {"w": jnp.array([0.5, -1.0])}
    expected = 0.9 * state.ema["w"] + 0.1 * (params["w"] + updates["w"])
    out, state = tx.update(updates, state, params)
    assert out is updates
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(state.ema["w"], expected, rtol=1e-6)


def test_compilations_are_counted_per_function():
  counts = count_compilations()

  @jax.jit
  def double(x):
    return 2 * x

  double(jnp.ones(3))
  double(jnp.ones(3))
  double(jnp.ones(4))
  assert counts["double"] == 2


@pytest.mark.slow  # Each feature has its own default test; this one runs them together through train.py.
def test_bfloat16_accumulation_ema_and_profile_through_train_py(tmp_path, tiny_data):
  workdir = tmp_path / "run"
  run("train.py", "--config", "configs/fmnist_vit_dense.py:smoke", "--workdir", str(workdir),
      overrides={**tiny_data, "compute_dtype": "bfloat16", "optimizer.accumulate_steps": 2,
                 "optimizer.ema_decay": 0.5, "profile_steps": "3:4"})
  rows = metrics.read(workdir / "metrics.jsonl")
  assert rows[-1]["train/loss"] < rows[1]["train/loss"] and rows[-1]["compiles/train_step"] == 1
  assert {leaf.dtype.name for leaf in saved_state(workdir, 20).values()} <= {"float32", "int32", "uint32"}
  evaluated = [r for r in rows if "eval/accuracy" in r]
  assert len(evaluated) == 2 and all("eval_ema/accuracy" in r and "eval_ema/loss" in r for r in evaluated)
  assert evaluated[-1]["eval_ema/loss"] != evaluated[-1]["eval/loss"]
  assert list((workdir / "profile").rglob("*.xplane.pb")), "no profiler trace"
  main_here("eval.py", "--workdir", str(workdir), "--ema")
  assert json.loads((workdir / "eval.json").read_text())["eval/loss"] == pytest.approx(evaluated[-1]["eval_ema/loss"])
  dense = tmp_path / "dense"  # A run without an EMA: --ema is refused.
  run("train.py", "--config", "configs/fmnist_mlp_dense.py:smoke", "--workdir", str(dense),
      overrides={**tiny_data, "num_steps": 2, "eval_every": 2})
  assert_one_line_error(main_here("eval.py", "--workdir", str(dense), "--ema", check=False), "--ema")


def test_epoch_batches_are_slices_of_per_epoch_permutations():
  batches = pipeline.EpochBatches(10, 4, seed=3)
  stream = np.concatenate([batches[i] for i in range(5)])  # 20 indices: two epochs, batch 2 spans both.
  assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
  assert not np.array_equal(stream[:10], stream[10:])
  np.testing.assert_array_equal(batches[3], pipeline.EpochBatches(10, 4, seed=3)[3])  # Random access, no history.


def test_in_memory_and_read_splits_give_the_same_batches_also_from_worker_processes(tiny_data):
  flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags (train.py parses them).
  fields = {"data_dir": tiny_data["dataset.data_dir"], "idx_dir": tiny_data["dataset.idx_dir"]}
  in_memory = data.Split(fashion_mnist.load("train", **fields), data.DATASETS["fashion_mnist"].collate)
  read = data.Split(fashion_mnist.load("train", **fields), data.DATASETS["fashion_mnist"].collate)
  assert in_memory.in_memory
  read.in_memory = False  # As a split too large for memory.
  iterators = [pipeline.train_iterator(in_memory, 32, seed=1), pipeline.train_iterator(read, 32, seed=1),
               pipeline.train_iterator(read, 32, seed=1, workers=2)]
  for _ in range(10):  # Past an epoch of 256.
    first, *others = [next(it) for it in iterators]
    for other in others:
      for k in first:
        np.testing.assert_array_equal(first[k], other[k])
  state = iterators[2].get_state()
  expected = next(iterators[0])
  resumed = pipeline.train_iterator(read, 32, seed=1, workers=2)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["targets"], expected["targets"])
  for it in (*iterators, resumed):
    it.close()
