"""What a checkpoint costs the training loop: train.py's time per step with a checkpoint every `every` steps
against none between the same log steps.

  python benchmarks/checkpoint_cost.py [--config=configs/fmnist_mlp_dense.py] [--every=50] [--steps=400] [--repeats=3]

Both runs log every `every` steps (evaluation only at the last step); the time per step is read off
metrics.jsonl (`time/train_s` between log steps, the first interval left out), so the checkpointed run's
intervals each hold one save (made right after the log step). The two alternate in `repeats` rounds; the cost of
one checkpoint is the median over rounds of (checkpointed − plain) × `every`. Prints a table and writes
benchmarks/results/checkpoint_cost.json.
"""

import pathlib
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from absl import app, flags  # noqa: E402

from benchmarks import timing  # noqa: E402
from experiment import metrics  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/fmnist_mlp_dense.py", "Config file (and :argument).")
_EVERY = flags.DEFINE_integer("every", 50, "Steps between checkpoints (and between log steps).")
_STEPS = flags.DEFINE_integer("steps", 400, "Steps of each run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Rounds; medians over them.")
ROOT = pathlib.Path(__file__).resolve().parent.parent


def per_step(workdir: pathlib.Path, checkpoint_every: int) -> tuple[float, float]:
  """(train.py's median seconds per step between log steps, the checkpoint's size in MB)."""
  cmd = [sys.executable, "train.py", "--config", _CONFIG.value, "--workdir", str(workdir),
         f"--config.num_steps={_STEPS.value}", f"--config.log_every={_EVERY.value}",
         f"--config.eval_every={_STEPS.value}", f"--config.checkpoint_every={checkpoint_every}",
         "--config.wandb.mode=disabled"]
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
  times = [(r["step"], r["time/train_s"]) for r in metrics.read(workdir / "metrics.jsonl") if "time/train_s" in r]
  size = sum(p.stat().st_size for p in (workdir / "checkpoints" / str(_STEPS.value)).rglob("*") if p.is_file())
  return statistics.median((t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(times, times[1:])), size / 1e6


def main(_):
  plain, saving, size = [], [], 0.0
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(_REPEATS.value):
      plain.append(per_step(pathlib.Path(tmp) / f"plain{r}", _STEPS.value)[0])
      t, size = per_step(pathlib.Path(tmp) / f"saving{r}", _EVERY.value)
      saving.append(t)
      print(f"round {r}: {plain[-1] * 1e3:.2f} ms/step without, {saving[-1] * 1e3:.2f} with checkpoints",
            file=sys.stderr)
  cost = statistics.median((s - p) * _EVERY.value for p, s in zip(plain, saving))
  row = {"config": _CONFIG.value, "checkpoint (MB)": round(size, 1), "every": _EVERY.value,
         "ms/step without": round(statistics.median(plain) * 1e3, 2),
         "ms/step with": round(statistics.median(saving) * 1e3, 2), "ms per checkpoint": round(cost * 1e3, 1)}
  print(f"Device: {timing.device()}")
  print(metrics.table([row]))
  print(f"Wrote {timing.write('checkpoint_cost', {'rows': [row]})}")


if __name__ == "__main__":
  app.run(main)
