"""N:M training through train.py and eval.py, on the tiny data."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparsity
from configs import fmnist_mlp_nm
from experiment import build, metrics, sharding
from experiment.config import ConfigError
from experiment import methods
from sparsity.training import nm_layers
from tests.conftest import assert_one_line_error, assert_same_run, main_here, run, saved_state, snapshot, train_here
from experiment.step import make_train_step

SDGF = "configs/fmnist_mlp_nm.py:smoke,method=sdgf,n=1,m=8"
PHASES = {"nm.sdgf_decay": True, "nm.dense_warmup": 0.2, "nm.finetune": 0.2}  # 20 steps: 4 dense, 12 sparse, 4 fine-tune.


@pytest.fixture(scope="module")
def sdgf_run(tmp_path_factory, tiny_data):
  workdir = tmp_path_factory.mktemp("sdgf") / "run"
  train_here(SDGF, workdir, {**tiny_data, **PHASES, "log_every": 1, "nm.decay_coef": 0.1})
  return workdir


def test_phases_frames_alpha_and_one_compilation_per_frame(sdgf_run):
  rows = {r["step"]: r for r in metrics.read(sdgf_run / "metrics.jsonl") if "nm/n" in r}
  # Row `s` describes update s (logged right after it).
  patterns = [(rows[s]["nm/n"], rows[s]["nm/m"]) for s in range(1, 21)]
  assert patterns[:4] == [(1, 1)] * 4  # Dense warm-up: updates 1-4.
  assert patterns[4:16] == [(7, 8)] * 3 + [(4, 8)] * 3 + [(2, 8)] * 3 + [(1, 8)] * 3  # Frames of 3 updates.
  assert patterns[16:] == [(1, 8)] * 4  # Fine-tune.
  # α of update s: exp(-0.1 t), t = s - 1 - 4, in the sparse phase only (sdgf_decay: MDGF within the frames).
  for s in range(1, 21):
    expected = np.exp(-0.1 * (s - 5)) if 5 <= s <= 16 else 0.0
    assert rows[s]["nm/alpha"] == pytest.approx(expected, rel=1e-5), s
  # One compilation per distinct graph: dense, 4 frames, fine-tune; none within a frame.
  compiles = [rows[s]["compiles/train_step"] for s in range(1, 21)]
  assert compiles == [1] * 4 + [2] * 3 + [3] * 3 + [4] * 3 + [5] * 3 + [6] * 4
  # Sparsity follows the mask in use: 0 while dense, 1 - n/m after.
  assert rows[4]["sparsity/fc1"] == 0
  assert rows[5]["sparsity/fc1"] == pytest.approx(1 - 7 / 8)
  assert rows[8]["sparsity/fc1"] == pytest.approx(1 - 4 / 8)
  assert rows[20]["sparsity/fc2"] == pytest.approx(1 - 1 / 8)
  assert 0 < rows[20]["sparsity/total"] < 7 / 8  # The head and the biases stay dense.
  assert rows[8]["nm/flip_rate"] > 0.2 > rows[20]["nm/flip_rate"]  # The 7:8 -> 4:8 switch flips many entries.
  assert rows[20]["nm/grad_norm_pruned"] > 0 and rows[20]["nm/grad_norm_kept"] > 0
  assert (sdgf_run / "plots" / "sparsity.png").stat().st_size > 0


def test_resume_mid_frame_is_bit_identical(tmp_path, tiny_data):
  overrides = {**tiny_data, **PHASES, "checkpoint_every": 7, "keep_checkpoints": 10, "nm.method": "sdgf"}
  config = "configs/fmnist_mlp_nm.py:smoke,n=1,m=8"
  straight = tmp_path / "straight"
  train_here(config, straight, overrides)
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)  # A kill after the step-7 checkpoint: mid-frame (frame 1 is updates 8-10).
  for step in (14, 20):
    shutil.rmtree(resumed / "checkpoints" / str(step))
  train_here(config, resumed, overrides)
  assert [json.loads(line)["step"] for line in (resumed / "launches.jsonl").read_text().splitlines()] == [0, 7]
  assert any("logged_mask" in k for k in saved_state(straight, 20))
  assert_same_run(straight, resumed, 20)


def test_training_step_is_soft_but_the_saved_state_evaluates_with_the_hard_mask():
  """MDGF at t = 0 trains through W ⊙ (m + 1·(1 − m)) = W, yet the model the step
  returns (what evaluation, checkpoints and export see) has α = 0: W ⊙ m."""
  config = fmnist_mlp_nm.get_config("smoke,method=mdgf,n=1,m=8")
  model = build.model(config)
  method = methods.build(config, model)
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  method.restore(model, optimizer, {})
  mesh = sharding.mesh()
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  rng = np.random.default_rng(0)
  batch = sharding.batch_placer(mesh)({"inputs": rng.random((32, 28, 28, 1), np.float32),
                                    "targets": rng.integers(0, 10, 32).astype(np.int32)})
  step = make_train_step(method, 0, mesh)
  state, _ = step(model_def, opt_def, sharding.place((model_state, opt_state), mesh, "data"), batch, jnp.int32(1))
  trained = nnx.merge(model_def, state[0])
  x = batch["inputs"].reshape(32, -1)
  h = x
  for path, layer in nm_layers(trained):
    assert float(layer.alpha[...]) == 0.0 and layer.sparsity.soft
  for layer in trained.hidden:
    w = layer.kernel[...]
    h = jax.nn.relu(h @ (w * sparsity.nm_mask(w, 1, 8, 0)) + layer.bias[...])
  np.testing.assert_allclose(trained(batch["inputs"]), trained.head(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["coupled", "decoupled"])
def test_decoupled_srste_through_the_train_step_scales_by_the_learning_rate(mode):
  """With λ_w = 1/lr, decoupled SR-STE zeroes every pruned weight of the updated kernel in one step; coupled
  SR-STE under AdamW leaves them nonzero. nm/pruned_weight_norm reports which."""
  lr = 0.01
  config = fmnist_mlp_nm.get_config(f"smoke,method=srste,n=1,m=8,nm.srste_mode={mode},nm.srste_decay={1 / lr}")
  config.optimizer.update(warmup_steps=0, schedule="constant", learning_rate=lr)
  model = build.model(config)
  method = methods.build(config, model)
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  method.restore(model, optimizer, {})
  mesh = sharding.mesh()
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  rng = np.random.default_rng(0)
  batch = sharding.batch_placer(mesh)({"inputs": rng.random((32, 28, 28, 1), np.float32),
                                    "targets": rng.integers(0, 10, 32).astype(np.int32)})
  if mode == "decoupled":
    with pytest.raises(ValueError, match="learning_rate"):
      make_train_step(method, 0, mesh)
  step = make_train_step(method, 0, mesh, learning_rate=build.learning_rate(config))
  state, _ = step(model_def, opt_def, sharding.place((model_state, opt_state), mesh, "data"), batch, jnp.int32(1))
  trained = nnx.merge(model_def, state[0])
  for _, layer in nm_layers(trained):
    w = np.asarray(layer.kernel[...])
    pruned = w[~np.asarray(sparsity.nm_mask(w, 1, 8, 0))]
    assert np.all(w[np.asarray(sparsity.nm_mask(w, 1, 8, 0))] != 0)
    assert np.all(pruned == 0) if mode == "decoupled" else np.all(pruned != 0)
  logged = method.metrics(1, trained)
  assert logged["nm/kept_weight_norm"] > 0
  assert (logged["nm/pruned_weight_norm"] == 0) == (mode == "decoupled")


@pytest.mark.parametrize("arg,coef", [("method=mdgf", 5 / 20), ("method=mdgf,decay=linear", 2 / 20),
                                      ("method=mdgf,warmup=0.2", 5 / 16), ("method=mdgf,k=0.01", 0.01)])
def test_decay_coefficient_follows_the_sparse_phase_unless_given(arg, coef):
  config = fmnist_mlp_nm.get_config(f"smoke,{arg}")
  assert methods.build(config, build.model(config)).decay_coef == pytest.approx(coef)


def test_export_packs_and_evaluates_standalone(tmp_path, tiny_data):
  workdir, export = tmp_path / "run", tmp_path / "export"
  train_here("configs/fmnist_mlp_nm.py:smoke,method=srste,n=2,m=4", workdir, tiny_data)
  out = main_here("eval.py", "--workdir", str(workdir), f"--export={export}")
  first = metrics.read(workdir / "metrics.jsonl")[1]
  assert 0 < first["nm/flip_rate"] < 0.25  # Changes since the initial mask (not since an all-dense one: 0.5).
  report = json.loads((workdir / "eval.json").read_text())
  sizes = report["export"]["bytes"]
  # fc1 (784 x 64) and fc2 (64 x 64) at 2:4: half the fp32 values plus a byte per kept entry.
  assert sizes["nm_kernels_dense"] == 4 * (784 + 64) * 64
  assert sizes["nm_kernels_packed"] == (784 + 64) * 64 // 2 * 5
  assert "N:M kernels (bytes)" in out.stdout
  main_here("eval.py", f"--exported={export}")
  standalone = json.loads((export / "eval.json").read_text())
  assert standalone["eval/accuracy"] == pytest.approx(report["eval/accuracy"], abs=1e-6)
  assert report["eval/accuracy"] == pytest.approx(metrics.read(workdir / "metrics.jsonl")[-1]["eval/accuracy"], abs=1e-6)

  # A checkpoint the config no longer describes (here: the same run read as dense) is one clear line.
  config = json.loads((workdir / "config.json").read_text())
  (workdir / "config.json").write_text(json.dumps({**config, "layers": {"type": "dense", "keep_dense": []}}))
  assert_one_line_error(main_here("eval.py", "--workdir", str(workdir), check=False), "does not match the model")


@pytest.mark.slow  # A baseline; its mask is unit-tested in test_sparsity.
def test_unstructured_baseline_has_the_same_density(tmp_path, tiny_data):
  workdir = tmp_path / "run"
  run("train.py", "--config", "configs/fmnist_mlp_nm.py:smoke,method=unstructured,n=1,m=8", "--workdir", str(workdir),
      overrides=tiny_data)
  last = metrics.read(workdir / "metrics.jsonl")[-1]
  assert last["sparsity/fc1"] == pytest.approx(7 / 8, abs=1e-6) and last["sparsity/fc2"] == pytest.approx(7 / 8, abs=1e-6)


BAD = {
    "unknown method": ({"nm.method": "magic"}, "config.nm.method"),
    "unknown decay": ({"nm.decay": "cosine"}, "config.nm.decay"),
    "phases leave no sparse phase": ({"nm.dense_warmup": 0.6, "nm.finetune": 0.5}, "config.nm.dense_warmup"),
    "M does not divide a layer": ({"layers.m": 24, "layers.n": 1}, "config.layers"),
    "SDGF frame does not divide a layer": ({"nm.method": "sdgf", "nm.structure": "geometric", "layers.n": 1,
                                            "layers.m": 8}, "config.nm.structure"),
    "N > M": ({"layers.n": 5, "layers.m": 4}, "config.layers"),
}


def test_bad_config_argument(existing_workdir):
  result = run("train.py", "--config", "configs/fmnist_vit_nm.py:ffn_only=yes", "--workdir", str(existing_workdir),
               check=False)
  assert_one_line_error(result, "ffn_only='yes': must be true or false")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_nm_config(case, tiny_data, existing_workdir):
  """train.train in this process: the ConfigError the command line prints as its one line (tests/test_bad_input.py)."""
  overrides, field = BAD[case]
  before = snapshot(existing_workdir)
  with pytest.raises(ConfigError) as error:
    train_here("configs/fmnist_mlp_nm.py:smoke", existing_workdir, {**tiny_data, **overrides})
  assert field in str(error.value) and "\n" not in str(error.value), str(error.value)
  assert snapshot(existing_workdir) == before
