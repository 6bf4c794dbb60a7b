"""train.py and eval.py end to end, through their command lines, on the tiny data."""

import json
import shutil

import numpy as np
import pytest

from experiment import metrics
from tests.conftest import assert_same_run, main_here, run, saved_state, train_here

SMOKE = "configs/fmnist_mlp_dense.py:smoke"


def test_smoke_run_writes_metrics_checkpoints_plots_and_evaluates(tmp_path, tiny_data):
  workdir = tmp_path / "run"
  result = run("train.py", "--config", SMOKE, "--workdir", str(workdir), overrides=tiny_data)
  rows = metrics.read(workdir / "metrics.jsonl")
  assert rows[0] == {"step": 0, "params/total": 784 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10}
  assert [r["step"] for r in rows[1:]] == [5, 10, 15, 20]
  assert {"train/loss", "train/accuracy", "train/grad_norm", "train/learning_rate"} <= rows[1].keys()
  assert all("eval/accuracy" in r for r in rows if r["step"] in (10, 20))
  assert rows[-1]["eval/accuracy"] > 0.5  # Ten classes, a learnable pattern: well above chance (0.1).
  assert rows[-1]["compiles/train_step"] == 1  # 20 steps, one compilation.
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [10, 20]
  assert (workdir / "plots" / "training.png").stat().st_size > 0
  assert json.loads((workdir / "config.json").read_text())["num_steps"] == 20
  assert "test accuracy" in result.stdout

  run("eval.py", "--workdir", str(workdir))
  report = json.loads((workdir / "eval.json").read_text())
  assert report["step"] == 20 and report["eval/accuracy"] == pytest.approx(rows[-1]["eval/accuracy"])
  main_here("eval.py", "--workdir", str(workdir), "--step", "10")
  assert json.loads((workdir / "eval.json").read_text())["eval/accuracy"] == pytest.approx(rows[2]["eval/accuracy"])
  missing = main_here("eval.py", "--workdir", str(workdir), "--step", "7", check=False)
  assert missing.returncode != 0 and "available steps: [10, 20]" in missing.stderr


def test_epochs_are_steps_of_the_train_splits_real_size(tmp_path, tiny_data, capsys):
  """num_epochs and the other *_epochs count the train split a run reads (here 224 examples in batches of 32: 7
  steps an epoch), whatever size the config file assumed; the saved config is in steps."""
  workdir = tmp_path / "run"
  epochs = {"num_steps": 0, "num_epochs": 2.0, "eval_every": 0, "eval_every_epochs": 1.0, "checkpoint_every": 0,
            "checkpoint_every_epochs": 0.5, "log_every": 7}
  train_here(SMOKE, workdir, {**tiny_data, **epochs})
  assert "num_epochs=2 -> num_steps=14" in capsys.readouterr().err
  saved = json.loads((workdir / "config.json").read_text())
  assert (saved["num_steps"], saved["eval_every"], saved["checkpoint_every"], saved["num_epochs"]) == (14, 7, 4, 0)
  assert [r["step"] for r in metrics.read(workdir / "metrics.jsonl") if "eval/accuracy" in r] == [7, 14]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-2:] == [12, 14]


MAESTRO_SMOKE = "configs/fmnist_mlp_maestro.py:smoke"
SHRINK = {"lowrank.shrink_every": 5, "lowrank.shrink_eps": 0.5}  # Shrinks at step 5 (and later), before the kill.
SMALL = {"model.hidden": (64, 64)}  # The MLP at 784-64-64-10: the same code paths, a fraction of the time.


@pytest.mark.parametrize("config,extra", [  # The CNN and Pufferfish cases add no code path: slow. Maestro alone
    # across its shrinks is also test_fault_tolerance's kill test (slow here); with N:M (the last case) it runs here.
    (SMOKE, {}), pytest.param("configs/fmnist_cnn_dense.py:smoke", {}, marks=pytest.mark.slow),
    pytest.param(MAESTRO_SMOKE, {**SMALL, **SHRINK}, marks=pytest.mark.slow),
    pytest.param("configs/fmnist_mlp_pufferfish.py:smoke", {}, marks=pytest.mark.slow),
    (SMOKE, {"optimizer.accumulate_steps": 2, "optimizer.ema_decay": 0.9}),
    pytest.param("configs/fmnist_mlp_cuttlefish.py:smoke", {**SMALL}, marks=pytest.mark.slow),  # Switches at step 8,
    ("configs/fmnist_mlp_cuttlefish.py:smoke", {**SMALL, "cuttlefish.window": 5}),  # before the kill; or settles at
    # step 10 and switches at 12, after it (eval.py reads checkpoints after a switch in test_cuttlefish).
    (MAESTRO_SMOKE, {**SMALL, **SHRINK, "layers.type": "lowrank+nm", "nm.method": "sdgf"})])  # Shrinks at 5, 10, 15;
    # the 2:8 SDGF frames 7:8, 4:8, 2:8 start at steps 0, 6, 13.
def test_resume_is_bit_identical(tmp_path, tiny_data, config, extra):
  """A run killed after its step-10 checkpoint and restarted ends exactly where
  an uninterrupted run ends: same parameters, optimizer state, metrics (and,
  for Maestro, the ranks kept by a shrink before the kill; for Cuttlefish, the
  switch after it, from the stable ranks measured before; for low rank + N:M,
  both methods' state across shrinks and frames on either side)."""
  overrides = {**tiny_data, "checkpoint_every": 5, "keep_checkpoints": 10, **extra}
  straight = tmp_path / "straight"
  train_here(config, straight, overrides)  # In this process: the kill-and-resume tests run the command line.

  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)  # What a kill just after the step-10 checkpoint leaves on disk:
  for step in (15, 20):
    shutil.rmtree(resumed / "checkpoints" / str(step))
  with (resumed / "metrics.jsonl").open("a") as f:  # ... including rows logged after that checkpoint.
    f.write(json.dumps({"step": 15, "train/loss": 0.0}) + "\n")
  train_here(config, resumed, overrides)
  assert [json.loads(line)["step"] for line in (resumed / "launches.jsonl").read_text().splitlines()] == [0, 10]

  assert_same_run(straight, resumed, 20)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data):
  # Step 1 runs at learning rate 0 (warm-up) and is checkpointed; later steps diverge.
  overrides = {**tiny_data, "optimizer.name": "sgd", "optimizer.learning_rate": 1e30, "optimizer.grad_clip": 0.0,
               "optimizer.warmup_steps": 5, "checkpoint_every": 1}
  workdir = tmp_path / "run"
  result = run("train.py", "--config", SMOKE, "--workdir", str(workdir), overrides=overrides, check=False)
  assert result.returncode != 0
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith("error: non-finite") and "at step" in error and "last good checkpoint" in error
  bad_step = int(error.split("at step ")[1].split(";")[0])
  # Metrics stay on the device between log steps: with no checkpoint before the log step (5), the run still names
  # the first non-finite step and metric, and saves nothing.
  import train
  with pytest.raises(train.NonFinite) as later:  # In this process: what the command line prints as its line.
    train_here(SMOKE, tmp_path / "later", {**overrides, "checkpoint_every": 10})
  assert f"error: {later.value}".split(";")[0] == error.split(";")[0]
  assert "no checkpoint was written" in str(later.value) and not (tmp_path / "later" / "checkpoints" / "5").exists()
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and max(saved) < bad_step
  for leaf in saved_state(workdir, max(saved)).values():
    assert np.all(np.isfinite(leaf))
  main_here("eval.py", "--workdir", str(workdir))  # The last good checkpoint still evaluates.
  assert np.isfinite(json.loads((workdir / "eval.json").read_text())["eval/loss"])


def test_without_git_the_run_trains_and_says_its_code_version_is_unknown(tmp_path, tiny_data):
  workdir = tmp_path / "run"
  out = run("train.py", "--config", SMOKE, "--workdir", str(workdir), overrides={**tiny_data, "num_steps": 2},
            env={"PATH": str(tmp_path / "no-tools-here")})
  assert "warning: git is not on PATH" in out.stderr and "Traceback" not in out.stderr
  assert json.loads((workdir / "launches.jsonl").read_text().splitlines()[-1])["code"] == "unknown (no git)"


def test_train_is_a_function_returning_the_final_metrics(tmp_path, tiny_data):
  """train.train(config, workdir) in-process, without flags: the command line's run, its last metrics row
  returned; a user's mistake is a ConfigError raised before the workdir is touched."""
  import signal

  import train
  from configs import fmnist_mlp_dense
  from experiment.config import ConfigError
  config = fmnist_mlp_dense.get_config("smoke")
  config.update_from_flattened_dict(tiny_data)
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:  # train() handles SIGTERM and Ctrl-C (save, then stop) while it runs.
    final = train.train(config, tmp_path / "run")
    config.batch_size = 0
    with pytest.raises(ConfigError, match="config.batch_size"):
      train.train(config, tmp_path / "refused")
  finally:
    for s, handler in handlers.items():
      signal.signal(s, handler)
  assert final == metrics.read(tmp_path / "run" / "metrics.jsonl")[-1]
  assert final["step"] == 20 and final["eval/accuracy"] > 0.5
  assert not (tmp_path / "refused").exists()
