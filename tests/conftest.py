"""Shared fixtures: a tiny Fashion-MNIST-shaped IDX set made here (tests never
touch the network or the real data), prepared once as a TFDS dataset, and a
helper that runs the real entry points in a subprocess."""

import contextlib
import importlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data import fashion_mnist, idx
from experiment import metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent


def make_images(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Learnable 28x28 images: class c lights a 7x7 square at a place set by c, plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, num).astype(np.uint8)
  images = rng.integers(0, 60, (num, 28, 28)).astype(np.uint8)
  for i, c in enumerate(labels):
    r, q = divmod(int(c), 4)
    images[i, 7 * r:7 * r + 7, 7 * q:7 * q + 7] += 150
  return images, labels


TINY_SPLITS = {"dataset.train_split": "train[:224]", "dataset.validation_split": "train[224:]"}  # Of 256.


def write_idx_set(folder: pathlib.Path, num_train: int = 256, num_test: int = 100) -> pathlib.Path:
  folder.mkdir(parents=True, exist_ok=True)
  for split, num, seed in (("train", num_train, 0), ("test", num_test, 1)):
    images, labels = make_images(num, seed)
    idx.write_idx(folder / idx.FILES[f"{split}_images"], images)
    idx.write_idx(folder / idx.FILES[f"{split}_labels"], labels)
  return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, str]:
  """Config overrides that point a run at the tiny set, prepared once."""
  root = tmp_path_factory.mktemp("tiny_fmnist")
  idx_dir, data_dir = write_idx_set(root / "idx"), root / "tfds"
  fashion_mnist.load("train", data_dir=str(data_dir), idx_dir=str(idx_dir))
  return {"dataset.idx_dir": str(idx_dir), "dataset.data_dir": str(data_dir), **TINY_SPLITS}


# XLA's CPU backend without LLVM's optimizations: the same computations, compiled in about a third less time
# (compilation is most of a test's run on tiny models), run a little slower.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def pytest_configure(config) -> None:
  """XLA_FLAGS with TEST_XLA_FLAGS, and one persistent JAX compilation cache for the whole session: this process,
  its xdist workers (which inherit the environment) and every train.py they start, so a computation compiled once
  is read back after (the compile counters count both; experiment/step.py). Fresh each session, removed at its
  end."""
  if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    folder = tempfile.mkdtemp(prefix="jax_cache_")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.environ.update(JAX_COMPILATION_CACHE_DIR=folder, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_xdist_auto_num_workers(config) -> int:
  """`-n auto`: the cores this process may run on (psutil would count physical cores, not the affinity mask)."""
  return len(os.sched_getaffinity(0))


def host_devices(count: int) -> dict[str, str]:
  """The environment of a process that sees `count` CPU devices."""
  return {"XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={count}"}


SUBPROCESS_TIMEOUT = 600  # Seconds any subprocess of a test may take (pyproject's per-test limit is 900).


def wait_until(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 300.0,
               every: float = 0.01) -> None:
  """Polls `condition()` every `every` seconds until it holds; fails naming `what` if `proc` ends first or
  `timeout` seconds pass (no test waits forever)."""
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc is None or proc.poll() is None, f"the process exited ({proc.returncode}) before {what}"
    assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
    time.sleep(every)


def run(script: str, *args: str, overrides: dict | None = None, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
  """Runs `python <script> <args> --config.<k>=<v>...` from the repository root."""
  cmd = [sys.executable, script, *args, *(f"--config.{k}={v}" for k, v in (overrides or {}).items())]
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=SUBPROCESS_TIMEOUT)
  if check and result.returncode != 0:
    raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


def train_here(config: "str | ml_collections.ConfigDict", workdir: pathlib.Path, overrides: dict | None = None,
               **options) -> dict:
  """`train.train` in this process (no interpreter to start): `config` as on the command line
  ("configs/<name>.py:<arg>") or built, `overrides` as config fields, `options` train's (allow_config_change); its
  signal handlers undone after. Returns the last metrics row."""
  import train
  if isinstance(config, str):
    path, _, arg = config.partition(":")
    config = importlib.import_module(path.removesuffix(".py").replace("/", ".")).get_config(arg or None)
  loaded = config.copy_and_resolve_references()
  loaded.update_from_flattened_dict(overrides or {})
  handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    return train.train(loaded, workdir, **options)
  finally:
    for s, handler in handlers.items():
      signal.signal(s, handler)


def main_here(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
  """`python <script> <args>` (eval.py, sweep.py) in this process, as `run` gives it (no interpreter to start, JAX's
  compilations kept): absl's flag parsing and the script's main, what it printed, and its exit code (an error's line
  last on stderr)."""
  from absl import flags
  from experiment import config as config_lib
  module = importlib.import_module(script.removesuffix(".py"))
  flags.FLAGS.unparse_flags()
  stdout, stderr, code, argv = io.StringIO(), io.StringIO(), 0, sys.argv
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      sys.argv = [script, *args]  # As the script sees it (e.g. in the command a report records).
      module.main(config_lib.parse_flags(sys.argv))
    except SystemExit as e:
      code = 1 if isinstance(e.code, str) else e.code or 0
      if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
    finally:
      sys.argv = argv
  if check and code != 0:
    raise AssertionError(f"{script} {' '.join(args)} failed ({code}):\n{stderr.getvalue()[-3000:]}")
  return subprocess.CompletedProcess([script, *args], code, stdout.getvalue(), stderr.getvalue())


def saved_state(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
  """Every array of checkpoint `step` (parameters, optimizer state, method variables), by path."""
  tree = ocp.StandardCheckpointer().restore((workdir / "checkpoints" / str(step) / "state").absolute())
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same_run(expected: pathlib.Path, actual: pathlib.Path, step: int) -> None:
  """Bit-identical runs: every array of checkpoint `step`, its method and data-iterator state, and every logged
  value except those of the process that logged it (compilation count, peak memory, wall time)."""
  a, b = saved_state(expected, step), saved_state(actual, step)
  assert a.keys() == b.keys() and len(a) > 4
  for path in a:
    np.testing.assert_array_equal(a[path], b[path], err_msg=path)
  for item in ("method", "data"):
    read = lambda workdir: json.loads((workdir / "checkpoints" / str(step) / item / "metadata").read_text())
    assert read(expected) == read(actual), item
  per_run = lambda rows: [{k: v for k, v in r.items() if not k.startswith(("compiles/", "memory/", "time/"))} for r in rows]
  assert per_run(metrics.read(expected / "metrics.jsonl")) == per_run(metrics.read(actual / "metrics.jsonl"))


def snapshot(folder: pathlib.Path) -> dict:
  """Every file under `folder` and its bytes."""
  return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(result: subprocess.CompletedProcess, field: str) -> None:
  """A user error: non-zero exit, no traceback, a last line `error: ...` naming `field`."""
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert "Traceback" not in result.stderr, result.stderr
  assert lines[-1].startswith("error:") and field in lines[-1], lines[-1]


@pytest.fixture
def existing_workdir(tmp_path) -> pathlib.Path:
  """A workdir holding a previous run's file, which bad input must leave untouched."""
  workdir = tmp_path / "existing"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("a previous run's files")
  return workdir
