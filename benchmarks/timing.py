"""What every benchmark script shares: round-robin timing, XLA's cost of a
compiled function, and the JSON record of the machine it ran on."""

import json
import pathlib
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import jax

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def device() -> str:
  """E.g. `cpu x1`, `NVIDIA H100 80GB HBM3 x1`."""
  return f"{jax.devices()[0].device_kind} x{jax.device_count()}"


def round_robin(runs: dict[str, Callable[[int], None]], repeats: int, steps: int) -> dict[str, float]:
  """Median seconds per step of each `run(steps)` (which must block until its work is done), timed in `repeats`
  rounds that visit every run once, so a drift of the machine hits them all alike."""
  times = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      start = time.perf_counter()
      run(steps)
      times[name].append((time.perf_counter() - start) / steps)
  return {name: statistics.median(t) for name, t in times.items()}


def xla_cost(jitted, *args) -> dict[str, float]:
  """XLA's estimate for `jitted(*args)`: flops, and the bytes its buffers take at the peak (arguments, outputs and,
  where the backend reports them, temporaries; the CPU backend reports no temporaries)."""
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"flops": float(cost["flops"]), "peak bytes (XLA)": float(compiled.memory_analysis().peak_memory_in_bytes)}


def write(name: str, payload: dict) -> pathlib.Path:
  """benchmarks/results/<name>.json with the device, machine, JAX version and code version."""
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=RESULTS.parent).stdout.strip()
  record = {"device": device(), "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
            "commit": commit, **payload}
  RESULTS.mkdir(exist_ok=True)
  out = RESULTS / f"{name}.json"
  out.write_text(json.dumps(record, indent=2) + "\n")
  return out
