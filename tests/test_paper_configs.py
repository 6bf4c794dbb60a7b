"""The papers' configs (configs/cifar10_*, configs/imagenet_*) on TFDS's mock data of their real datasets, through
train.py: each `:smoke` trains and logs validation and test metrics; a BatchNorm model resumes bit-identically
across a Maestro shrink, whose BatchNorm statistics are recomputed on the first training batches (and, in eval.py,
for each rank cut)."""

import json
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

import data
import eval as eval_lib
import tests.mock_tfds  # noqa: F401 - its patch of TFDS's mock, for the in-process mock here.
from experiment import build, evaluation, metrics, sharding
from experiment import config as config_lib
from tests.conftest import assert_same_run, run, saved_state

SHORT = {"batch_size": 8, "eval_batch_size": 8, "num_steps": 8, "log_every": 4, "eval_every": 4,
         "checkpoint_every": 4, "dataset.eval_limit": 16}


def mock_train(config: str, workdir, overrides: dict, examples: int = 32):
  return run("tests/mock_tfds.py", str(examples), "train.py", "--config", config, "--workdir", str(workdir),
             overrides=overrides)


@pytest.mark.parametrize("name", [  # The CNNs (BatchNorm: the slow resume test below; the layers and the
    # dense warm-up's switch of ResNet-50: tests/test_models.py): slow.
    pytest.param("cifar10_resnet18_maestro", marks=pytest.mark.slow),
    pytest.param("cifar10_vgg19_maestro", marks=pytest.mark.slow),
    pytest.param("imagenet_resnet50_maestro", marks=pytest.mark.slow), "imagenet_vit_b16_nm"])
def test_each_paper_config_smoke_trains_on_its_dataset_with_validation_and_test_metrics(name, tmp_path):
  mock_train(f"configs/{name}.py:smoke", tmp_path / name, SHORT)
  last = metrics.read(tmp_path / name / "metrics.jsonl")[-1]
  assert last["step"] == 8 and {"val/accuracy", "val/loss", "eval/accuracy", "eval/loss"} <= set(last)
  assert np.isfinite(last["train/loss"])


SHRINKING = {**SHORT, "num_steps": 12, "lowrank.shrink_every": 6, "lowrank.shrink_eps": 0.3, "keep_checkpoints": 5,
             "checkpoint_every": 3, "recalibrate_batches": 2, "model.norm": "batch"}  # The config's default: GroupNorm.


@pytest.mark.slow  # Two ResNet-18 runs and a resumed one: two minutes on 2 CPU cores.
def test_a_batch_norm_model_recalibrates_after_a_shrink_and_resumes_bit_identically(tmp_path):
  config = "configs/cifar10_resnet18_maestro.py:smoke"
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  mock_train(config, straight, SHRINKING)
  rows = metrics.read(straight / "metrics.jsonl")
  assert rows[-1]["params/effective"] < rows[0]["params/total"]  # The shrink at step 6 removed components.
  state = saved_state(straight, 6)
  statistics = [k for k in state if "['norm']['mean']" in k or "['norm']['var']" in k]
  assert len(statistics) == 2 * 20  # Every BatchNorm's mean and variance is in the checkpoint.

  with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
    mesh = sharding.mesh()
    model, config_dict, step = eval_lib.restore(straight, 6, mesh)  # Saved after the shrink and its recalibration.
    train = build.datasets(config_dict).train
    saved = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    stale = jax.tree.map(np.asarray, nnx.state(eval_lib.restore(straight, 3, mesh)[0], nnx.BatchStat))
    assert evaluation.recalibrate(model, data.eval_batches(train, 8, 16), sharding.batch_placer(mesh, whole=True)) == 2
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(nnx.state(model, nnx.BatchStat))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # = the statistics of the first 2 training batches.
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(stale)))

  cut = run("tests/mock_tfds.py", "32", "eval.py", "--workdir", str(straight), "--rank_fractions=1,0.5")
  assert "BatchNorm statistics of each cut recomputed on 2 training batches of 8" in cut.stdout
  sweep = json.loads((straight / "eval.json").read_text())["rank_sweep"]
  assert [r["rank_fraction"] for r in sweep] == [1.0, 0.5] and sweep[1]["params"] < sweep[0]["params"]

  shutil.copytree(straight, resumed)
  for step in (9, 12):  # As if killed after the step-6 checkpoint, and again across the shrink:
    shutil.rmtree(resumed / "checkpoints" / str(step))
  assert "Resumed from step 6" in mock_train(config, resumed, SHRINKING).stderr
  assert_same_run(straight, resumed, 12)


@pytest.mark.parametrize("name, examples, steps", [
    ("imagenet_resnet50_maestro", 12_800, {"num_steps": 4500, "eval_every": 50, "checkpoint_every": 50,
                                           "lowrank.shrink_every": 50, "lowrank.dense_warmup_steps": 50}),
    ("imagenet_vit_b16_nm", 2_560, {"num_steps": 3500, "eval_every": 50, "optimizer.warmup_steps": 150}),
])
def test_paper_configs_count_epochs_of_the_train_split_they_read(name, examples, steps):
  """Converted from the train split's size at the start of a run (train.py); a schedule of an unconverted config
  is refused, not silently one step long."""
  config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
  build.check(config)
  with pytest.raises(config_lib.ConfigError, match="in epochs"):
    build.learning_rate(config)
  converted = config_lib.in_steps(config, examples)
  assert {field: config_lib.get_field(converted, field) for field in steps} == steps
  assert not config_lib.in_epochs(converted)
  build.check(converted)
  assert build.learning_rate(converted)(0) >= 0
