"""Property-based (hypothesis) bad input: a smoke config with one to three
fields set to generated values, valid and not, run through train.py. Each run
either trains to its last step, or exits before anything is compiled with one
line naming a field it was given and without writing to its workdir.

The default suite runs a fixed (derandomized) handful; `pytest -m slow -k fuzz`
runs many more random ones.
"""

import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiment import metrics
from tests.conftest import assert_one_line_error, run, snapshot

STEPS = {"num_steps": 4, "log_every": 2, "eval_every": 4, "checkpoint_every": 2}

integer = lambda low, high: st.one_of(st.integers(low, high), st.sampled_from([0, -1, -7, 2**40, 2.5, "many"]))
fraction = st.one_of(st.floats(0, 0.9), st.sampled_from([1.0, 1.5, -0.1, float("nan"), "half"]))
positive = st.one_of(st.floats(1e-5, 1.0), st.sampled_from([0.0, -1e-3, float("nan"), float("inf"), "1e3x"]))
name = lambda *valid: st.sampled_from([*valid, "bogus", "", 3])

COMMON = {
    "seed": st.one_of(st.integers(0, 2**31 - 1), st.sampled_from([-1, 2**40])),
    "batch_size": st.one_of(integer(1, 64), st.sampled_from([10**7])),
    "num_steps": integer(1, 6),
    "log_every": integer(1, 5),
    "eval_every": integer(1, 5),
    "checkpoint_every": integer(1, 5),
    "keep_checkpoints": integer(1, 3),
    "eval_batch_size": integer(1, 300),
    "dataset.eval_limit": integer(0, 300),
    "optimizer.name": name("adamw", "sgd"),
    "optimizer.learning_rate": positive,
    "optimizer.warmup_steps": integer(0, 5),
    "optimizer.schedule": name("cosine", "linear", "constant", "warmup_stable_decay"),
    "optimizer.decay_fraction": fraction,
    "optimizer.decay": name("kernels", "all"),
    "optimizer.accumulate_steps": integer(1, 4),
    "optimizer.ema_decay": fraction,
    "compute_dtype": name("float32", "bfloat16"),
    "profile_steps": st.sampled_from(["", "1:2", "3", "3:1", "0:2", "1:99", "x:y"]),
    "dataset.workers": st.sampled_from([0, -1, 1.5, "two"]),
    "optimizer.grad_clip": st.sampled_from([0.0, 1.0, -1.0, float("nan")]),
    "optimizer.weight_decay": st.sampled_from([0.0, 1e-4, -1.0, float("inf")]),
    "layers.type": name("dense", "lowrank", "nm"),
    "wandb.mode": name("disabled"),
    "skip_nonfinite": st.sampled_from([True, False, "maybe"]),
    "sharding": name("data", "fsdp"),
}
CONFIGS = {
    "configs/fmnist_mlp_dense.py:smoke": {},
    "configs/fmnist_mlp_maestro.py:smoke": {
        "lowrank.sampler": name("single_layer", "independent", "fixed_ratio", "none"),
        "lowrank.fixed_ratio": fraction,
        "lowrank.group_lasso": st.sampled_from([0.0, 1e-4, -1.0, float("nan")]),
        "lowrank.shrink_every": integer(0, 4),
        "lowrank.shrink_eps": st.sampled_from([0.0, 0.5, -1.0, float("inf")]),
        "lowrank.dense_warmup_steps": integer(0, 4),
        "layers.rank_ratio": fraction,
        "layers.init": name("spectral", "random"),
    },
    "configs/fmnist_mlp_nm.py:smoke": {
        "layers.n": integer(1, 8),
        "layers.m": st.one_of(st.sampled_from([2, 4, 8, 16]), integer(1, 32)),
        "nm.method": name("ste", "srste", "mdgf", "sdgf", "unstructured"),
        "nm.decay": name("exp", "linear"),
        "nm.decay_coef": st.sampled_from([0.0, 0.1, -1.0, float("nan")]),
        "nm.structure": name("stepwise", "geometric", "densify"),
        "nm.dense_warmup": fraction,
        "nm.finetune": fraction,
        "nm.srste_decay": st.sampled_from([0.0, 2e-4, -1.0]),
    },
}


@st.composite
def configs(draw):
  config = draw(st.sampled_from(sorted(CONFIGS)))
  fields = {**COMMON, **CONFIGS[config]}
  chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True))
  return config, {f: draw(fields[f]) for f in chosen}


def check_one(config: str, overrides: dict, tiny_data: dict) -> str:
  """How the run ended: "trained" or the error line."""
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "existing"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("a previous run's files")
    before = snapshot(workdir)
    result = run("train.py", "--config", config, "--workdir", str(workdir),
                 overrides={**tiny_data, **STEPS, **overrides}, check=False)
    if result.returncode == 0:
      last = metrics.read(workdir / "metrics.jsonl")[-1]
      assert last["step"] == int(overrides.get("num_steps", STEPS["num_steps"]))
      return "trained"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    named = [f for f in overrides if f in result.stderr.strip().splitlines()[-1]]
    assert named, f"the error names none of {sorted(overrides)}: {result.stderr.strip().splitlines()[-1]}"
    assert_one_line_error(result, named[0])
    assert snapshot(workdir) == before, "a failed run wrote to its workdir"
    return result.stderr.strip().splitlines()[-1]


def fuzz(tiny_data: dict, **options) -> None:
  outcomes = []

  @settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), **options)
  @given(configs())
  def train_or_fail_with_one_line(case):
    outcomes.append((case, check_one(*case, tiny_data)))

  train_or_fail_with_one_line()
  trained = sum(outcome == "trained" for _, outcome in outcomes)
  print(f"\n{len(outcomes)} configs: {trained} trained, {len(outcomes) - trained} refused with one line")
  for case, outcome in outcomes:
    print(f"  {case}: {outcome}")


def test_fuzzed_configs_train_or_fail_with_one_line(tiny_data):
  fuzz(tiny_data, max_examples=5, derandomize=True)


@pytest.mark.slow
def test_many_fuzzed_configs(tiny_data):
  fuzz(tiny_data, max_examples=150)
