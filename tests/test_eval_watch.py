"""eval.py beside a running train.py that deletes its checkpoints as it goes
(keep_checkpoints=1, a checkpoint every step): evaluations never fail,
`eval.py --watch` evaluates checkpoints as they land and ends with the run, a
watcher restarted on a finished run evaluates nothing, and signals stop it."""

import importlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from experiment import build, metrics, sharding
from experiment.checkpoint import Checkpoints
from experiment.config import ConfigError
from tests.conftest import ROOT, run, snapshot, wait_until

SMOKE = "configs/fmnist_mlp_dense.py:smoke"
STEPS = 40
ROTATING = {"checkpoint_every": 1, "keep_checkpoints": 1, "log_every": 5}  # Deletes a checkpoint every step.


def start(script: str, *args: str, logs: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
  """`python <script> <args>` in the background, its output in files under `logs` (no pipe to fill)."""
  logs.mkdir(parents=True, exist_ok=True)
  out = logs / f"{time.monotonic_ns()}"
  with open(f"{out}.out", "w") as stdout, open(f"{out}.err", "w") as stderr:
    return subprocess.Popen([sys.executable, script, *args], cwd=ROOT, stdout=stdout, stderr=stderr, text=True), out


def finished(proc: subprocess.Popen, out: pathlib.Path, timeout: float = 600) -> subprocess.CompletedProcess:
  """The process's result, once it has ended by itself (killed, and a TimeoutExpired, after `timeout` s: a guard
  against a hang, generous since test files run in parallel on few cores)."""
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  return subprocess.CompletedProcess(proc.args, proc.returncode, pathlib.Path(f"{out}.out").read_text(),
                                     pathlib.Path(f"{out}.err").read_text())




def train_command(workdir: pathlib.Path, tiny_data: dict, num_steps: int) -> list[str]:
  overrides = {**tiny_data, **ROTATING, "num_steps": num_steps}
  return ["train.py", "--config", SMOKE, "--workdir", str(workdir),
          *(f"--config.{k}={v}" for k, v in overrides.items())]


def test_evaluations_beside_a_run_that_deletes_its_checkpoints_never_fail(tmp_path, tiny_data, capsys):
  """eval.py's restore again and again in this process, and two eval.py, beside a run that writes a checkpoint
  every step and keeps one (stopped by SIGTERM once they are done)."""
  eval_py = importlib.import_module("eval")
  workdir = tmp_path / "run"
  train = start(*train_command(workdir, tiny_data, num_steps=100_000), logs=tmp_path / "logs")

  def first_checkpoint():
    return any((workdir / "checkpoint_manifests").glob("*.json"))

  mesh, restored = sharding.mesh(), []
  try:
    wait_until(first_checkpoint, "a first checkpoint", train[0], every=0.05)
    calls = [start("eval.py", "--workdir", str(workdir), logs=tmp_path / "logs") for _ in range(2)]
    deadline = time.monotonic() + 300
    while len(restored) < 10 or any(proc.poll() is None for proc, _ in calls):
      assert train[0].poll() is None and time.monotonic() < deadline
      restored.append(eval_py.restore(workdir, None, mesh)[2])
  finally:
    train[0].send_signal(signal.SIGTERM)
  trained = finished(*train)
  assert trained.returncode == 0, trained.stderr[-3000:]
  evals = [finished(*call) for call in calls]
  for result in evals:
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"Wrote {workdir}/eval.json" in result.stdout
  assert restored == sorted(restored) and len(set(restored)) > 1, restored
  deleted = capsys.readouterr().err.count("deleted checkpoint step")
  print(f"{len(restored)} restores of steps {restored[0]}..{restored[-1]} ({deleted} found theirs deleted before it was "
        f"linked); {len(evals)} eval.py calls")


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory, tiny_data):
  """A run (a checkpoint every step, one kept) and the `eval.py --watch` started beside it, both finished."""
  folder = tmp_path_factory.mktemp("watched")
  workdir = folder / "run"
  train = start(*train_command(workdir, tiny_data, num_steps=STEPS), logs=folder / "logs")

  def config_written():
    return (workdir / "config.json").exists()

  wait_until(config_written, "the run's config.json", train[0], every=0.05)
  watcher = start("eval.py", "--workdir", str(workdir), "--watch", "--watch_interval=0.2", logs=folder / "logs")
  try:
    trained = finished(*train)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return workdir, finished(*watcher)
  finally:
    watcher[0].kill()  # If it did not end by itself.


def test_watch_evaluates_checkpoints_as_they_land_and_ends_with_the_run(watched_run):
  workdir, watcher = watched_run
  assert watcher.returncode == 0 and "Traceback" not in watcher.stderr, watcher.stderr[-3000:]
  rows = metrics.read(workdir / "eval_metrics.jsonl")
  steps = [r["step"] for r in rows]
  assert steps == sorted(set(steps)) and steps[-1] == STEPS and len(steps) >= 2, steps
  assert watcher.stdout.count("\nstep ") == len(rows)
  trained = {r["step"]: r for r in metrics.read(workdir / "metrics.jsonl") if "eval/accuracy" in r}
  assert set(rows[-1]) == {"step"} | {k for k in trained[STEPS] if k.startswith("eval")}
  for row in rows:
    if row["step"] in trained:  # The final step, and any other step train.py evaluated at.
      for key in ("eval/accuracy", "eval/loss"):
        assert row[key] == pytest.approx(trained[row["step"]][key], rel=1e-6, abs=1e-6), (row["step"], key)


def test_a_restarted_watch_on_a_finished_run_evaluates_nothing(watched_run):
  workdir = watched_run[0]
  before = snapshot(workdir)
  result = run("eval.py", "--workdir", str(workdir), "--watch")
  assert "\nstep " not in result.stdout and f"last step ({STEPS})" in result.stdout
  assert snapshot(workdir) == before  # Nothing written: not eval_metrics.jsonl, nothing in checkpoints/.


def test_sigterm_and_ctrl_c_stop_a_watch_without_a_traceback(watched_run, tmp_path):
  workdir = tmp_path / "longer"
  shutil.copytree(watched_run[0], workdir)
  config = json.loads((workdir / "config.json").read_text())
  (workdir / "config.json").write_text(json.dumps({**config, "num_steps": 10 * STEPS}))  # Checkpoints to come.
  watchers = {sig: start("eval.py", "--workdir", str(workdir), "--watch", logs=tmp_path / "logs")
              for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    for sig, (proc, out) in watchers.items():

      def watching():
        return "Watching" in pathlib.Path(f"{out}.out").read_text()

      wait_until(watching, "eval.py watching", proc, every=0.05)
      proc.send_signal(sig)
      result = finished(proc, out)
      assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
      assert result.stderr.strip().splitlines()[-1].startswith("Stopped; "), result.stderr
  finally:
    for proc, _ in watchers.values():
      proc.kill()


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, tiny_data) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp("three") / "run"
  run("train.py", "--config", SMOKE, "--workdir", str(workdir),
      overrides={**tiny_data, "checkpoint_every": 5, "keep_checkpoints": 3})
  assert sorted(int(p.stem) for p in (workdir / "checkpoint_manifests").glob("*.json")) == [10, 15, 20]
  return workdir


@pytest.fixture
def copied(three_checkpoints, tmp_path) -> pathlib.Path:
  shutil.copytree(three_checkpoints, tmp_path / "run")
  return tmp_path / "run"


def deleting(workdir: pathlib.Path, folder: str, at: int):
  """Checkpoints.restore_method (the first read of a restore) that first deletes `folder` of checkpoint `at` in
  `workdir`, as a train.py beside it would."""
  original = Checkpoints.restore_method

  def restore_method(self, step):
    if step == at:
      shutil.rmtree(workdir / "checkpoints" / str(step) / folder, ignore_errors=True)
    return original(self, step)

  return restore_method


def test_a_checkpoint_deleted_as_it_is_read_is_read_from_its_links(copied, monkeypatch):
  eval_py = importlib.import_module("eval")
  mesh = sharding.mesh()
  (copied / "checkpoint_manifests" / "20.json").rename(copied / "20.json")  # As if still being written:
  assert eval_py.restore(copied, None, mesh)[2] == 15  # not read.
  (copied / "20.json").rename(copied / "checkpoint_manifests" / "20.json")
  monkeypatch.setattr(Checkpoints, "restore_method", deleting(copied, "", at=20))
  assert eval_py.restore(copied, None, mesh)[2] == 20
  assert not (copied / "checkpoints" / "20").exists()
  assert not list(copied.glob(".eval-pin-*"))  # The links are gone too.


def test_a_checkpoint_deleted_before_it_is_linked_gives_way_to_the_newest_whole_one(copied, monkeypatch, capsys):
  eval_py = importlib.import_module("eval")
  mesh, link = sharding.mesh(), os.link

  def link_after_deleting_20(source, target):
    shutil.rmtree(copied / "checkpoints" / "20", ignore_errors=True)
    link(source, target)

  monkeypatch.setattr(os, "link", link_after_deleting_20)
  assert eval_py.restore(copied, None, mesh)[2] == 15
  assert "deleted checkpoint step 20 as it was read" in capsys.readouterr().err
  assert not list(copied.glob(".eval-pin-*"))


@pytest.mark.parametrize("deleted", ["", "state", "method"])  # Orbax: FileNotFoundError, ValueError, KeyError.
def test_without_hard_links_a_checkpoint_deleted_while_read_gives_way_to_the_newest_whole_one(deleted, copied,
                                                                                              monkeypatch, capsys):
  eval_py = importlib.import_module("eval")
  mesh = sharding.mesh()

  def no_links(source, target):
    raise PermissionError(f"{target}: hard links not supported")

  monkeypatch.setattr(os, "link", no_links)
  monkeypatch.setattr(Checkpoints, "restore_method", deleting(copied, deleted, at=20))
  assert eval_py.restore(copied, None, mesh)[2] == 15
  assert "deleted checkpoint step 20 as it was read" in capsys.readouterr().err
  monkeypatch.setattr(Checkpoints, "restore_method", deleting(copied, deleted, at=10))
  with pytest.raises(ConfigError, match=r"^--step=10: the running train.py deleted .* available steps: \[15\]$"):
    eval_py.restore(copied, 10, mesh)


def test_a_checkpoint_of_a_dense_warm_up_restores_the_dense_model(tmp_path, tiny_data):
  """What --watch meets first in a Pufferfish run (dense for 5 steps, then low-rank factors)."""
  eval_py = importlib.import_module("eval")
  workdir = tmp_path / "pufferfish"
  run("train.py", "--config", "configs/fmnist_mlp_pufferfish.py:smoke", "--workdir", str(workdir),
      overrides={**tiny_data, "num_steps": 6, "checkpoint_every": 2, "keep_checkpoints": 3, "model.hidden": "(64,64)"})
  mesh = sharding.mesh()
  dense, low_rank = (eval_py.restore(workdir, step, mesh)[0] for step in (4, 6))
  assert build.count_params(dense) > build.count_params(low_rank) == metrics.read(workdir / "metrics.jsonl")[-1][
      "params/effective"]
