"""Loop efficiency: how close train.py comes to its bare jitted step, and how fast the input pipeline is.

  python benchmarks/loop.py [--runs=mlp,vit,maestro,srste] [--repeats=3] [--steps=400]

Loop efficiency = the bare step's time / train.py's time per step. The bare
step is train.py's jitted train step on one placed batch, `steps` dispatched
back to back and waited for once, in this process. train.py runs the same
config (`steps` steps on Fashion-MNIST, logging every `log_every` = 50 steps,
evaluation and checkpoint only at the last step) in a subprocess; its time per
step is read off metrics.jsonl (`time/train_s` between log steps; the first
interval, which holds the compilation, is left out), so it counts everything
the loop does between log steps: reading and placing batches, dispatch, the
observe step and logging at log steps. The two alternate in `repeats` rounds;
each is the median of its rounds. Maestro runs without shrinking (a shrink
recompiles; that cost is benchmarks/train_runs.py's).

The input pipeline: the train iterator alone (reading, collating, no device)
delivering Fashion-MNIST batches of the same size, against the rate the MLP's
bare step consumes them. Prints a table and writes benchmarks/results/loop.json.
"""

import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks import timing  # noqa: E402
from configs import fmnist_mlp_dense, fmnist_mlp_maestro, fmnist_mlp_nm, fmnist_vit_dense  # noqa: E402
from experiment import build, metrics, sharding  # noqa: E402
import data  # noqa: E402

_RUNS = flags.DEFINE_list("runs", ["mlp", "vit", "maestro", "srste"], "Which of RUNS to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Rounds (bare step, then train.py); medians over them.")
_STEPS = flags.DEFINE_integer("steps", 400, "Steps of each train.py run and of each bare-step round (ViT: a half).")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Global batch.")
_OVERRIDES = flags.DEFINE_list("set", [], "More config overrides FIELD=VALUE for both (e.g. compute_dtype=bfloat16).")
ROOT = pathlib.Path(__file__).resolve().parent.parent
LOG_EVERY = 50
RUNS = {  # name -> (config module, its file, its argument, overrides)
    "mlp": (fmnist_mlp_dense, "configs/fmnist_mlp_dense.py", None, {}),
    "vit": (fmnist_vit_dense, "configs/fmnist_vit_dense.py", None, {}),
    "maestro": (fmnist_mlp_maestro, "configs/fmnist_mlp_maestro.py", None, {"lowrank.shrink_every": 0}),
    "srste": (fmnist_mlp_nm, "configs/fmnist_mlp_nm.py", "method=srste,n=2,m=4", {}),
}


def overrides(name: str) -> dict:
  steps = _STEPS.value // 2 if name == "vit" else _STEPS.value
  return {**RUNS[name][3], "num_steps": steps, "batch_size": _BATCH.value, "log_every": LOG_EVERY,
          "eval_every": steps, "checkpoint_every": steps, "wandb.mode": "disabled",
          **dict(kv.split("=", 1) for kv in _OVERRIDES.value)}


def config_of(name: str):
  module, _, arg, _ = RUNS[name]
  config = module.get_config(arg)
  for field, value in overrides(name).items():
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == "true"
  return config


def bare_step(name: str):
  """`run(steps)`: train.py's jitted step, `steps` times on one placed batch, waited for at the end."""
  config, mesh = config_of(name), sharding.mesh()
  _, train_step, model_def, opt_def, state = timing.train_setup(config, build.model(config), mesh)
  run = timing.Stepper(train_step, model_def, opt_def, state, timing.random_batch(config, mesh, config.batch_size))
  run(2)  # Compiled.
  return run


def loop_step(name: str, workdir: pathlib.Path) -> float:
  """train.py's median seconds per step between log steps (after the first)."""
  _, config_file, arg, _ = RUNS[name]
  cmd = [sys.executable, "train.py", "--config", config_file + (f":{arg}" if arg else ""), "--workdir", str(workdir),
         *(f"--config.{k}={v}" for k, v in overrides(name).items())]
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
  times = [(r["step"], r["time/train_s"]) for r in metrics.read(workdir / "metrics.jsonl") if "time/train_s" in r]
  return statistics.median((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(times, times[1:]))


def iterator_rate(batch_size: int, batches: int = 500) -> float:
  """Seconds per batch of the train iterator alone (Fashion-MNIST, read and collated on the host)."""
  config = fmnist_mlp_dense.get_config()
  train = build.datasets(config).train
  it = data.train_iterator(train, batch_size, seed=0)
  next(it)  # The split is read into memory.
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return (time.perf_counter() - start) / batches


def main(_):
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in _RUNS.value:
      run = bare_step(name)
      steps = overrides(name)["num_steps"]
      bare, loop = [], []
      for r in range(_REPEATS.value):
        start = time.perf_counter()
        run(steps)
        bare.append((time.perf_counter() - start) / steps)
        loop.append(loop_step(name, pathlib.Path(tmp) / f"{name}{r}"))
        print(f"{name} round {r}: bare {bare[-1] * 1e3:.2f} ms, train.py {loop[-1] * 1e3:.2f} ms", file=sys.stderr)
      rows.append({"run": name, "batch": _BATCH.value, "bare step (ms)": round(statistics.median(bare) * 1e3, 2),
                   "train.py per step (ms)": round(statistics.median(loop) * 1e3, 2),
                   "loop efficiency": round(statistics.median(b / t for b, t in zip(bare, loop)), 3),
                   "lowest, highest": f"{min(b / t for b, t in zip(bare, loop)):.3f}, "
                                      f"{max(b / t for b, t in zip(bare, loop)):.3f}"})
  per_batch = iterator_rate(_BATCH.value)
  mlp = next((r["bare step (ms)"] for r in rows if r["run"] == "mlp"), None)
  pipeline = {"iterator per batch (ms)": round(per_batch * 1e3, 3),
              **({"MLP step / iterator batch": round(mlp / (per_batch * 1e3), 1)} if mlp else {})}
  print(f"Device: {timing.device()}; overrides: {_OVERRIDES.value or 'none'}")
  print(metrics.table(rows))
  print(metrics.table([pipeline]))
  print(f"Wrote {timing.write('loop', {'overrides': _OVERRIDES.value, 'rows': rows, 'pipeline': pipeline})}")


if __name__ == "__main__":
  app.run(main)
