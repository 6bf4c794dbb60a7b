"""Train-step time of N:M training against the dense step of the same model.

  python benchmarks/nm_step_cost.py [--models=vit,mlp] [--repeats=7] [--steps=10]

The real jitted train step of train.py (mask recomputed from the dense weights
every step, gradient rule, α, flip and gradient-norm metrics), one process, one
random batch. The variants are timed round-robin, `steps` steps each per round,
so drifts of the machine hit them alike; a variant's time is the median of its
`repeats` rounds and its ratio is to the dense median of the same run. The
metrics step (gradients and masks recorded for the log, run once per
`log_every` steps) is timed the same way and amortized into the "+ metrics" column. SDGF
rows time the first frame of the phase (7:8 stepwise, 8:64 geometric), the
widest groups of their schedules. Prints a table and writes
benchmarks/results/nm_step_cost.json.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks import timing  # noqa: E402
from configs import fmnist_mlp_nm, fmnist_vit_nm  # noqa: E402
from experiment import build, metrics, sharding  # noqa: E402
from experiment.config import ConfigError  # noqa: E402
from experiment.step import count_compilations, make_observe_step  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["vit", "mlp"], "vit (configs/fmnist_vit_nm.py) and/or mlp (fmnist_mlp_nm.py).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Rounds; each variant's median over them is reported.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per variant per round.")
CONFIGS = {"vit": fmnist_vit_nm, "mlp": fmnist_mlp_nm}
VARIANTS = {  # name -> config argument
    "dense": "method=dense",
    "STE 2:4": "method=ste,n=2,m=4", "SR-STE 2:4": "method=srste,n=2,m=4", "MDGF-exp 2:4": "method=mdgf,n=2,m=4",
    "STE 1:8": "method=ste,n=1,m=8", "SR-STE 1:8": "method=srste,n=1,m=8", "MDGF-exp 1:8": "method=mdgf,n=1,m=8",
    "MDGF-linear 1:8": "method=mdgf,decay=linear,n=1,m=8",
    "SDGF-stepwise 1:8 (7:8)": "method=sdgf,structure=stepwise,n=1,m=8",
    "SDGF-geometric 1:8 (8:64)": "method=sdgf,structure=geometric,n=1,m=8",
    "unstructured 1/8": "method=unstructured,n=1,m=8",
}


def stepper(config, batch, mesh):
  """Functions running `steps` real train steps, or observe steps, from their own state (each blocks until done);
  the train step's compilation count and XLA cost."""
  compiled = count_compilations()
  method, train_step, model_def, opt_def, state = timing.train_setup(config, build.model(config), mesh)
  observe_step = make_observe_step(method, config.seed, mesh)
  run = timing.Stepper(train_step, model_def, opt_def, state, batch)

  def observe(steps: int) -> None:
    for _ in range(steps):
      run.state = (observe_step(model_def, run.state[0], batch, jnp.int32(run.step)), run.state[1])
    jax.block_until_ready(run.state)

  run(2)  # Compile, warm up.
  if method.observes:
    observe(1)
  cost = timing.xla_cost(train_step, *run.args())
  return run, observe if method.observes else None, lambda: compiled["train_step"], cost


def main(_):
  mesh = sharding.mesh()
  results = {}
  for name in _MODELS.value:
    module = CONFIGS[name]
    config = module.get_config()
    batch = timing.random_batch(config, mesh, config.batch_size)
    steppers = {}
    for v, arg in VARIANTS.items():
      try:
        steppers[v] = stepper(module.get_config(arg), batch, mesh)
      except ConfigError as e:  # E.g. geometric SDGF's 8:64 on the MLP's 784 inputs.
        print(f"{name}, {v}: skipped: {e}")
    runs = {v: run for v, (run, _, _, _) in steppers.items()}
    runs |= {(v, "observe"): observe for v, (_, observe, _, _) in steppers.items() if observe}
    times = timing.round_robin(runs, _REPEATS.value, _STEPS.value)
    dense = times["dense"]
    rows = []
    for v, (_, _, compilations, cost) in steppers.items():
      step = times[v]
      with_log = step + times.get((v, "observe"), 0.0) / config.log_every
      rows.append({"model": name, "variant": v, "ms/step": 1e3 * step, "vs dense": step / dense,
                   f"vs dense, + metrics step every {config.log_every}": with_log / dense,
                   "compilations": compilations(), "peak MiB (XLA)": cost["peak bytes (XLA)"] / 2**20})
    results[name] = {"batch": config.batch_size, "params": build.count_params(build.model(config)), "rows": rows}
    print(f"\n{name}: {results[name]['params']:,} parameters, batch {config.batch_size}")
    print(metrics.table(rows))
  print(f"\nDevice: {timing.device()}; median of {_REPEATS.value} round-robin rounds of {_STEPS.value} steps")
  out = timing.write("nm_step_cost", {"repeats": _REPEATS.value, "steps": _STEPS.value, "models": results})
  print(f"Wrote {out}")


if __name__ == "__main__":
  app.run(main)
