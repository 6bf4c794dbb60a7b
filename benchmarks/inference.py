"""Inference of exported models: low-rank at several sizes against dense (batch
1 and 1024, XLA's FLOP ratio beside the measured speedup), and the size of
N:M models packed for deployment against dense.

  python benchmarks/inference.py [--models=mlp,cnn] [--fractions=0.5,0.25,0.1] [--batches=1,1024] [--repeats=7]

Low rank: the model of configs/fmnist_<model>_maestro.py exported by
`experiment.export.sliced` (factors sliced; a layer goes back to one dense kernel
where that is cheaper) with every LoD layer at `fraction` of its dense
parameters, against the dense model of the same config; the jitted forward
pass, one random batch, round-robin timing in one process, median of `repeats`
rounds. N:M: `experiment.export.save_nm` of configs/fmnist_<model>_nm.py at 2:4,
1:4, 1:8 and 1:16 for the MLP and the ViT (values plus uint8 in-group positions). Prints tables and
writes benchmarks/results/inference.json.
"""

import importlib
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import timing  # noqa: E402
from experiment import build, export, metrics  # noqa: E402
from experiment import methods  # noqa: E402
from lowrank import deploy  # noqa: E402

_MODELS = flags.DEFINE_list("models", ["mlp", "cnn"], "Low-rank: mlp, cnn and/or vit (configs/fmnist_<model>_maestro.py).")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.5", "0.25", "0.1"], "Low-rank sizes, as fractions of the dense parameters.")
_BATCHES = flags.DEFINE_list("batches", ["1", "1024"], "Batch sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Rounds; each model's median over them is reported.")
PATTERNS = ((2, 4), (1, 4), (1, 8), (1, 16))
NM_MODELS = ("mlp", "vit")  # configs/fmnist_<model>_nm.py


def forward(model: nnx.Module, x: jax.Array):
  """(run(steps), flops of one call) for the jitted forward pass of `model` on `x`."""
  graphdef, state = nnx.split(model)
  fn = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))

  def run(steps: int) -> None:
    for _ in range(steps):
      y = fn(state, x)
    jax.block_until_ready(y)

  run(1)  # Compile.
  return run, timing.xla_cost(fn, state, x)["flops"]


def lowrank_rows(name: str, fractions: list[float], batches: list[int]) -> list[dict]:
  config = importlib.import_module(f"configs.fmnist_{name}_maestro").get_config()
  dense = build.model(config, dense=True)
  full = build.model(config)
  exported = {f"{f:g} of dense": export.sliced(full, config, deploy.param_fraction_ranks(full, f))[0]
              for f in fractions}
  rows = []
  for batch in batches:
    x = np.random.default_rng(0).random(build.example_input(config, batch).shape, np.float32)
    runs, flops = {}, {}
    for label, model in {"dense": dense, **exported}.items():
      runs[label], flops[label] = forward(model, x)
    steps = max(1, round(2000 / batch))  # ~20 ms of work per round at batch 1024 on a CPU core.
    seconds = timing.round_robin(runs, _REPEATS.value, steps)
    for label, s in seconds.items():
      model = dense if label == "dense" else exported[label]
      predicted, measured = flops["dense"] / flops[label], seconds["dense"] / s
      rows.append({"model": name, "exported": label, "batch": batch, "params": build.count_params(model),
                   "ms/batch": 1e3 * s, "FLOP-predicted speedup": predicted, "measured speedup": measured,
                   "of predicted": measured / predicted})
  return rows


def nm_rows(name: str) -> list[dict]:
  module = importlib.import_module(f"configs.fmnist_{name}_nm")
  rows = []
  for n, m in PATTERNS:
    config = module.get_config(f"method=srste,n={n},m={m}")
    model = build.model(config)
    methods.build(config, model).restore(model, nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param), {})
    with tempfile.TemporaryDirectory() as folder:
      size = export.save_nm(pathlib.Path(folder), model, config, {})["bytes"]
      file_bytes = (pathlib.Path(folder) / "weights.npz").stat().st_size
    rows.append({"model": name, "pattern": f"{n}:{m}", "N:M kernels dense (MB)": size["nm_kernels_dense"] / 1e6,
                 "N:M kernels packed (MB)": size["nm_kernels_packed"] / 1e6,
                 "kernels packed/dense": size["nm_kernels_packed"] / size["nm_kernels_dense"],
                 "model packed/dense": size["model_packed"] / size["model_dense"], "weights.npz (MB)": file_bytes / 1e6})
  return rows


def main(_):
  fractions, batches = [float(f) for f in _FRACTIONS.value], [int(b) for b in _BATCHES.value]
  lowrank = [row for name in _MODELS.value for row in lowrank_rows(name, fractions, batches)]
  nm = [row for name in NM_MODELS for row in nm_rows(name)]
  print(f"Device: {timing.device()}; median of {_REPEATS.value} round-robin rounds")
  print("\nExported low-rank models against dense:")
  print(metrics.table(lowrank))
  print("\nN:M models packed (values float32 + positions uint8) against dense float32:")
  print(metrics.table(nm))
  print(f"Wrote {timing.write('inference', {'repeats': _REPEATS.value, 'lowrank': lowrank, 'nm': nm})}")


if __name__ == "__main__":
  app.run(main)
