"""The N:M ablation of the README: the ViT (configs/fmnist_vit_nm.py) dense, and
at each N:M level with STE, SR-STE, MDGF (linear, exp) and SDGF (stepwise,
geometric), over seeds. Runs what is missing (a finished run is skipped, an
interrupted one resumes), then prints the table of test accuracy (mean ± std).

  python scripts/nm_ablation.py --levels=2:4,1:8,1:16 --seeds=0,1 --workers=2 [--root=runs/nm]

Each worker is one process pinned to one core (on 2 cores two single-threaded
runs finish sooner than two-threaded runs one after the other). Every run is
also a plain train.py command, printed before it starts.
"""

import itertools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from experiment import metrics  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
METHODS = {  # row name -> config argument
    "STE": "method=ste", "SR-STE": "method=srste", "MDGF-linear": "method=mdgf,decay=linear",
    "MDGF-exp": "method=mdgf,decay=exp", "SDGF-stepwise": "method=sdgf,structure=stepwise",
    "SDGF-geometric": "method=sdgf,structure=geometric",
}
_LEVELS = flags.DEFINE_list("levels", ["1:8", "1:16"], "N:M levels.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
_METHODS = flags.DEFINE_list("methods", list(METHODS), "Rows (besides dense).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Runs at a time, each on its own core.")
_ROOT = flags.DEFINE_string("root", "runs/nm", "Folder of the runs.")
_RUN = flags.DEFINE_bool("run", True, "Run what is missing (--norun: only print the table).")


def runs() -> list[tuple[str, str, str, str]]:
  """(row, level, seed, config argument) of every run."""
  out = [("dense", "-", s, f"method=dense,seed={s}") for s in _SEEDS.value]
  for level, name, seed in itertools.product(_LEVELS.value, _METHODS.value, _SEEDS.value):
    n, m = level.split(":")
    out.append((name, level, seed, f"{METHODS[name]},n={n},m={m},seed={seed}"))
  return out


def workdir(row: str, level: str, seed: str) -> pathlib.Path:
  name = row.lower() if level == "-" else f"{row.lower()}_{level.replace(':', 'of')}"
  return pathlib.Path(_ROOT.value) / f"{name}_s{seed}"


def final_accuracy(folder: pathlib.Path) -> float | None:
  path = folder / "metrics.jsonl"
  if not path.exists():
    return None
  rows = metrics.read(path)
  config = json.loads((folder / "config.json").read_text())
  done = [r for r in rows if r["step"] == config["num_steps"] and "eval/accuracy" in r]
  return done[-1]["eval/accuracy"] if done else None


def run_all(todo: list[tuple[str, str, str, str]]) -> None:
  queue, lock = list(todo), threading.Lock()

  def worker(core: int) -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    while True:
      with lock:
        if not queue:
          return
        row, level, seed, arg = queue.pop(0)
      folder = workdir(row, level, seed)
      cmd = [sys.executable, "train.py", "--config", f"configs/fmnist_vit_nm.py:{arg}", "--workdir", str(folder)]
      print(" ".join(cmd[1:]), flush=True)
      folder.mkdir(parents=True, exist_ok=True)
      with (folder.parent / f"{folder.name}.log").open("a") as log:
        result = subprocess.run(["taskset", "-c", str(core % os.cpu_count()), *cmd], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
      print(f"{folder}: {'done' if result.returncode == 0 else f'FAILED ({result.returncode}), see its .log'}", flush=True)

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(_WORKERS.value)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()


def table() -> str:
  results: dict[tuple[str, str], list[float]] = {}
  for row, level, seed, _ in runs():
    acc = final_accuracy(workdir(row, level, seed))
    if acc is not None:
      results.setdefault((row, level), []).append(100 * acc)
  fmt = lambda v: "—" if not v else f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} (n={len(v)})" if len(v) > 1 else f"{v[0]:.2f} (n=1)"
  dense = fmt(results.get(("dense", "-"), []))
  lines = ["| method | " + " | ".join(_LEVELS.value) + " |", "|---|" + "---|" * len(_LEVELS.value),
           "| dense | " + " | ".join(dense for _ in _LEVELS.value) + " |"]
  lines += [f"| {name} | " + " | ".join(fmt(results.get((name, lv), [])) for lv in _LEVELS.value) + " |"
            for name in _METHODS.value]
  return "\n".join(lines)


def main(_):
  os.chdir(ROOT)
  if _RUN.value:
    todo = [r for r in runs() if final_accuracy(workdir(*r[:3])) is None]
    print(f"{len(runs()) - len(todo)} runs finished, {len(todo)} to run")
    run_all(todo)
  print("Fashion-MNIST test accuracy (%) of configs/fmnist_vit_nm.py, mean ± std over seeds:")
  print(table())


if __name__ == "__main__":
  app.run(main)
