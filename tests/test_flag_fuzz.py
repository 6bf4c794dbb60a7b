"""Property-based (hypothesis) bad input for eval.py's and sweep.py's flags:
one to three flags set to generated values, each case knowing whether it is
valid. A valid case succeeds; an invalid one exits with one line naming an
invalid flag it was given. Neither prints a traceback or changes the runs it
read.

The default suite runs a fixed (derandomized) handful of each; `pytest -m slow
-k flag_fuzz` runs many more random ones.
"""

import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run, snapshot, train_here
from tests.test_sweeps import _sweep_config

RUN = {"num_steps": 4, "log_every": 2, "eval_every": 4, "checkpoint_every": 2, "dataset.eval_limit": 64}
OUTPUTS = ("eval.json", "eval_metrics.jsonl", "plots/rank_sweep.png")  # What eval.py may add to a run's folder.

valid = lambda *values: st.sampled_from(values).map(lambda v: (v, True))  # (value, whether it is valid on its own)
invalid = lambda *values: st.sampled_from(values).map(lambda v: (v, False))
either = lambda good, bad: st.one_of(valid(*good), invalid(*bad))
EVAL_FLAGS = {  # Of the Maestro run (checkpoints at steps 2 and 4, an EMA).
    "step": either([2, 4], [3, 0, -1, "latest"]),
    "ema": valid(True, False),
    "rank_fractions": either(["1,0.5", "0.25"], ["0", "1.5", "half", ",", "nan"]),
    "svd_of": either(["<dense>", ""], ["<maestro>", "<missing>"]),  # "": none.
    "macs_budget": either([0.5, 1.0], [0.0, -1.0, 2.0, "nan", "inf"]),
    "search_examples": valid(16, 1, 0, -5),  # Read with --macs_budget only (eval_invalid).
    "export": either(["<new>", ""], ["<file>"]),
    "exported": invalid("<missing>", "<maestro>"),
    "sample": invalid("The", ""),  # The run is no language model.
    "sample_length": valid(5, 0, -1),  # Read with --sample only.
    "temperature": valid(0.8, 0.0, -1.0, "nan"),
    "watch": valid(True, False),
    "watch_interval": valid(0.1, 0.0, -1.0, "nan"),  # Read with --watch only (eval_invalid).
}
WATCH_EXCLUDES = ("step", "ema", "rank_fractions", "svd_of", "macs_budget", "export", "exported", "sample")


def eval_invalid(drawn: dict) -> list[str]:
  """The flags of a case that make it invalid: on their own, or with the others."""
  values = {n: v for n, (v, _) in drawn.items()}
  if values.get("watch"):  # --watch takes --workdir and --watch_interval > 0 only.
    interval = values.get("watch_interval", 5.0)
    bad = [n for n in WATCH_EXCLUDES if n in values]
    return ["watch", *bad] if bad or not float(interval) > 0 else []
  bad = [n for n, (_, ok) in drawn.items() if not ok]
  if "macs_budget" in bad or ("macs_budget" in values and not int(values.get("search_examples", 1000)) >= 1):
    bad += ["macs_budget", "search_examples"]
  return bad


SWEEP_FLAGS = {  # Of a sweep of one dense run, seed 0.
    "workers": either([1, 2], [0, -1, "two"]),
    "only": either(["dense"], ["bogus", "dense,bogus", ","]),
    "seeds": either(["0", "0,0"], ["1", "x", "-1", ","]),
    "set": either(["wandb.mode=disabled", "log_every=1"], ["novalue", "layers.bogus=1", "=1", "num_steps=many"]),
    "list": valid(True, False),
    "emit": either(["slurm"], ["bash"]),
    "slurm_args": either(["--time=1:00:00"], ["'unclosed", "gres"]),  # Only with --emit=slurm (sweep_invalid).
    "config": invalid("<missing>", "configs/fmnist_mlp_dense.py", "<file>"),  # The last two: no get_sweep().
    "folder": either(["<new>"], ["<file>"]),
}


def sweep_invalid(drawn: dict) -> list[str]:
  bad = [n for n, (_, ok) in drawn.items() if not ok]
  if "slurm_args" in drawn and drawn.get("emit", ("", True))[0] != "slurm":
    bad.append("slurm_args")
  return bad


def flag(name: str, value, paths: dict) -> str:
  if isinstance(value, bool):
    return f"--{name}" if value else f"--no{name}"
  return f"--{name}={paths.get(value, value)}"


def check(script: str, base: list[str], given_flags: dict, bad: list[str], paths: dict,
          kept: list[pathlib.Path]) -> str:
  """How `script` ended with `given_flags`: "ok" or its error line. A case without `bad` (invalid) flags must
  succeed; one with must fail with one line naming one of them. The `kept` folders stay as they were (but for
  eval.py's outputs)."""
  before = [_without_outputs(snapshot(k)) for k in kept]
  result = run(script, *base, *(flag(n, v, paths) for n, v in given_flags.items()), check=False)
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert [_without_outputs(snapshot(k)) for k in kept] == before, "a command changed a run it read"
  if not bad:
    assert result.returncode == 0, f"valid flags refused: {result.stderr[-3000:]}"
    return "ok"
  assert result.returncode != 0, f"succeeded with invalid {bad}"
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error:"), result.stderr[-3000:]
  assert any(f"--{n}" in last for n in bad), f"names none of the invalid {bad}: {last}"
  return last


def _without_outputs(files: dict) -> dict:
  return {p: b for p, b in files.items() if str(p) not in OUTPUTS and not p.parts[0] == "plots"}


def fuzz(strategies: dict, one_case, **options) -> None:
  outcomes = []

  @settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), **options)
  @given(st.lists(st.sampled_from(sorted(strategies)), min_size=1, max_size=3, unique=True).flatmap(
      lambda names: st.fixed_dictionaries({n: strategies[n] for n in names})))
  def succeed_or_fail_with_one_line(drawn):
    outcomes.append((drawn, one_case(drawn)))

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
  train_here("configs/fmnist_mlp_maestro.py:smoke", pathlib.Path(paths["<maestro>"]),
             {**tiny_data, **RUN, "optimizer.ema_decay": 0.9})
  train_here("configs/fmnist_mlp_dense.py:smoke", pathlib.Path(paths["<dense>"]), {**tiny_data, **RUN})
  return paths


def eval_case(runs: dict):
  def one_case(drawn: dict) -> str:
    given_flags = {n: v for n, (v, _) in drawn.items()}
    with tempfile.TemporaryDirectory() as tmp:
      paths = {**runs, "<new>": f"{tmp}/export"}
      base = [] if "exported" in given_flags else ["--workdir", runs["<maestro>"]]
      kept = [pathlib.Path(runs["<maestro>"]), pathlib.Path(runs["<dense>"])]
      return check("eval.py", base, given_flags, eval_invalid(drawn), paths, kept)
  return one_case


def sweep_case(tiny_data: dict, root: pathlib.Path):
  config = _sweep_config(root, tiny_data, "fmnist_mlp_dense", [dict(name="dense", overrides={"num_steps": 2})], (0,))

  def one_case(drawn: dict) -> str:
    given_flags = {n: v for n, (v, _) in drawn.items()}
    with tempfile.TemporaryDirectory() as tmp:
      (pathlib.Path(tmp) / "a_file").write_text("not a folder")
      paths = {"<missing>": f"{tmp}/missing.py", "<file>": f"{tmp}/a_file", "<new>": f"{tmp}/sweep"}
      base = [f"--config={config}", f"--folder={tmp}/sweep"]
      return check("sweep.py", [b for b in base if b.split("=")[0][2:] not in given_flags], given_flags,
                   sweep_invalid(drawn), paths, [])
  return one_case


def test_eval_flag_fuzz(runs):
  fuzz(EVAL_FLAGS, eval_case(runs), max_examples=3, derandomize=True)


def test_sweep_flag_fuzz(tiny_data, tmp_path):
  fuzz(SWEEP_FLAGS, sweep_case(tiny_data, tmp_path), max_examples=4, derandomize=True)


@pytest.mark.slow
def test_many_eval_flag_fuzz(runs):
  fuzz(EVAL_FLAGS, eval_case(runs), max_examples=100)


@pytest.mark.slow
def test_many_sweep_flag_fuzz(tiny_data, tmp_path):
  fuzz(SWEEP_FLAGS, sweep_case(tiny_data, tmp_path), max_examples=100)
