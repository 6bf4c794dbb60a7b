"""Property-based (hypothesis) bad input for eval.py's and sweep.py's flags:
one to three flags set to generated values, valid and not. Each command either
succeeds, or exits with one line naming a flag it was given, without a
traceback, and leaves the runs it read as they were.

The default suite runs a fixed (derandomized) handful of each; `pytest -m slow
-k flag_fuzz` runs many more random ones.
"""

import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run, snapshot
from tests.test_sweeps import _sweep_config

RUN = {"num_steps": 4, "log_every": 2, "eval_every": 4, "checkpoint_every": 2, "dataset.eval_limit": 64}
OUTPUTS = ("eval.json", "eval_metrics.jsonl", "plots/rank_sweep.png")  # What eval.py may add to a run's folder.

EVAL_FLAGS = {
    "step": st.sampled_from([2, 4, 3, 0, -1, "latest"]),
    "ema": st.booleans(),
    "rank_fractions": st.sampled_from(["1,0.5", "0.25", "0", "1.5", "half", ",", "nan"]),
    "svd_of": st.sampled_from(["<dense>", "<maestro>", "<missing>", ""]),
    "macs_budget": st.sampled_from([0.5, 1.0, 0.0, -1.0, 2.0, "nan", "inf"]),
    "search_examples": st.sampled_from([16, 1, 0, -5]),
    "export": st.sampled_from(["<new>", "<file>", ""]),
    "exported": st.sampled_from(["<missing>", "<maestro>"]),
    "sample": st.sampled_from(["The", ""]),
    "sample_length": st.sampled_from([5, 0, -1]),
    "temperature": st.sampled_from([0.8, 0.0, -1.0, "nan"]),
    "watch": st.booleans(),
    "watch_interval": st.sampled_from([0.1, 0.0, -1.0, "nan"]),
}
SWEEP_FLAGS = {
    "workers": st.sampled_from([1, 2, 0, -1, "two"]),
    "only": st.sampled_from(["dense", "bogus", "dense,bogus", ","]),
    "seeds": st.sampled_from(["0", "1", "x", "-1", "0,0", ","]),
    "set": st.sampled_from(["wandb.mode=disabled", "log_every=1", "novalue", "layers.bogus=1", "=1",
                            "num_steps=many"]),
    "list": st.booleans(),
    "emit": st.sampled_from(["slurm", "bash"]),
    "slurm_args": st.sampled_from(["--time=1:00:00", "'unclosed", "gres"]),
    "config": st.sampled_from(["<missing>", "configs/fmnist_mlp_dense.py", "<file>"]),
    "folder": st.sampled_from(["<file>", "<new>"]),
}


def flag(name: str, value, paths: dict) -> str:
  if isinstance(value, bool):
    return f"--{name}" if value else f"--no{name}"
  return f"--{name}={paths.get(value, value)}"


def check(script: str, base: list[str], given_flags: dict, paths: dict, kept: list[pathlib.Path]) -> str:
  """How `script` ended with `given_flags`: "ok" or its error line; `kept` folders must be as they were (but for
  eval.py's outputs)."""
  before = [_without_outputs(snapshot(k)) for k in kept]
  result = run(script, *base, *(flag(n, v, paths) for n, v in given_flags.items()), check=False)
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert [_without_outputs(snapshot(k)) for k in kept] == before, "a command changed a run it read"
  if result.returncode == 0:
    return "ok"
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error:"), result.stderr[-3000:]
  named = any(f"--{n}" in last for n in given_flags) or "--workdir" in last
  assert named, f"names none of {sorted(given_flags)}: {last}"
  return last


def _without_outputs(files: dict) -> dict:
  return {p: b for p, b in files.items() if str(p) not in OUTPUTS and not p.parts[0] == "plots"}


def fuzz(strategies: dict, one_case, **options) -> None:
  outcomes = []

  @settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), **options)
  @given(st.lists(st.sampled_from(sorted(strategies)), min_size=1, max_size=3, unique=True).flatmap(
      lambda names: st.fixed_dictionaries({n: strategies[n] for n in names})))
  def succeed_or_fail_with_one_line(given_flags):
    outcomes.append((given_flags, one_case(given_flags)))

  succeed_or_fail_with_one_line()
  print(f"\n{len(outcomes)} cases: {sum(o == 'ok' for _, o in outcomes)} ran")
  for case, outcome in outcomes:
    print(f"  {case}: {outcome}")


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> dict[str, str]:
  """A finished Maestro run (with a parameter EMA) and a dense one, and other paths the flags point at."""
  root = tmp_path_factory.mktemp("flag_fuzz")
  paths = {"<maestro>": str(root / "maestro"), "<dense>": str(root / "dense"), "<missing>": str(root / "missing"),
           "<file>": str(root / "a_file")}
  pathlib.Path(paths["<file>"]).write_text("not a folder")
  run("train.py", "--config", "configs/fmnist_mlp_maestro.py:smoke", "--workdir", paths["<maestro>"],
      overrides={**tiny_data, **RUN, "optimizer.ema_decay": 0.9})
  run("train.py", "--config", "configs/fmnist_mlp_dense.py:smoke", "--workdir", paths["<dense>"],
      overrides={**tiny_data, **RUN})
  return paths


def eval_case(runs: dict):
  def one_case(given_flags: dict) -> str:
    with tempfile.TemporaryDirectory() as tmp:
      paths = {**runs, "<new>": f"{tmp}/export"}
      base = [] if "exported" in given_flags else ["--workdir", runs["<maestro>"]]
      kept = [pathlib.Path(runs["<maestro>"]), pathlib.Path(runs["<dense>"])]
      return check("eval.py", base, given_flags, paths, kept)
  return one_case


def sweep_case(tiny_data: dict, root: pathlib.Path):
  config = _sweep_config(root, tiny_data, "fmnist_mlp_dense", [dict(name="dense", overrides={"num_steps": 2})], (0,))

  def one_case(given_flags: dict) -> str:
    with tempfile.TemporaryDirectory() as tmp:
      (pathlib.Path(tmp) / "a_file").write_text("not a folder")
      paths = {"<missing>": f"{tmp}/missing.py", "<file>": f"{tmp}/a_file", "<new>": f"{tmp}/sweep"}
      base = [f"--config={config}", f"--folder={tmp}/sweep"]
      return check("sweep.py", [b for b in base if b.split("=")[0][2:] not in given_flags], given_flags, paths, [])
  return one_case


def test_eval_flag_fuzz(runs):
  fuzz(EVAL_FLAGS, eval_case(runs), max_examples=4, derandomize=True)


def test_sweep_flag_fuzz(tiny_data, tmp_path):
  fuzz(SWEEP_FLAGS, sweep_case(tiny_data, tmp_path), max_examples=6, derandomize=True)


@pytest.mark.slow
def test_many_eval_flag_fuzz(runs):
  fuzz(EVAL_FLAGS, eval_case(runs), max_examples=100)


@pytest.mark.slow
def test_many_sweep_flag_fuzz(tiny_data, tmp_path):
  fuzz(SWEEP_FLAGS, sweep_case(tiny_data, tmp_path), max_examples=100)
