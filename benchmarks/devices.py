"""Train-step throughput on 8 devices against 1, data parallel and FSDP, and
whether the 8-device run computes the same losses.

  python benchmarks/devices.py [--devices=1,8] [--steps=30] [--repeats=5]

Each device count runs in its own process (on a CPU: forced host devices,
XLA_FLAGS=--xla_force_host_platform_device_count=N; on a GPU box: the first N
GPUs, if it has them). In each, the MLP of the dense, Maestro and N:M (SR-STE
2:4) configs trains `steps` steps with the real train step on the same fixed
sequence of random batches of 256 (split over the `data` axis), state replicated
(data) or split (fsdp). Reported: examples per second (median of `repeats`
rounds of 5 steps after the trajectory), and the largest relative difference of
the losses from the 1-device run. On a 2-core CPU, 8 host devices share the
same 2 cores: no speedup is expected, only the same numbers. Prints a table and
writes benchmarks/results/devices.json.
"""

import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

_DEVICES = flags.DEFINE_list("devices", ["1", "8"], "Device counts; the first is the reference.")
_STEPS = flags.DEFINE_integer("steps", 30, "Steps of the compared loss trajectory.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timing rounds of 5 steps after the trajectory.")
_CHILD = flags.DEFINE_bool("child", False, "Internal: measure on this process's devices, print JSON.")
CONFIGS = {"dense": ("fmnist_mlp_dense", None), "Maestro": ("fmnist_mlp_maestro", None),
           "N:M SR-STE 2:4": ("fmnist_mlp_nm", "method=srste,n=2,m=4")}
LAYOUTS = ("data", "fsdp")
BATCH = 256


def measure() -> dict:
  """{method/layout: {"losses": [...], "seconds per step": s}} on this process's devices."""
  import importlib

  import jax
  import jax.numpy as jnp

  from benchmarks import timing
  from experiment import build, sharding

  mesh = sharding.mesh()
  results = {}
  for name, (module, arg) in CONFIGS.items():
    config = importlib.import_module(f"configs.{module}").get_config(arg)
    batches = [timing.random_batch(config, mesh, BATCH, seed=i) for i in range(_STEPS.value)]
    for layout in LAYOUTS:
      _, step, model_def, opt_def, state = timing.train_setup(config, build.model(config), mesh, layout)
      box = {"state": state, "losses": []}

      def run(batches):
        for i, batch in enumerate(batches):
          box["state"], m = step(model_def, opt_def, box["state"], batch, jnp.int32(i + 1))
          box["losses"].append(m["train/loss"])
        jax.block_until_ready(box["losses"])

      run(batches)
      losses = [float(x) for x in box["losses"]]
      seconds = timing.round_robin({"steps": lambda n: run(batches[:n])}, _REPEATS.value, 5)["steps"]
      results[f"{name}/{layout}"] = {"losses": losses, "seconds per step": seconds}
  return {"device": timing.device(), "results": results}


def main(_):
  if _CHILD.value:
    print(json.dumps(measure()))
    return
  from benchmarks import timing
  from experiment import metrics

  runs = {}
  for n in _DEVICES.value:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "CUDA_VISIBLE_DEVICES":
           os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(int(n)))))}
    out = subprocess.run([sys.executable, __file__, "--child", f"--steps={_STEPS.value}", f"--repeats={_REPEATS.value}"],
                         env=env, capture_output=True, text=True, check=True)
    runs[n] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{n} device(s): {runs[n]['device']}", file=sys.stderr)
  reference = runs[_DEVICES.value[0]]["results"]
  rows = []
  for n, run in runs.items():
    for key, r in run["results"].items():
      ref = reference[key]
      rows.append({"devices": run["device"], "method/layout": key,
                   "examples/s": BATCH / r["seconds per step"],
                   f"vs {_DEVICES.value[0]} device(s)": ref["seconds per step"] / r["seconds per step"],
                   f"max rel. loss difference over {_STEPS.value} steps":
                   max(abs(a / b - 1) for a, b in zip(r["losses"], ref["losses"]))})
  print(metrics.table(rows))
  print(f"Wrote {timing.write('devices', {'batch': BATCH, 'steps': _STEPS.value, 'rows': rows})}")


if __name__ == "__main__":
  app.run(main)
