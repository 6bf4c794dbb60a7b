"""Maestro through train.py and eval.py, on the tiny data."""

import json

import numpy as np
import pytest

from experiment import metrics, sharding
from tests.conftest import main_here, train_here

MAESTRO_SMOKE = "configs/fmnist_mlp_maestro.py:smoke"


@pytest.fixture(scope="module")
def maestro_run(tmp_path_factory, tiny_data):
  workdir = tmp_path_factory.mktemp("maestro") / "run"
  train_here(MAESTRO_SMOKE, workdir, {**tiny_data, "lowrank.shrink_every": 5, "lowrank.shrink_eps": 1.0})
  return workdir


def test_shrinking_really_shrinks_and_recompiles_once_per_event(maestro_run):
  rows = [r for r in metrics.read(maestro_run / "metrics.jsonl") if "rank/fc1" in r]
  ranks = [(r["rank/fc1"], r["rank/fc2"]) for r in rows]
  assert ranks[0] == (64, 64) and ranks[-1][0] < 64 and ranks[-1][1] < 64  # The head stays dense.
  assert all(a >= b for a, b in zip(ranks, ranks[1:]))
  params = [r["params/effective"] for r in rows]
  flops = [r["flops/train_step"] for r in rows]
  assert params[-1] < params[0] and flops[-1] < flops[0]
  assert [r["step"] for r in rows] == [5, 10, 15, 20]  # A shrink after each: 5 updates at each logged step's FLOPs.
  np.testing.assert_allclose([r["flops/total"] for r in rows], np.cumsum([5 * f for f in flops]), rtol=1e-12)
  assert params[-1] == ranks[-1][0] * (784 + 64) + 64 + ranks[-1][1] * 128 + 64 + 64 * 10 + 10
  shrink_events = len({r for r in ranks}) - 1
  assert rows[-1]["compiles/train_step"] == 1 + shrink_events
  assert "lowrank/group_lasso" in rows[-1]
  assert (maestro_run / "plots" / "ranks.png").stat().st_size > 0


def test_rank_sweep_svd_baseline_search_and_export(maestro_run, tmp_path, tiny_data):
  dense = tmp_path / "dense"
  train_here("configs/fmnist_mlp_dense.py:smoke", dense, tiny_data)
  export = tmp_path / "export"
  out = main_here("eval.py", "--workdir", str(maestro_run), "--rank_fractions=1,0.5,0.1", f"--svd_of={dense}",
            "--macs_budget=0.3", f"--export={export}")
  report = json.loads((maestro_run / "eval.json").read_text())
  sweep = report["rank_sweep"]
  assert [r["rank_fraction"] for r in sweep] == [1.0, 0.5, 0.1]
  assert sweep[0]["accuracy"] == pytest.approx(report["eval/accuracy"], abs=1e-6)  # Export at full rank = the model.
  assert sweep[0]["params"] > sweep[1]["params"] > sweep[2]["params"]
  assert sweep[0]["macs"] > sweep[1]["macs"] > sweep[2]["macs"]
  assert all(0 <= r["svd_accuracy"] <= 1 for r in sweep)
  search = report["greedy_search"]
  assert search["macs"] <= 0.3 * report["macs"] * 1.01 and search["macs"] < sweep[0]["macs"]
  assert (maestro_run / "plots" / "rank_sweep.png").stat().st_size > 0
  assert "SVD of dense" in out.stdout

  # The exported model loads on its own and gives the accuracy reported at export.
  main_here("eval.py", f"--exported={export}")
  standalone = json.loads((export / "eval.json").read_text())
  assert standalone["eval/accuracy"] == pytest.approx(search["accuracy"], abs=1e-6)
  assert standalone["params/total"] == search["params"]


def test_export_turns_layers_dense_where_that_is_cheaper(tmp_path, maestro_run):
  from eval import restore
  from experiment import export
  from lowrank import maestro
  model, config, _ = restore(maestro_run, None, sharding.mesh())
  current = maestro.ranks(model)
  assert current["fc1"] * (784 + 64) > 784 * 64
  chosen = {"fc1": current["fc1"], "fc2": 8}  # fc1 near full rank (> 59): cheaper as a dense 784x64 kernel.
  exported, exported_config = export.sliced(model, config, chosen)
  assert "fc1" in exported_config.layers.keep_dense and dict(exported_config.layers.ranks) == {"fc2": 8}
  assert exported.hidden[0].kernel.shape == (784, 64) and exported.hidden[1].down.shape == (64, 8)
  x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  maestro.set_active_ranks(model, chosen)
  np.testing.assert_allclose(exported(x), model(x), atol=1e-4)


def test_dense_warmup_switches_to_truncated_svd_factors(tmp_path, tiny_data):
  workdir = tmp_path / "pufferfish"
  train_here("configs/fmnist_mlp_pufferfish.py:smoke", workdir, tiny_data)
  rows = metrics.read(workdir / "metrics.jsonl")
  by_step = {r["step"]: r for r in rows}
  assert "rank/fc1" not in by_step[5]  # Dense for the 5 warm-up steps ...
  assert (by_step[10]["rank/fc1"], by_step[10]["rank/fc2"]) == (8, 8)  # ... then ceil(0.12 * 64) factors.
  assert by_step[10]["params/effective"] < by_step[5]["params/effective"]
  # The learning-rate schedule runs on across the switch (a fresh schedule would restart its warm-up at 0).
  lrs = [by_step[s]["train/learning_rate"] for s in (5, 10, 15, 20)]
  assert all(a > b for a, b in zip(lrs, lrs[1:]))
  assert by_step[20]["compiles/train_step"] == 2  # The dense step, then the low-rank one: one per shape event.


def test_lambda_schedule_and_finetune_fields_in_updates():
  from configs import fmnist_mlp_maestro
  from experiment import build, config as config_lib, methods
  config = fmnist_mlp_maestro.get_config("smoke,lowrank.group_lasso_warmup=0.25,lowrank.finetune=0.2")
  config.lowrank.dense_warmup_steps = 0
  hooks = methods.build(config, build.model(config))
  assert hooks.group_lasso_ramp == (0, 5) and hooks.finetune_from == 16  # Of 20 updates.
  config.lowrank.finetune = 1.0
  with pytest.raises(config_lib.ConfigError, match="config.lowrank.finetune=1.0 must be a fraction"):
    methods.build(config, build.model(config))
