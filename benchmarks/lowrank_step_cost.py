"""Train-step time of the Maestro MLP before and after shrinking, against dense.

  python benchmarks/lowrank_step_cost.py [--ranks=fc1:149,fc2:53] [--repeats=7] [--steps=20]

All models are timed in this one process on the same batch with the real
train step of train.py; each number is the median over `repeats` timings of
`steps` steps. Prints a table and writes benchmarks/results/lowrank_step_cost.json.
"""

import json
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from configs import fmnist_mlp_maestro  # noqa: E402
from experiment import build, metrics, sharding  # noqa: E402
from experiment import method as method_lib  # noqa: E402
from lowrank import maestro  # noqa: E402
from experiment.step import make_train_step  # noqa: E402

_RANKS = flags.DEFINE_string("ranks", "fc1:149,fc2:53", "Ranks after shrinking (default: fmnist_mlp_maestro's final ranks).")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timings per model; the median is reported.")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timing.")


def time_steps(config, model, batch, mesh) -> float:
  """Median seconds per train step."""
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  method = method_lib.build(config, model) if maestro.lod_layers(model) else method_lib.Method()
  step = make_train_step(method, 0, mesh)
  state = sharding.place((model_state, opt_state), mesh, "data")
  state, m = step(model_def, opt_def, state, batch, jnp.int32(0))  # Compile.
  jax.block_until_ready(m)
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    for i in range(_STEPS.value):
      state, m = step(model_def, opt_def, state, batch, jnp.int32(i))
    jax.block_until_ready(m)
    times.append((time.perf_counter() - start) / _STEPS.value)
  return statistics.median(times)


def main(_):
  config = fmnist_mlp_maestro.get_config()
  mesh = sharding.mesh()
  rng = np.random.default_rng(0)
  batch = sharding.batch_placer(mesh)({"image": rng.random((config.batch_size, 28, 28, 1), np.float32),
                                    "label": rng.integers(0, 10, config.batch_size).astype(np.int32)})
  shrunk_ranks = {k: int(v) for k, v in (kv.split(":") for kv in _RANKS.value.split(","))}
  full = build.model(config)
  shrunk = build.model(config)
  maestro.slice_to(shrunk, shrunk_ranks)
  dense = build.model(config, dense=True)
  factorized = lambda m: sum(int(l.down.size + l.up.size + l.bias.size) for l in maestro.lod_layers(m))
  dense_factorized = sum(int(m.kernel.size + m.bias.size) for m in dense.hidden)
  rows = []
  for name, model in (("dense", dense), ("maestro, full rank (before shrinking)", full),
                      (f"maestro, shrunk to {shrunk_ranks}", shrunk)):
    seconds = time_steps(config, model, batch, mesh)
    size = factorized(model) if maestro.lod_layers(model) else dense_factorized
    rows.append({"model": name, "params in fc1+fc2": size, "vs dense params": size / dense_factorized,
                 "ms/step": seconds * 1e3})
  for row in rows:
    row["vs full rank time"] = row["ms/step"] / rows[1]["ms/step"]
    row["vs dense time"] = row["ms/step"] / rows[0]["ms/step"]
  print(f"Device: {jax.devices()[0].device_kind} x{jax.device_count()}, batch {config.batch_size}, "
        f"median of {_REPEATS.value} x {_STEPS.value} steps")
  print(metrics.table(rows))
  out = pathlib.Path(__file__).parent / "results" / "lowrank_step_cost.json"
  out.parent.mkdir(exist_ok=True)
  out.write_text(json.dumps({"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
                             "machine": platform.processor() or platform.machine(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
