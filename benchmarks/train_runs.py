"""Compilations and peak memory of whole train.py runs, one per method.

  python benchmarks/train_runs.py [--steps=100] [--workdir=/tmp/train_runs]

Each run is `train.py` on Fashion-MNIST (the MLP configs, batch 256, `steps`
steps, logging every step) in a fresh workdir. From its metrics.jsonl: the
shape events (Maestro shrinks that changed a rank, N:M frame changes), the
compilations of the train step (one, plus one per event, is what train.py
promises), and the peak memory (the process's resident memory; on a GPU or TPU
also the device's peak). Prints a table and writes
benchmarks/results/train_runs.json.
"""

import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks import timing  # noqa: E402
from experiment import metrics, report  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 100, "Steps per run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs go (default: a temporary folder, deleted).")
ROOT = pathlib.Path(__file__).resolve().parent.parent
RUNS = {  # name -> config, overrides (shape events every quarter of the run)
    "dense": ("configs/fmnist_mlp_dense.py", {}),
    "Maestro (ordered dropout, shrink every 25%)": ("configs/fmnist_mlp_maestro.py", {"lowrank.shrink_every": 0.25,
                                                                                      "lowrank.shrink_eps": 0.05}),
    "N:M SR-STE 2:4": ("configs/fmnist_mlp_nm.py:method=srste,n=2,m=4", {}),
    "N:M SDGF stepwise 1:8": ("configs/fmnist_mlp_nm.py:method=sdgf,n=1,m=8", {}),
}


def train(name: str, workdir: pathlib.Path) -> dict:
  config, overrides = RUNS[name]
  overrides = {k: round(v * _STEPS.value) if isinstance(v, float) and k.endswith("_every") else v
               for k, v in overrides.items()}
  overrides |= {"num_steps": _STEPS.value, "log_every": 1, "eval_every": _STEPS.value,
                "checkpoint_every": _STEPS.value, "wandb.mode": "disabled"}
  cmd = [sys.executable, "train.py", "--config", config, "--workdir", str(workdir),
         *(f"--config.{k}={v}" for k, v in overrides.items())]
  print(" ".join(cmd[1:]), file=sys.stderr)
  start = time.time()
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
  rows = metrics.read(workdir / "metrics.jsonl")
  last = rows[-1]
  return {"run": name, "steps": _STEPS.value, "shape events": report.shape_changes(rows),
          "compilations": int(last["compiles/train_step"]), "host peak MiB": last["memory/host_peak_mib"],
          "device peak MiB": last.get("memory/device_peak_mib", "n/a (CPU)"),
          "wall time (s)": time.time() - start, "test accuracy": last["eval/accuracy"]}


def main(_):
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(_WORKDIR.value or tmp)
    rows = [train(name, root / f"run{i}") for i, name in enumerate(RUNS)]
  print(f"Device: {timing.device()}")
  print(metrics.table(rows))
  print(f"Wrote {timing.write('train_runs', {'rows': rows})}")


if __name__ == "__main__":
  app.run(main)
