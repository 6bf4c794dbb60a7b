"""Train-step time of low-rank (Maestro) models at several ranks against dense,
with the speedup XLA's FLOP count predicts beside the measured one.

  python benchmarks/lowrank_step_cost.py [--fractions=0.5,0.25,0.1] [--batches=256,1024] [--repeats=7] [--steps=10]
  python benchmarks/lowrank_step_cost.py --config=configs/cifar10_resnet18_maestro.py --batches=128 \
      --steps_kinds="no sampling,Maestro (OD + distillation)" --repeats=3 --steps=2 --nocompilations

The model of `--config` (default configs/fmnist_mlp_maestro.py: the MLP
784-1024-1024-10, fc1 and fc2 low rank, the head dense) at full rank (where
training starts) and shrunk so its low-rank layers hold `--fractions` of their
dense parameters, each with the train steps `--steps_kinds` of: no rank
sampling (sampler none), ordered dropout (single_layer), and the Maestro step
(ordered dropout + self-distillation, a second forward pass). Every step is
the real jitted train step of train.py (group lasso included), one random
batch, timed round-robin in one process (median of `repeats` rounds of `steps`
steps). "FLOP-predicted" is dense flops / flops of the step; "of predicted" is
the measured speedup over that.

Then compilations: 100 steps with rank sampling compile once; each shrink once
more. Prints tables and writes benchmarks/results/lowrank_step_cost[_<model>].json.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import timing  # noqa: E402
from experiment import build, metrics, sharding  # noqa: E402
from experiment import config as config_lib  # noqa: E402
from experiment import methods  # noqa: E402
from experiment.step import count_compilations, make_train_step  # noqa: E402
from lowrank import deploy, maestro  # noqa: E402

_FRACTIONS = flags.DEFINE_list("fractions", ["0.5", "0.25", "0.1"], "Shrunk sizes, as fractions of the dense parameters.")
_BATCHES = flags.DEFINE_list("batches", ["256", "1024"], "Batch sizes (the config's is 256), each timed on its own.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Rounds; each step's median over them is reported.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per step variant per round.")
_CONFIG = config_flags.DEFINE_config_file("config", "configs/fmnist_mlp_maestro.py", "A Maestro config (configs/*.py).")
_KINDS = flags.DEFINE_list("steps_kinds", ["no sampling", "ordered dropout", "Maestro (OD + distillation)"],
                           "Which train steps to time at each size.")
_COMPILATIONS = flags.DEFINE_bool("compilations", True, "Also count compilations across two shrinks.")
STEPS = {"no sampling": dict(sampler="none", distill=False), "ordered dropout": dict(sampler="single_layer", distill=False),
         "Maestro (OD + distillation)": dict(sampler="single_layer", distill=True)}


def trainer(config, model, batch, mesh, method=None):
  """(run(steps), the jitted step, its arguments at step 0) for `model` trained by `config`."""
  _, step, model_def, opt_def, state = timing.train_setup(config, model, mesh, method=method)
  run = timing.Stepper(step, model_def, opt_def, state, batch)
  run(1)  # Compile.
  return run, step, run.args()


def compilations(config, batch, mesh, ranks: dict[float, dict[str, int]]) -> dict[str, int]:
  """Compilations of the ordered-dropout train step after 100 steps, then after each of two shrinks (10 steps each)."""
  model = build.model(config)
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  step = make_train_step(methods.build(config, model), 0, mesh, learning_rate=build.learning_rate(config))
  compiled, counts = count_compilations(), {}
  for event, steps, shrink_to in (("100 steps with rank sampling", 100, None), ("after shrink 1", 10, 0.5),
                                  ("after shrink 2", 10, 0.25)):
    if shrink_to:
      maestro.slice_to(model, ranks[shrink_to], optimizer)
    (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
    state = sharding.place((model_state, opt_state), mesh, "data")
    for i in range(steps):
      state, _ = step(model_def, opt_def, state, batch, jnp.int32(i))
    nnx.update(model, state[0])
    nnx.update(optimizer, state[1])
    counts[event] = compiled["train_step"]
  return counts


def step_cost_rows(config, batch, mesh, ranks: dict[float, dict[str, int]]) -> list[dict]:
  """One row per model and step, timed round-robin against dense on `batch` (low rank: at full rank and at each
  fraction of `ranks`)."""
  runs, costs, params = {}, {}, {}
  dense = build.model(config, dense=True)
  runs["dense"], step, args = trainer(config, dense, batch, mesh, method=methods.Method())
  costs["dense"], params["dense"] = timing.xla_cost(step, *args), build.count_params(dense)
  for fraction in [1.0, *ranks]:
    for step_name in _KINDS.value:
      c = config.copy_and_resolve_references()
      c.lowrank.update(STEPS[step_name])
      if fraction < 1:
        c.layers.ranks = ranks[fraction]
      model = build.model(c)
      name = f"{'full rank' if fraction == 1 else f'{fraction:g} of dense'}, {step_name}"
      runs[name], step, args = trainer(c, model, batch, mesh)
      costs[name], params[name] = timing.xla_cost(step, *args), build.count_params(model)
  seconds = timing.round_robin(runs, _REPEATS.value, _STEPS.value)
  rows = []
  for name, s in seconds.items():
    predicted = costs["dense"]["flops"] / costs[name]["flops"]
    measured = seconds["dense"] / s
    rows.append({"batch": batch["targets"].shape[0], "model, step": name, "params": params[name],
                 "vs dense params": params[name] / params["dense"], "ms/step": 1e3 * s,
                 "GFLOP/step": costs[name]["flops"] / 1e9, "FLOP-predicted speedup": predicted,
                 "measured speedup": measured, "of predicted": measured / predicted,
                 "peak MiB (XLA)": costs[name]["peak bytes (XLA)"] / 2**20})
  return rows


def main(_):
  config = config_lib.in_steps(_CONFIG.value, train_examples=50_000)  # A paper config's epochs: the length of
  # the run (which changes the learning rate, not a step's cost).
  mesh = sharding.mesh()
  full = build.model(config)
  ranks = {float(f): deploy.param_fraction_ranks(full, float(f)) for f in _FRACTIONS.value}
  rows = [row for b in _BATCHES.value for row in step_cost_rows(config, timing.random_batch(config, mesh, int(b)), mesh,
                                                                ranks)]
  print(f"Device: {timing.device()}, median of {_REPEATS.value} round-robin rounds of {_STEPS.value} steps; ranks at "
        f"each fraction: " + ", ".join(f"{f:g}: {r}" for f, r in ranks.items()))
  print(metrics.table(rows))
  compiled = {}
  if _COMPILATIONS.value:
    shrinks = {f: deploy.param_fraction_ranks(full, f) for f in (0.5, 0.25)}
    compiled = compilations(config, timing.random_batch(config, mesh, config.batch_size), mesh, shrinks)
    print("Compilations of the ordered-dropout train step: " + ", ".join(f"{k}: {v}" for k, v in compiled.items()))
  model = "" if config.model.name == "mlp" else f"_{config.model.name}{config.model.get('depth', '')}"
  record = {"command": " ".join(["python", *sys.argv]), "repeats": _REPEATS.value, "steps": _STEPS.value,
            "ranks": ranks, "rows": rows, "compilations": compiled}
  out = timing.write(f"lowrank_step_cost{model}", record)
  print(f"Wrote {out}")


if __name__ == "__main__":
  app.run(main)
