"""What every benchmark script shares: the real train step on a random batch,
round-robin timing, XLA's cost of a compiled function, and the JSON record of
the machine it ran on."""

import json
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiment import build, sharding, sweeps
from experiment import methods
from experiment.step import flops, make_train_step

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def device() -> str:
  """E.g. `cpu x1`, `NVIDIA H100 80GB HBM3 x1`."""
  return f"{jax.devices()[0].device_kind} x{jax.device_count()}"


def random_batch(config, mesh, size: int, seed: int = 0) -> dict:
  """A batch of `size` random inputs in [0, 1) and labels for `config`'s (image) dataset, split over the mesh."""
  spec, rng = build.dataset(config), np.random.default_rng(seed)
  return sharding.batch_placer(mesh)({"inputs": rng.random((size, *spec.input_shape), np.float32),
                                     "targets": rng.integers(0, spec.num_classes, size).astype(np.int32)})


def train_setup(config, model, mesh, layout: str = "data", method=None):
  """train.py's jitted train step for `model` trained by `config` (`method`: default, the config's), and its
  arguments but the batch and step: (method, step, model_def, opt_def, placed state)."""
  method = method or methods.build(config, model)
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  method.restore(model, optimizer, {})
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  state = sharding.place((model_state, opt_state), mesh, layout)
  step = make_train_step(method, config.seed, mesh, layout, learning_rate=build.learning_rate(config))
  return method, step, model_def, opt_def, state


class Stepper:
  """`stepper(steps)`: `steps` calls of a jitted train step from its own `state` and `step`, waited for once at the
  end (the device runs them back to back, as train.py's loop dispatches them)."""

  def __init__(self, train_step, model_def, opt_def, state, batch, step: int = 1):
    self.train_step, self.graphs, self.state, self.batch, self.step = train_step, (model_def, opt_def), state, batch, step

  def __call__(self, steps: int) -> None:
    for _ in range(steps):
      self.state, m = self.train_step(*self.graphs, self.state, self.batch, jnp.int32(self.step))
      self.step += 1
    jax.block_until_ready(m)

  def args(self) -> tuple:
    """The step's arguments now (to cost it)."""
    return (*self.graphs, self.state, self.batch, jnp.int32(self.step))


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
  return {"flops": flops(jitted, *args), "peak bytes (XLA)": float(compiled.memory_analysis().peak_memory_in_bytes)}


def write(name: str, payload: dict) -> pathlib.Path:
  """benchmarks/results/<name>.json with the device, machine, JAX version and code version."""
  record = {"device": device(), "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
            "commit": sweeps.code_version(), **payload}
  RESULTS.mkdir(exist_ok=True)
  out = RESULTS / f"{name}.json"
  out.write_text(json.dumps(record, indent=2) + "\n")
  return out
