"""Sharding: the FSDP layout rule, and train.py on 8 forced host devices (data
parallel and FSDP) against 1 device, for dense, Maestro (across shrinks) and
N:M (across SDGF frames), including a resume onto another device count; and
when a cluster's environment makes train.py join several processes."""

import os
import re
import signal
import shutil
import socket
import subprocess
import sys

import jax
import ml_collections
import pytest
from jax._src import clusters
from jax.sharding import PartitionSpec as P

from experiment import metrics, sharding
from tests.conftest import (ROOT, SUBPROCESS_TIMEOUT, assert_one_line_error, host_devices, run, train_here,
                            wait_until)

TOLERANCE = 1e-3  # Relative, per logged step: the order of the cross-device float32 sums differs, and training
# amplifies it (measured: ≤ 5e-6 on the dense losses, up to 2.3e-4 on Maestro's gradient norm by step 17).
RUNS = {
    "dense": ("configs/fmnist_mlp_dense.py:smoke", {}),
    "maestro": ("configs/fmnist_mlp_maestro.py:smoke", {"lowrank.shrink_every": 5, "lowrank.shrink_eps": 0.5}),
    "sdgf": ("configs/fmnist_mlp_nm.py:smoke,method=sdgf,n=1,m=8", {"nm.sdgf_decay": True}),
    "accumulated": ("configs/fmnist_mlp_dense.py:smoke", {"optimizer.accumulate_steps": 2}),  # Micro-batches of 16.
}


@pytest.mark.parametrize("shape,kind,devices,expected", [
    ((784, 1024), "fsdp", 8, P(None, "data")),     # The largest divisible axis.
    ((1024, 10), "fsdp", 8, P("data")),
    ((1000, 1024), "fsdp", 16, P(None, "data")),   # 1000 is not divisible by 16.
    ((1000, 10), "fsdp", 16, P()),                 # No axis is.
    ((1024,), "fsdp", 8, P("data")),
    ((10,), "fsdp", 2, P()),                        # Too small to be worth it.
    ((), "fsdp", 8, P()),
    ((784, 1024), "data", 8, P()),
    ((784, 1024), "fsdp", 1, P()),
])
def test_layout_rule(shape, kind, devices, expected):
  assert sharding.spec(shape, kind, devices) == expected


SRUN = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[01-04]", "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}
OMPI = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_RANK": "0",
        "OMPI_COMM_WORLD_LOCAL_RANK": "0"}
CLUSTER_VARIABLES = ("SLURM_", "OMPI_", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_", "MEGASCALE_", "KUBERNETES_",
                     "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")


def _environment(monkeypatch, variables: dict) -> None:
  """This process's environment without any cluster's variables, plus `variables`."""
  for key in [k for k in os.environ if k.startswith(CLUSTER_VARIABLES)]:
    monkeypatch.delenv(key)
  for key, value in variables.items():
    monkeypatch.setenv(key, value)


@pytest.mark.parametrize("variables,processes", [
    ({}, 1),
    ({**SRUN, "SLURM_NTASKS": "4"}, 4),                          # srun with 4 tasks.
    ({**SRUN, "SLURM_NTASKS": "1"}, 1),                          # A single-task job.
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, 1),  # sbatch's shell.
    ({**OMPI, "OMPI_COMM_WORLD_SIZE": "2"}, 2),                  # mpirun -np 2.
    ({**OMPI, "OMPI_COMM_WORLD_SIZE": "1", **SRUN, "SLURM_NTASKS": "4"}, 1),  # mpirun -np 1 in an srun step: MPI first.
    ({"TPU_WORKER_HOSTNAMES": "localhost,h1,h2,h3"}, 4),          # A GKE TPU slice of 4 hosts,
    ({"TPU_WORKER_HOSTNAMES": "localhost,h1", "MEGASCALE_NUM_SLICES": "2"}, 4),  # 2 slices of 2,
    ({"TPU_PROCESS_ADDRESSES": "localhost:8471,h1:8471", "TPU_WORKER_HOSTNAMES": "localhost"}, 2),  # (first),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, 1),                   # one host.
])
def test_cluster_processes_agree_with_jax(variables, processes, monkeypatch):
  assert sharding.cluster_processes(variables) == processes
  # JAX's own detection (private, so only here) counts the same. Its TPU clusters count on a TPU VM only, and
  # there ask the metadata server for what GKE's environment would give.
  tpu = any(k.startswith("TPU_") for k in variables)
  gke = {"TPU_WORKER_ID": "0", "MEGASCALE_COORDINATOR_ADDRESS": "localhost", "MEGASCALE_NUM_SLICES": "1",
         "MEGASCALE_SLICE_ID": "0"} if tpu else {}
  _environment(monkeypatch, {**gke, **variables})
  monkeypatch.setattr(clusters.cloud_tpu_cluster, "running_in_cloud_tpu_vm", tpu)
  _, count, _, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 10)
  assert (count or 1) == processes


@pytest.mark.parametrize("coordinator,variables,expected", [
    ("", {**SRUN, "SLURM_NTASKS": "4"}, ()),                         # JAX finds the cluster itself.
    ("", {**SRUN, "SLURM_NTASKS": "1"}, None),                       # One process: nothing to join.
    ("", {**OMPI, "OMPI_COMM_WORLD_SIZE": "2"}, ()),
    ("", {**SRUN, "SLURM_NTASKS": "4", "JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
          "JAX_PROCESS_ID": "1"}, ("h:1", 2, 1)),                    # Given variables win,
    ("c:2", {**SRUN, "SLURM_NTASKS": "4"}, ("c:2", 3, 2)),           # and so does the config.
    ("auto", {}, ()),
])
def test_initialize_joins_the_processes_a_cluster_started(coordinator, variables, expected, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
  monkeypatch.setattr(jax.config, "update", lambda *args: None)
  _environment(monkeypatch, variables)
  config = ml_collections.ConfigDict({"distributed": {"coordinator": coordinator, "num_processes": 3, "process_id": 2}})
  sharding.initialize(config)
  assert calls == ([] if expected is None else [expected])


def test_auto_without_a_cluster_is_one_line(monkeypatch, tmp_path):
  _environment(monkeypatch, {})
  out = run("train.py", "--config", RUNS["dense"][0], "--workdir", str(tmp_path / "run"),
            overrides={"distributed.coordinator": "auto"}, check=False)
  assert_one_line_error(out, "config.distributed.coordinator=auto: JAX found no cluster to join")
  assert not (tmp_path / "run").exists()


def _train(name: str, workdir, tiny_data, env=None, **extra):
  config, overrides = RUNS[name]
  run("train.py", "--config", config, "--workdir", str(workdir),
      overrides={**tiny_data, "log_every": 1, **overrides, **extra}, env=env)
  return metrics.read(workdir / "metrics.jsonl")


def _assert_same_trajectory(expected: list[dict], actual: list[dict]) -> float:
  """Asserts the same steps, ranks, patterns and sparsity, and train/eval metrics within TOLERANCE; returns the
  largest relative difference of the loss."""
  assert [r["step"] for r in expected] == [r["step"] for r in actual]
  for a, b in zip(expected, actual):
    for key in a:
      if key.startswith(("train/", "eval/")) and key != "train/learning_rate":
        assert b[key] == pytest.approx(a[key], rel=TOLERANCE, abs=1e-6), (a["step"], key)
      elif key.startswith(("rank/", "params/", "nm/n", "nm/m", "sparsity/")):
        assert b[key] == a[key], (a["step"], key)
  return max(abs(b["train/loss"] / a["train/loss"] - 1) for a, b in zip(expected, actual) if "train/loss" in a)


@pytest.fixture(scope="module")
def one_device(tiny_data, tmp_path_factory):
  """The metrics of each run on 1 device (this process), made once (on first use)."""
  made = {}

  def get(name: str) -> list[dict]:
    if name not in made:
      workdir = tmp_path_factory.mktemp("one") / name
      train_here(RUNS[name][0], workdir, {**tiny_data, "log_every": 1, **RUNS[name][1]})
      made[name] = metrics.read(workdir / "metrics.jsonl")
    return made[name]

  return get


@pytest.mark.parametrize("name,layout", [  # Maestro with FSDP also runs over 2 processes below; these: slow.
    ("dense", "data"), ("dense", "fsdp"), pytest.param("accumulated", "fsdp", marks=pytest.mark.slow),
    pytest.param("maestro", "fsdp", marks=pytest.mark.slow), pytest.param("sdgf", "fsdp", marks=pytest.mark.slow)])
def test_eight_devices_follow_the_one_device_trajectory(name, layout, one_device, tiny_data, tmp_path_factory):
  one = one_device(name)
  eight = tmp_path_factory.mktemp("eight") / name
  rows = _train(name, eight, tiny_data, env=host_devices(8), sharding=layout)
  print(f"{name} {layout}: largest relative loss difference {_assert_same_trajectory(one, rows):.2g}")
  assert rows[-1]["compiles/train_step"] == one[-1]["compiles/train_step"]  # Sharding adds no recompilation.
  if name == "maestro":  # Checkpoints restore onto another device count: the shrunk, FSDP-sharded state on 1.
    resumed = eight.parent / "resumed"
    shutil.copytree(eight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "20")
    out = run("train.py", "--config", RUNS[name][0], "--workdir", str(resumed),
              overrides={**tiny_data, "log_every": 1, **RUNS[name][1], "sharding": layout})
    assert "Resumed from step 10" in out.stderr
    _assert_same_trajectory(rows, metrics.read(resumed / "metrics.jsonl"))


def test_fsdp_really_splits_the_state():
  script = """
from flax import nnx
from configs import fmnist_mlp_dense
from experiment import build, sharding
config = fmnist_mlp_dense.get_config("smoke")
model = build.model(config)
optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
params, opt = sharding.place((nnx.state(model), nnx.state(optimizer)), sharding.mesh(), "fsdp")
kernel = params["hidden"][1]["kernel"][...]
mu = opt["opt_state"][1][0]["mu"]["hidden"][1]["kernel"][...]
print(kernel.addressable_shards[0].data.shape, mu.addressable_shards[0].data.shape, len(kernel.addressable_shards))
"""
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, **host_devices(8)}, timeout=SUBPROCESS_TIMEOUT)
  assert out.stdout.split("\n")[-2] == "(8, 64) (8, 64) 8"  # fc2 (64 x 64) and its Adam moment, split 8 ways.


def _two_processes(name: str, workdir, tiny_data, sigterm_after: int | None = None, **extra) -> list[str]:
  """train.py as 2 processes on 127.0.0.1 with 1 CPU device each; SIGTERM to process 1 once `sigterm_after`
  steps are logged. Returns both processes' stderr."""
  with socket.socket() as s:  # A free port for the coordinator.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  config, overrides = RUNS[name]
  cmd = [sys.executable, "train.py", "--config", config, "--workdir", str(workdir),
         *(f"--config.{k}={v}" for k, v in {**tiny_data, "log_every": 1, **overrides, **extra}.items())]
  procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                 "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  if sigterm_after is not None:
    log = workdir / "metrics.jsonl"
    wait_until(lambda: (log.exists() and len(log.read_text().splitlines()) > sigterm_after)
               or procs[1].poll() is not None, f"{sigterm_after} logged rows", every=0.05)
    procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  assert "test accuracy" not in outs[1][0]  # Only process 0 reports (and writes).
  return [err for _, err in outs]


@pytest.mark.slow  # The FSDP test below runs 2 processes too, with shrinking and a SIGTERM.
def test_two_processes_match_one_process_with_two_devices(tiny_data, tmp_path):
  one = _train("dense", tmp_path / "one", tiny_data, env=host_devices(2))
  _two_processes("dense", tmp_path / "two", tiny_data)
  rows = metrics.read(tmp_path / "two" / "metrics.jsonl")  # Written by process 0 only.
  print(f"2 processes: largest relative loss difference {_assert_same_trajectory(one, rows):.2g}")


@pytest.mark.slow  # Multi-process, like the test above; with shrinking and a SIGTERM.
def test_two_processes_fsdp_shrink_and_sigterm(tiny_data, tmp_path):
  """Maestro with FSDP over 2 processes, shrinking on sharded arrays; a SIGTERM to process 1 alone stops both
  after the same step with a checkpoint, and the resumed run follows 1 process with 2 devices."""
  one = _train("maestro", tmp_path / "one", tiny_data, env=host_devices(2),
               sharding="fsdp")
  workdir = tmp_path / "two"
  errs = _two_processes("maestro", workdir, tiny_data, sigterm_after=8, sharding="fsdp")
  stopped = [re.search(r"Stopped by SIGTERM after step (\d+)", err) for err in errs]
  assert all(stopped), errs[0][-2000:] + errs[1][-2000:]
  step = int(stopped[0][1])
  assert int(stopped[1][1]) == step and 8 <= step < 20 and (workdir / "checkpoints" / str(step)).is_dir()
  _two_processes("maestro", workdir, tiny_data, sharding="fsdp")
  rows = metrics.read(workdir / "metrics.jsonl")
  print(f"2 processes, FSDP, stopped at step {step} and resumed: largest relative loss difference "
        f"{_assert_same_trajectory(one, rows):.2g}")
  assert rows[-1]["rank/fc1"] < rows[1]["rank/fc1"]  # It shrank.
