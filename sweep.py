"""Run the sweep a config file declares (its `get_sweep()`): every override set
crossed with every seed, each a plain train.py run in `<folder>/<name>_s<seed>`.

  python sweep.py --config configs/fmnist_vit_nm.py --folder runs/sweeps/vit_nm --workers 2
  python sweep.py --config configs/fmnist_vit_nm.py:srste --folder runs/sweeps/vit_srste   # a named sweep
  python sweep.py --config configs/fmnist_vit_nm.py --folder runs/sweeps/vit_nm --list   # commands only
  python sweep.py --config configs/fmnist_vit_nm.py --folder runs/sweeps/vit_nm --emit=slurm  # then: sbatch ...
  python eval.py report runs/sweeps/vit_nm                                                # table and plots

Finished runs are skipped and interrupted ones resume, so the same command
restarts a sweep at any time; a finished sweep does no training. With
`--workers` > 1 each run is single-threaded and pinned to its own core. Each
run's output goes to `<folder>/<name>_s<seed>.log`; `<folder>/sweep.json`
records every run's train.py command and the code version. `--emit=slurm`
writes `<folder>/sweep.slurm` instead, a SLURM array job of the runs not finished.
"""

import os
import pathlib
import shlex
import sys

from absl import app, flags

from experiment import sweeps
from experiment.config import ConfigError, parse_flags
from experiment.workdir import machine_failure

# The runs get the environment as it is; this process only names the device (sweep.json), so on a GPU it takes
# none of the memory the runs need.
RUN_ENV = dict(os.environ)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_CONFIG = flags.DEFINE_string("config", None, "A config file with a get_sweep() function (configs/*.py); "
                              "file.py:name picks its sweep `name` (get_sweep(name)) where it declares several.")
_FOLDER = flags.DEFINE_string("folder", None, "The sweep's folder: one workdir per run, sweep.json, the report.")
_WORKERS = flags.DEFINE_integer("workers", 1, "Runs at a time.")
_ONLY = flags.DEFINE_list("only", [], "Run only these run names (all seeds); default: all.")
_SEEDS = flags.DEFINE_list("seeds", [], "Run only these of the sweep's seeds (e.g. --seeds=0 for a first look); "
                           "default: all.")
_SET = flags.DEFINE_multi_string("set", [], "FIELD=VALUE added to every run's config, for where the sweep runs "
                                  "rather than what it tests: e.g. --set wandb.mode=online, --set wandb.mode=disabled.")
_LIST = flags.DEFINE_bool("list", False, "Print every run's train.py command and whether it is finished; run nothing.")
_EMIT = flags.DEFINE_string("emit", "", "slurm: run nothing; write <folder>/sweep.slurm, a SLURM array job with one "
                            "task per chosen run not finished, to submit with sbatch.")
_SLURM_ARGS = flags.DEFINE_string("slurm_args", "", "With --emit=slurm: sbatch options for every task, e.g. "
                                  "--slurm_args='--gres=gpu:1 --time=4:00:00'.")


def main(argv) -> None:
  del argv
  folder = pathlib.Path(_FOLDER.value)
  try:
    if folder.exists() and not folder.is_dir():
      raise ConfigError(f"--folder={folder} is a file; pass a folder for the sweep's runs")
    if _WORKERS.value < 1:
      raise ConfigError(f"--workers={_WORKERS.value} must be >= 1")
    bad = [s for s in _SET.value if "=" not in s]
    if bad:
      raise ConfigError(f"--set={bad[0]}: expected FIELD=VALUE, e.g. --set wandb.mode=disabled")
    runs = sweeps.expand(_CONFIG.value, folder, dict(s.split("=", 1) for s in _SET.value))
    unknown = set(_ONLY.value) - {r.name for r in runs}
    if unknown:
      raise ConfigError(f"--only: no runs named {sorted(unknown)}; the sweep's runs are {sorted({r.name for r in runs})}")
    seeds = sorted({r.seed for r in runs})
    if bad := [s for s in _SEEDS.value if not s.isdigit() or int(s) not in seeds]:
      raise ConfigError(f"--seeds: {bad[0]} is not one of the sweep's seeds {seeds}")
    names, seeds = set(_ONLY.value) or {r.name for r in runs}, set(map(int, _SEEDS.value)) or set(seeds)
    if _EMIT.value not in ("", "slurm"):
      raise ConfigError(f"--emit={_EMIT.value}: expected slurm (the one job script sweep.py writes)")
    try:
      sbatch_options = shlex.split(_SLURM_ARGS.value)
    except ValueError as e:
      raise ConfigError(f"--slurm_args={_SLURM_ARGS.value}: {e}") from None
    if sbatch_options and not _EMIT.value:
      raise ConfigError("--slurm_args: only with --emit=slurm")
    if bad := [o for o in sbatch_options if not o.startswith("-")]:
      raise ConfigError(f"--slurm_args: {bad[0]!r} is not an sbatch option; write each as --name=value, "
                        f"e.g. --slurm_args='--gres=gpu:1 --time=4:00:00'")
  except ConfigError as e:
    sys.exit(f"error: {e}")
  if _LIST.value:
    for r in runs:
      print(f"{'finished' if sweeps.finished(r.workdir) else 'to run  '}  {shlex.join(r.command)}")
    return
  sweeps.record(runs, folder, ["python", *sys.argv], _CONFIG.value)
  chosen = [r for r in runs if r.name in names and r.seed in seeds]
  if _EMIT.value:
    todo = [r for r in chosen if not sweeps.finished(r.workdir)]
    if not todo:
      print(f"All {len(chosen)} chosen runs are finished; nothing to submit. Report: python eval.py report {folder}")
      return
    script = sweeps.write_slurm(todo, folder, sbatch_options)
    print(f"Wrote {script}: a SLURM array job of {len(todo)} task(s), the chosen runs not finished. "
          f"Submit it with: sbatch {script}")
    return
  failed = sweeps.run(chosen, _WORKERS.value, RUN_ENV)
  if failed:
    sys.exit(f"error: {len(failed)} run(s) failed: {', '.join(r.workdir.name for r in failed)}; their .log files "
             f"in {folder} say why; run the same command to retry them")
  left = sum(not sweeps.finished(r.workdir) for r in runs)
  print(f"{len(runs) - left} of {len(runs)} runs finished{f' ({left} not chosen)' if left else ''}. "
        f"Report: python eval.py report {folder}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "folder"])
  try:
    app.run(main, flags_parser=parse_flags)
  except OSError as e:  # The machine's failure (a full disk, a removed folder): one line.
    sys.exit("error: " + machine_failure(f"accessing {e.filename or _FOLDER.value}", e,
                                         "run the same command: finished runs are skipped, the others resume"))
