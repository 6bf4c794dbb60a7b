"""Property-based (hypothesis) bad input: a smoke config with one to three
fields set to generated values, each known to be valid or not, run through
train.py. A config of valid values trains to its last step; one with an invalid
value exits before anything is compiled, with one line naming an invalid field
it was given, and without writing to its workdir.

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


def either(valid: st.SearchStrategy, *invalid) -> st.SearchStrategy:
  """(value, whether it is valid): from `valid`, or one of `invalid`. Valid values are chosen so that any mix of
  them is a valid config (e.g. batch sizes are multiples of every valid accumulation count)."""
  return st.one_of(valid.map(lambda v: (v, True)), st.sampled_from(invalid).map(lambda v: (v, False)))


BAD_INTEGERS = (0, -1, -7, 2.5, "many")
integer = lambda low, high: either(st.integers(low, high), *BAD_INTEGERS)
interval = either(st.one_of(st.integers(1, 5), st.just(2**40)), *BAD_INTEGERS)  # Longer than the run: at its end.
name = lambda *valid: either(st.sampled_from(valid), "bogus", "", 3)
fraction = lambda low, high: either(st.floats(low, high), 1.5, -0.1, float("nan"), "half")
off_or = lambda *valid: either(st.sampled_from([0.0, *valid]), -1.0, float("nan"), float("inf"))

COMMON = {
    "seed": either(st.integers(0, 2**31 - 1), -1, 2**31, 2**40, 2.5),
    "batch_size": either(st.integers(1, 16).map(lambda k: 4 * k), *BAD_INTEGERS, 225, 2**40),  # 224 train examples.
    "num_steps": integer(3, 6),
    "log_every": interval,
    "eval_every": interval,
    "checkpoint_every": interval,
    "keep_checkpoints": either(st.one_of(st.integers(1, 3), st.just(2**40)), *BAD_INTEGERS),
    "eval_batch_size": either(st.integers(1, 100), *BAD_INTEGERS, 101, 2**40),  # 100 test examples.
    "dataset.eval_limit": either(st.integers(0, 300), -1, 2.5, "all"),
    "optimizer.name": name("adamw", "sgd"),
    "optimizer.learning_rate": either(st.floats(1e-5, 0.1), 0.0, -1e-3, float("nan"), float("inf"), "1e3x"),
    "optimizer.warmup_steps": either(st.integers(0, 5), -1, 2.5, "some"),
    "optimizer.schedule": name("cosine", "linear", "constant", "warmup_stable_decay"),
    "optimizer.decay_fraction": either(st.floats(0.01, 1.0), 0.0, 1.5, -0.1, float("nan"), "half"),
    "optimizer.decay": name("kernels", "all"),
    "optimizer.accumulate_steps": either(st.sampled_from([1, 2, 4]), 0, -1, 2.5, "many"),
    "optimizer.ema_decay": fraction(0.0, 0.99),
    "compute_dtype": name("float32", "bfloat16"),
    "profile_steps": either(st.sampled_from(["", "1:2", "3"]), "3:1", "0:2", "1:99", "x:y"),
    "dataset.workers": either(st.just(0), -1, 1.5, "two"),
    "optimizer.grad_clip": off_or(1.0),
    "optimizer.weight_decay": off_or(1e-4),
    "wandb.mode": name("disabled"),
    "layers.type": name("dense"),  # Every config's dense baseline (its other types: their own configs).
    "skip_nonfinite": either(st.booleans(), "maybe"),
    "sharding": name("data", "fsdp"),
}
CONFIGS = {
    "configs/fmnist_mlp_dense.py:smoke": {},
    "configs/fmnist_mlp_maestro.py:smoke": {
        "lowrank.sampler": name("single_layer", "independent", "fixed_ratio", "none"),
        "lowrank.fixed_ratio": fraction(0.05, 1.0),
        "lowrank.group_lasso": off_or(1e-4),
        "lowrank.shrink_every": either(st.integers(0, 4), -1, 2.5, "often"),
        "lowrank.shrink_eps": off_or(0.5),
        "lowrank.dense_warmup_steps": either(st.integers(0, 2), -1, 2.5, "some"),
        "layers.rank_ratio": fraction(0.05, 1.0),
        "layers.init": name("spectral", "random"),
    },
    "configs/fmnist_mlp_nm.py:smoke": {
        "layers.n": either(st.integers(1, 2), 0, -1, 2.5, "many"),
        "layers.m": either(st.sampled_from([4, 8, 16]), 0, -1, 3, 5, 2.5),  # A layer has 784 or 64 inputs.
        "nm.method": name("ste", "srste", "mdgf", "sdgf", "unstructured"),
        "nm.decay": name("exp", "linear"),
        "nm.decay_coef": off_or(0.1),
        "nm.structure": name("stepwise", "geometric", "densify"),
        "nm.dense_warmup": fraction(0.0, 0.3),
        "nm.finetune": fraction(0.0, 0.3),
        "nm.srste_decay": either(st.sampled_from([0.0, 2e-4]), -1.0, float("nan")),
    },
}


@st.composite
def configs(draw):
  """A config, one to three of its fields with generated values, and the fields given an invalid value."""
  config = draw(st.sampled_from(sorted(CONFIGS)))
  fields = {**COMMON, **CONFIGS[config]}
  chosen = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True))
  drawn = {f: draw(fields[f]) for f in chosen}
  return config, {f: v for f, (v, _) in drawn.items()}, sorted(f for f, (_, valid) in drawn.items() if not valid)


def check_one(config: str, overrides: dict, invalid: list[str], tiny_data: dict) -> str:
  """A case of valid values must train to its last step; one with an invalid value must fail with one line naming
  one of the invalid fields, before writing to its workdir. Returns how it ended: "trained" or the error line."""
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "existing"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("a previous run's files")
    before = snapshot(workdir)
    result = run("train.py", "--config", config, "--workdir", str(workdir),
                 overrides={**tiny_data, **STEPS, **overrides}, check=False)
    if not invalid:
      assert result.returncode == 0, f"a valid config was refused: {result.stderr[-3000:]}"
      last = metrics.read(workdir / "metrics.jsonl")[-1]
      assert last["step"] == int(overrides.get("num_steps", STEPS["num_steps"]))
      return "trained"
    assert result.returncode != 0, f"trained with invalid {invalid}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    named = [f for f in invalid if f in result.stderr.strip().splitlines()[-1]]
    assert named, f"the error names none of the invalid {invalid}: {result.stderr.strip().splitlines()[-1]}"
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
  fuzz(tiny_data, max_examples=4, derandomize=True)


@pytest.mark.slow
def test_many_fuzzed_configs(tiny_data):
  fuzz(tiny_data, max_examples=150)
