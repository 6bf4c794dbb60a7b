"""Fault tolerance through train.py: SIGKILL at random moments (also while a
checkpoint is being written) and restarts until the run finishes, compared bit
for bit with an uninterrupted run; SIGTERM; damaged checkpoints; a changed
config; two processes on one workdir; corrupt data files; non-finite updates.

The default suite kills a dense run 4 times; `pytest -m slow -k killed` kills
dense, Maestro (across shrink events) and SDGF with MDGF within its frames
(across a frame change) 25 times each.
"""

import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import fmnist_mlp_dense
from data import DataError, idx
from experiment import build, metrics, sharding
from experiment import methods
from experiment.checkpoint import Checkpoints
from experiment.config import ConfigError
from experiment.step import make_train_step
from tests.conftest import (ROOT, SUBPROCESS_TIMEOUT, assert_one_line_error, assert_same_run, run,
                            saved_state, snapshot, train_here, wait_until, write_idx_set)

STEPS = 60
LOOP = {"checkpoint_every": 7, "log_every": 5, "eval_every": 30}  # Checkpoints off the log grid.
RUNS = {
    "dense": ("configs/fmnist_mlp_dense.py:smoke", {}),
    "maestro": ("configs/fmnist_mlp_maestro.py:smoke", {"lowrank.shrink_every": 20, "lowrank.shrink_eps": 1.0}),
    "sdgf": ("configs/fmnist_mlp_nm.py:smoke,method=sdgf,n=1,m=8", {"nm.sdgf_decay": True}),  # Frames of 15 steps.
}


def train_py(cmd: list[str], check: bool = False) -> subprocess.CompletedProcess:
  """`cmd` (a train.py command line) run to its end from the repository root, its output captured."""
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=check, timeout=SUBPROCESS_TIMEOUT)


def command(name: str, workdir: pathlib.Path, tiny_data: dict, keep: int = 2, steps: int = STEPS) -> list[str]:
  """`keep=1` (the kill tests): the newest whole checkpoint is the only one, so losing it would show."""
  return [sys.executable, "train.py", "--config", RUNS[name][0], "--workdir", str(workdir),
          *(f"--config.{k}={v}" for k, v in overrides(name, tiny_data, keep, steps).items())]


def overrides(name: str, tiny_data: dict, keep: int = 2, steps: int = STEPS) -> dict:
  return {**tiny_data, **LOOP, "num_steps": steps, "keep_checkpoints": keep, **RUNS[name][1]}


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory, tiny_data):
  """The uninterrupted runs, made once (on first use), in this process."""
  made = {}

  def get(name: str, steps: int = STEPS) -> pathlib.Path:
    if (name, steps) not in made:
      made[name, steps] = tmp_path_factory.mktemp("straight") / name
      train_here(RUNS[name][0], made[name, steps], overrides(name, tiny_data, steps=steps))
    return made[name, steps]

  return get


@dataclasses.dataclass
class Kill:
  """When to SIGKILL: `after` seconds past a moment, the moment being `start` (the process started: imports,
  restore, compilation), `training` (its first logged row) or `saving` (a checkpoint write began); or, for
  `step`, as soon as step `after` is logged."""
  moment: str
  after: float

  @classmethod
  def random(cls, rng: random.Random) -> "Kill":
    moment = rng.choice(["start", "training", "saving", "saving"])
    # A save takes about 0.1 s here, then the manifest and the deletion of the old checkpoint follow.
    after = {"start": rng.uniform(0.5, 6), "training": rng.uniform(0, 0.5), "saving": rng.uniform(0, 0.15)}
    return cls(moment, after[moment])


def _train_rows(workdir: pathlib.Path) -> int:
  path = workdir / "metrics.jsonl"
  return path.read_text().count('"train/loss"') if path.exists() else 0


def _last_step(workdir: pathlib.Path) -> int:
  path = workdir / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.exists() else []
  return json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0


def _saves(workdir: pathlib.Path) -> set[str]:
  """Checkpoint writes in progress (and any a kill left behind, which the next train.py cleans up)."""
  folder = workdir / "checkpoints"
  return {name for name in os.listdir(folder) if "tmp" in name} if folder.is_dir() else set()


def _whole_checkpoint(workdir: pathlib.Path) -> int:
  """The step a restart would resume from (0: none), read without changing anything."""
  if not (workdir / "checkpoints").is_dir():
    return 0
  return Checkpoints(workdir).resume_step(set_aside=False)[0] or 0


def run_with_kills(cmd: list[str], workdir: pathlib.Path, kills: list[Kill], steps: int) -> list[str]:
  """Runs `cmd`, SIGKILLs it at each of `kills` in turn (restarting it after each) until its last checkpoint is
  whole, then lets it finish. Asserts that no kill loses a whole checkpoint. Returns a line per attempt: the
  kill, the process's resume and warning lines (if it got that far), and the checkpoint a restart resumes from."""
  log, whole = [], 0
  for kill in [*kills, None]:
    if whole == steps:
      kill = None
    rows_before, saves = _train_rows(workdir), [_saves(workdir)]

    def new_save() -> bool:  # A write that began since the last look (a killed one's leftover has the same name).
      saves.append(_saves(workdir))
      return bool(saves[-1] - saves[-2])

    reached = {"start": lambda: True, "training": lambda: _train_rows(workdir) > rows_before, "saving": new_save,
               "step": lambda: _last_step(workdir) >= kill.after}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started, killed = time.monotonic(), False
    while kill is not None and proc.poll() is None and time.monotonic() - started < 300:
      if reached[kill.moment]():
        time.sleep(0 if kill.moment == "step" else kill.after)
        proc.kill()
        killed = True
        break
      time.sleep(0.0005)
    stderr = proc.communicate(timeout=300)[1]
    said = [line for line in stderr.splitlines() if line.startswith(("Resumed", "warning"))]
    if kill is None or not killed:
      assert proc.returncode == 0, stderr[-3000:]
    now = _whole_checkpoint(workdir)
    log.append(f"{kill if killed else 'ran to the end'}: {' | '.join(said) or '-'} -> whole checkpoint: {now}")
    assert now >= whole, "a kill lost the newest whole checkpoint:\n" + "\n".join(log)
    whole = now
    if kill is None:
      return log


def check_kills(name: str, kills: list[Kill], straight_runs, workdir: pathlib.Path, tiny_data,
                steps: int = STEPS) -> list[str]:
  log = run_with_kills(command(name, workdir, tiny_data, keep=1, steps=steps), workdir, kills, steps)
  assert_same_run(straight_runs(name, steps), workdir, steps)
  return log


KILLS = [Kill("start", 2.0), Kill("saving", 0), Kill("training", 0.2), Kill("saving", 0.05)]


def test_a_run_killed_four_times_ends_bit_identical(straight_runs, tiny_data, tmp_path):
  log = check_kills("dense", KILLS, straight_runs, tmp_path / "killed", tiny_data)
  assert sum("Kill(moment='saving'" in line for line in log) == 2, "\n".join(log)


def test_a_maestro_run_killed_across_its_shrinks_ends_bit_identical(straight_runs, tiny_data, tmp_path):
  """Killed before the shrink at step 20; another process resumes from an earlier checkpoint and shrinks at 20 and
  40 as the uninterrupted run did."""
  log = check_kills("maestro", [Kill("step", 15)], straight_runs, tmp_path / "killed", tiny_data)
  resumed = [int(line.split("Resumed from step ")[1].split()[0]) for line in log if "Resumed" in line]
  assert len(resumed) == 1 and 0 < resumed[0] < 20, "\n".join(log)
  params = {r["step"]: r["params/effective"] for r in metrics.read(straight_runs("maestro") / "metrics.jsonl")
            if "params/effective" in r}
  assert params[25] < params[15] and params[45] < params[35]  # It shrank at steps 20 and 40.


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_runs_killed_25_times_end_bit_identical(name, straight_runs, tiny_data, tmp_path):
  rng = random.Random(f"kills-{name}")
  kills = [Kill.random(rng) for _ in range(25)]
  log = check_kills(name, kills, straight_runs, tmp_path / "killed", tiny_data, steps=200)
  print(f"\n{name}:\n" + "\n".join(log))
  assert sum(line.startswith("Kill(") for line in log) >= 20


def test_sigterm_saves_and_exits_cleanly_and_the_resumed_run_is_identical(straight_runs, tiny_data, tmp_path):
  workdir = tmp_path / "preempted"
  cmd = command("dense", workdir, tiny_data)
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  wait_until(lambda: _train_rows(workdir), "a logged training row", proc, every=0.001)
  proc.send_signal(signal.SIGTERM)
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == 0 and "Traceback" not in stderr, stderr
  stopped = int(stderr.split("Stopped by SIGTERM after step ")[1].split(",")[0])
  assert 5 <= stopped < STEPS and (workdir / "checkpoints" / str(stopped)).is_dir()
  resumed = train_py(cmd, check=True)
  assert f"Resumed from step {stopped}" in resumed.stderr
  assert_same_run(straight_runs("dense"), workdir, STEPS)


def test_ctrl_c_saves_like_sigterm_a_second_one_stops_at_once(straight_runs, tiny_data, tmp_path):
  workdir = tmp_path / "interrupted"
  cmd = command("dense", workdir, tiny_data)

  def interrupt(times: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = _train_rows(workdir)
    wait_until(lambda: _train_rows(workdir) > rows, "a training row of its own", proc, every=0.001)
    proc.send_signal(signal.SIGINT)
    said = []
    if times == 2:  # Once the first is taken (two signals at once would arrive as one), while the save is made.
      for line in proc.stderr:
        said.append(line)
        if line.startswith("Ctrl-C: saving"):
          proc.send_signal(signal.SIGINT)
          break
    stderr = "".join(said) + proc.communicate(timeout=120)[1]
    return subprocess.CompletedProcess(cmd, proc.returncode, None, stderr)

  once = interrupt(1)
  assert once.returncode == 0 and "Traceback" not in once.stderr, once.stderr
  stopped = int(once.stderr.split("Stopped by Ctrl-C after step ")[1].split(",")[0])
  assert (workdir / "checkpoints" / str(stopped)).is_dir() and _whole_checkpoint(workdir) == stopped
  twice = interrupt(2)  # From the resumed run: the first Ctrl-C asks for a save, the second stops at once.
  assert twice.returncode == 130 and "Traceback" not in twice.stderr, twice.stderr
  assert "Stopped by a second Ctrl-C" in twice.stderr.strip().splitlines()[-1]
  assert _whole_checkpoint(workdir) >= stopped  # Nothing lost.
  early = subprocess.Popen([cmd[0], "-X", "importtime", *cmd[1:]], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  for line in early.stderr:  # -X importtime: a line as each import ends. train.py sets its handler before it
    if line.rstrip().endswith("| jax"):  # imports JAX, and trains long after: a Ctrl-C now is one before training.
      break
  early.send_signal(signal.SIGINT)
  rest = early.communicate(timeout=60)[1]  # Read to the end: -X importtime writes much to a pipe that must not fill.
  assert early.returncode == 130 and "Traceback" not in rest, rest[-3000:]
  train_py(cmd, check=True)
  assert_same_run(straight_runs("dense"), workdir, STEPS)


def _flip_a_byte(folder: pathlib.Path) -> None:
  """One bit of the largest file changed, its size unchanged (a disk or copy error)."""
  largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[len(data) // 2] ^= 1
  largest.write_bytes(bytes(data))


def _truncate_largest(folder: pathlib.Path) -> None:
  largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(largest, largest.stat().st_size // 2)


DAMAGE = {
    "truncated array file": lambda ckpt, manifests: _truncate_largest(ckpt / "state"),
    "deleted item": lambda ckpt, manifests: shutil.rmtree(ckpt / "window"),
    "flipped byte": lambda ckpt, manifests: _flip_a_byte(ckpt / "state"),
    "no manifest (killed while saving)": lambda ckpt, manifests: (manifests / f"{STEPS}.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_newest_whole_one(damage, straight_runs, tiny_data, tmp_path,
                                                                     capsys):
  straight = straight_runs("dense")  # Kept checkpoints 56 and 60.
  workdir = tmp_path / "damaged"
  shutil.copytree(straight, workdir)
  DAMAGE[damage](workdir / "checkpoints" / str(STEPS), workdir / "checkpoint_manifests")
  train_here(RUNS["dense"][0], workdir, overrides("dense", tiny_data))  # In this process: its stderr, captured.
  stderr = capsys.readouterr().err
  warning = next(line for line in stderr.splitlines() if line.startswith("warning:"))
  assert f"checkpoint step {STEPS} " in warning and "damaged" in warning
  assert "Resumed from step 56" in stderr
  assert (workdir / "damaged_checkpoints" / str(STEPS)).is_dir()  # Set aside, not deleted.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["56", str(STEPS)]
  assert_same_run(straight, workdir, STEPS)


def test_a_changed_config_is_refused_listing_the_fields_unless_allowed(straight_runs, tiny_data, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(straight_runs("dense"), workdir)
  before = snapshot(workdir)  # In this process: how an error becomes its line is test_bad_input's.
  config, changed = RUNS["dense"][0], {**overrides("dense", tiny_data), "num_steps": 70}
  with pytest.raises(ConfigError) as refused:
    train_here(config, workdir, {**changed, "optimizer.learning_rate": 0.01})
  assert "num_steps: 60 -> 70" in str(refused.value) and "\n" not in str(refused.value)
  assert "optimizer.learning_rate: 0.001 -> 0.01" in str(refused.value) and "--allow_config_change" in str(refused.value)
  assert snapshot(workdir) == before

  train_here(config, workdir, changed, allow_config_change=True)
  assert "Resumed from step 60" in capsys.readouterr().err
  assert json.loads((workdir / "config.json").read_text())["num_steps"] == 70
  assert json.loads((workdir / "config.before_step_60.json").read_text())["num_steps"] == 60
  assert metrics.read(workdir / "metrics.jsonl")[-1]["step"] == 70


def test_a_second_process_on_the_same_workdir_is_refused(tiny_data, tmp_path):
  workdir = tmp_path / "busy"
  cmd = command("dense", workdir, tiny_data)
  first = subprocess.Popen(cmd + ["--config.num_steps=100000"], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  wait_until(lambda: _train_rows(workdir), "a logged training row", first)
  with pytest.raises(ConfigError, match=f"is in use by another train.py \\(pid {first.pid} on "):  # This process.
    train_here(RUNS["dense"][0], workdir, {**overrides("dense", tiny_data), "num_steps": 100000})
  assert first.poll() is None  # The first run goes on.
  first.send_signal(signal.SIGTERM)
  assert first.wait(timeout=120) == 0


@pytest.mark.parametrize("damage", ["truncated", "wrong magic number"])
def test_corrupt_data_files_are_named(damage, tmp_path, existing_workdir):
  folder = write_idx_set(tmp_path / "idx")
  path = folder / idx.FILES["train_images"]
  if damage == "truncated":
    os.truncate(path, path.stat().st_size // 2)
  else:
    idx.write_idx(path, np.zeros(10, np.uint8))  # A labels file (1-d) where the images (3-d) belong.
  before = snapshot(existing_workdir)
  with pytest.raises(DataError) as error:  # The command line prints it as its one line (tests/test_bad_input.py).
    train_here("configs/fmnist_mlp_dense.py:smoke", existing_workdir,
               {"dataset.idx_dir": str(folder), "dataset.data_dir": str(tmp_path / "tfds")})
  assert str(path) in str(error.value) and "\n" not in str(error.value), str(error.value)
  assert snapshot(existing_workdir) == before


def test_a_failing_checkpoint_write_is_one_line_and_loses_nothing(straight_runs, tiny_data, tmp_path):
  """A write that fails (a full disk; simulated by a limit on file sizes, which needs no privileges) stops the run
  with one line naming the checkpoint folder, the reason and the fix; the newest whole checkpoint stays, and the
  same command then ends bit-identical to a run that never failed."""
  workdir = tmp_path / "full"
  shutil.copytree(straight_runs("dense"), workdir)
  shutil.rmtree(workdir / "checkpoints" / str(STEPS))  # As if killed after the step-56 checkpoint.
  limited = ["bash", "-c", 'ulimit -f 100 && exec "$@"', "bash"]  # Files up to 50 kB; a checkpoint is ~0.7 MB.
  full = train_py(limited + command("dense", workdir, tiny_data))
  assert_one_line_error(full, f"writing checkpoint {STEPS} to {workdir / 'checkpoints'} failed: File too large")
  assert "ulimit -f" in full.stderr and _whole_checkpoint(workdir) == 56
  train_py(command("dense", workdir, tiny_data), check=True)
  assert_same_run(straight_runs("dense"), workdir, STEPS)


def test_a_workdir_removed_mid_run_is_one_line(tiny_data, tmp_path):
  """The run's folder removed under a running train.py: the next checkpoint write (or the one in flight) fails, and
  the run stops with one line naming the path, the reason and the fix."""
  workdir = tmp_path / "removed"
  proc = subprocess.Popen(command("dense", workdir, tiny_data, steps=100000), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  wait_until(lambda: _train_rows(workdir), "a logged training row", proc)
  workdir.rename(tmp_path / "gone")  # At once (removing file by file races the run's own writes).
  stderr = proc.communicate(timeout=120)[1]
  result = subprocess.CompletedProcess(proc.args, proc.returncode, None, stderr)
  assert_one_line_error(result, f"{workdir}/checkpoints failed: No such file or directory; restore the folder")


def test_a_damaged_prepared_dataset_is_prepared_again_or_named(tiny_data, tmp_path):
  """A truncated shard (its index says how many records it holds) is found before training and the dataset is
  prepared again from its IDX files; a changed byte inside a record is found when the split is read into memory,
  before the workdir is made: one line naming the folder and the fix."""
  data_dir = tmp_path / "tfds"
  shutil.copytree(tiny_data["dataset.data_dir"], data_dir)
  shard = next(data_dir.rglob("*-train.array_record-*"))
  overrides = {**tiny_data, "dataset.data_dir": str(data_dir), "num_steps": 2}
  os.truncate(shard, shard.stat().st_size // 2)
  rebuilt = run("train.py", "--config", "configs/fmnist_mlp_dense.py:smoke", "--workdir", str(tmp_path / "a"),
                overrides=overrides)
  assert "is damaged" in rebuilt.stderr and "preparing it again" in rebuilt.stderr
  assert len(list((data_dir / "damaged").iterdir())) == 1  # Set aside, not deleted.
  _flip_a_byte(shard.parent)
  named = run("train.py", "--config", "configs/fmnist_mlp_dense.py:smoke", "--workdir", str(tmp_path / "b"),
              overrides=overrides, check=False)
  assert_one_line_error(named, str(shard.parent))
  assert "delete that folder" in named.stderr and not (tmp_path / "b").exists()


def test_skip_nonfinite_keeps_the_state_of_a_nan_batch_and_counts_it():
  config = fmnist_mlp_dense.get_config("smoke")
  model = build.model(config)
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  mesh = sharding.mesh()
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  step = make_train_step(methods.Method(), 0, mesh, skip_nonfinite=True)
  rng = np.random.default_rng(0)
  good = {"inputs": rng.random((32, 28, 28, 1), np.float32), "targets": rng.integers(0, 10, 32).astype(np.int32)}
  bad = {**good, "inputs": np.where(np.arange(32)[:, None, None, None] == 3, np.nan, good["inputs"]).astype(np.float32)}
  state = sharding.place((model_state, opt_state), mesh, "data")
  before = jax.tree.map(np.asarray, state)
  state, out = step(model_def, opt_def, state, bad, jnp.int32(1))
  assert out["train/skipped"] == 1 and not np.isfinite(out["train/loss"])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)  # Params, moments, count.
  for i in (2, 3):  # Update 1 runs at learning rate 0 (warm-up).
    state, out = step(model_def, opt_def, state, good, jnp.int32(i))
    assert out["train/skipped"] == 0 and np.isfinite(out["train/loss"])
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.tree.map(np.asarray, state[0]), before[0])
  assert all(jax.tree.leaves(moved))


def test_skip_nonfinite_trains_through_and_logs_the_skips(tiny_data, tmp_path):
  # As in test_train's non-finite test: step 1 runs at learning rate 0, then the weights blow up.
  overrides = {**tiny_data, "optimizer.name": "sgd", "optimizer.learning_rate": 1e30, "optimizer.grad_clip": 0.0,
               "optimizer.warmup_steps": 5, "skip_nonfinite": True}
  workdir = tmp_path / "run"
  train_here("configs/fmnist_mlp_dense.py:smoke", workdir, overrides)
  rows = [r for r in metrics.read(workdir / "metrics.jsonl") if "train/skipped_updates" in r]
  skipped = sum(r["train/skipped_updates"] for r in rows)
  assert 0 < skipped < 20 and rows[-1]["train/skipped_updates"] == 5  # Once diverged, every update is skipped.
  assert all(np.isfinite(leaf).all() for leaf in saved_state(workdir, 20).values())
