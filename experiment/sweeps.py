"""Sweeps: a config file's `get_sweep()` declares runs (named override sets of
ordinary config fields, in groups) crossed with seeds; each is one plain
train.py command in its own workdir, `<folder>/<name>_s<seed>`.

    def get_sweep():
      return dict(seeds=(0, 1, 2), runs=[
          dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
          dict(name="ste_1of8", group="STE", overrides={"nm.method": "ste", "layers.n": 1, "layers.m": 8}),
          dict(name="ste_1of8_ffn", group="STE, MLP only", arg="ffn_only=true", overrides={...}),
      ])

(`arg`: the config argument of that run, `--config file.py:arg`, for what fields cannot say, e.g. a tuple.)

`run` skips finished runs and resumes interrupted ones (train.py's own
resume), so a sweep can be stopped and restarted at any time; `<folder>/sweep.json`
records the config, every run's command, and the code version.
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import threading

from experiment import metrics
from experiment.config import ConfigError, parse_like
from experiment import files
from experiment.workdir import CONFIG_SCHEMA

ROOT = pathlib.Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  group: str
  seed: int
  overrides: dict
  workdir: pathlib.Path
  config_file: str
  arg: str = ""  # The config argument (file.py:arg).

  @property
  def command(self) -> list[str]:
    """The train.py command of this run (relative to the repository root)."""
    fields = {**self.overrides, "seed": self.seed}
    config = f"{self.config_file}:{self.arg}" if self.arg else self.config_file
    return ["python", "train.py", "--config", config, "--workdir", str(self.workdir),
            *(f"--config.{k}={_flag_value(v)}" for k, v in fields.items())]


def _flag_value(v) -> str:
  return str(v).lower() if isinstance(v, bool) else str(v)


def expand(config_file: str, folder: pathlib.Path, settings: dict | None = None) -> list[Run]:
  """Every run of the sweep `config_file` declares (`file.py:name`: its sweep `name`, `get_sweep("name")`), in
  declaration order, seeds innermost; `settings` (config fields) are added to every run's overrides."""
  config_file, _, name = config_file.partition(":")
  path = ROOT / config_file
  if not path.is_file():
    raise ConfigError(f"--config={config_file}: no such file")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  if spec is None:
    raise ConfigError(f"--config={config_file}: not a Python file (configs/*.py)")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - any error of the user's file: its last line.
    raise ConfigError(f"--config={config_file} fails to load: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"--config={config_file} declares no sweep (a get_sweep() function); configs that do: "
                      f"{', '.join(sorted(p.name for p in (ROOT / 'configs').glob('*.py') if 'def get_sweep' in p.read_text()))}")
  try:
    sweep, config = module.get_sweep(*([name] if name else [])), module.get_config()
    names = [r["name"] for r in sweep["runs"]]
  except Exception as e:  # noqa: BLE001 - as above.
    raise ConfigError(f"--config={config_file}: get_sweep() or get_config() fails: {type(e).__name__}: {e}; a sweep "
                      f"is dict(seeds=(...), runs=[dict(name=..., overrides={{...}}), ...])") from None
  if len(set(names)) != len(names):
    raise ConfigError(f"{config_file}: get_sweep() repeats run names: {sorted({n for n in names if names.count(n) > 1})}")
  for field, value in (settings or {}).items():
    _check_field(config, field, value, f"--set {field}={value}")
  for r in sweep["runs"]:
    try:
      run_config = module.get_config(r["arg"]) if r.get("arg") else config
    except Exception as e:  # noqa: BLE001 - as above.
      raise ConfigError(f"{config_file}: run {r['name']}'s arg={r['arg']!r}: {type(e).__name__}: {e}") from None
    for field, value in r["overrides"].items():
      _check_field(run_config, field, value, f"{config_file}: run {r['name']}'s {field}={value}")
  return [Run(r["name"], r.get("group", r["name"]), int(seed), {**r["overrides"], **(settings or {})},
              folder / f"{r['name']}_s{seed}", config_file, r.get("arg", "")) for r in sweep["runs"]
          for seed in sweep["seeds"]]


def _check_field(config, field: str, value, where: str) -> None:
  """`field` (dotted) is a field of `config`, and `value` (a string, from the command line) reads as its type."""
  node = config
  for key in field.split("."):
    if not hasattr(node, "keys") or key not in node:
      raise ConfigError(f"{where}: no such config field; check the spelling against the config file")
    node = node[key]
  if isinstance(value, str) and isinstance(node, (bool, int, float)):
    try:
      parse_like(node, value, field)
    except ValueError:
      expected = "true or false" if isinstance(node, bool) else type(node).__name__
      raise ConfigError(f"{where}: expected {expected}") from None


def finished(workdir: pathlib.Path) -> bool:
  """Whether the run in `workdir` logged its last step (with its final evaluation); not where its config.json is
  damaged (a warning says so: train.py restores it from a checkpoint when the sweep runs it)."""
  try:
    config = files.read_json(workdir / "config.json", CONFIG_SCHEMA, "")
  except files.DamagedFile as e:
    if e.problem != "missing":
      files.warn(e.path, f"{e.path} is {e.problem}; its run counts as not finished (its train.py restores the file "
                         f"from a checkpoint, or says what to do)")
    return False
  return completed(metrics.read(workdir / "metrics.jsonl"), config["num_steps"])


def completed(rows: list[dict], num_steps: int) -> bool:
  """Whether a run's metrics rows hold its last step's, with its final evaluation."""
  return any(r["step"] == num_steps and any(k.startswith("eval/") for k in r) for r in rows)


# What report.py reads of sweep.json (`record`).
SWEEP_SCHEMA = {"command": str, "code": str, "config": str,
                "runs": [{"name": str, "group": str, "seed": int, "workdir": str, "command": str}]}


def record(runs: list[Run], folder: pathlib.Path, command: list[str], config: str) -> None:
  """<folder>/sweep.json: the sweep command, the code version, every run and its train.py command."""
  folder.mkdir(parents=True, exist_ok=True)
  payload = {"command": shlex.join(command), "code": code_version(), "machine": machine(), "config": config,
             "runs": [{"name": r.name, "group": r.group, "seed": r.seed, "overrides": r.overrides,
                       "workdir": r.workdir.name, "command": shlex.join(r.command)} for r in runs]}
  files.write_atomic(folder / "sweep.json", json.dumps(payload, indent=2) + "\n")


def write_slurm(runs: list[Run], folder: pathlib.Path, sbatch_options: list[str]) -> pathlib.Path:
  """<folder>/sweep.slurm: a SLURM array job whose task i runs `runs[i]`'s train.py command in the repository root
  with this Python, its output in <folder>/<name>_s<seed>.log as `run` writes it (SLURM's own: <folder>/slurm-*.out).
  `sbatch_options` (e.g. --gres=gpu:1) come after the job's own #SBATCH lines, so they can override them."""
  folder.mkdir(parents=True, exist_ok=True)
  path, last = folder / "sweep.slurm", len(runs) - 1
  options = [f"--job-name={folder.resolve().name}", f"--array=0-{last}",
             f"--output={folder.resolve()}/slurm-%A_%a.out", *sbatch_options]
  tasks = [f"  {i}) exec {shlex.join(r.command)} >> {shlex.quote(str(r.workdir))}.log 2>&1 ;;"
           for i, r in enumerate(runs)]
  files.write_atomic(path, "\n".join([
      "#!/bin/bash", *(f"#SBATCH {o}" for o in options),
      f"# One task per run not finished when written (sweep.json lists them all). Submit: sbatch {path}",
      "set -euo pipefail",
      f"cd {shlex.quote(str(ROOT))}",
      f"export PATH={shlex.quote(str(pathlib.Path(sys.executable).parent))}:$PATH",
      'case "${SLURM_ARRAY_TASK_ID:-}" in', *tasks,
      f'  *) echo "error: SLURM_ARRAY_TASK_ID=${{SLURM_ARRAY_TASK_ID:-}}: expected 0-{last} (submit with sbatch)" >&2;'
      f' exit 2 ;;',
      "esac", ""]))
  return path


def code_version() -> str:
  """The git commit, with `+changes` if the working tree differs from it; "unknown" outside a git checkout or,
  with a warning, without git."""
  if shutil.which("git") is None:
    print("warning: git is not on PATH, so this run cannot record its code version (recorded as 'unknown'); "
          "install git (Debian: apt-get install git) to record it", file=sys.stderr)
    return "unknown (no git)"
  git = lambda *args: subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
  commit = git("rev-parse", "--short", "HEAD") or "unknown"
  return commit + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine() -> str:
  """The host, its CPUs, Python, JAX and JAX's devices."""
  import jax

  return (f"{platform.node()}: {platform.machine()} x{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}, JAX {jax.__version__} on {jax.devices()[0].device_kind} "
          f"x{jax.device_count()}")


def run(runs: list[Run], workers: int, env: dict | None = None) -> list[Run]:
  """Runs every unfinished run, `workers` at a time (on the CPU backend each pinned to its own core when several),
  in the environment `env` (default: this process's); prints each command before it starts. Returns the runs that
  failed."""
  import jax
  todo = [r for r in runs if not finished(r.workdir)]
  print(f"{len(runs) - len(todo)} of {len(runs)} runs finished; {len(todo)} to run with {workers} worker(s)", flush=True)
  queue, failed, lock = list(todo), [], threading.Lock()
  pin_cores = workers > 1 and jax.default_backend() == "cpu" and shutil.which("taskset")
  cores = sorted(os.sched_getaffinity(0))  # The cores this process may use (not always 0..n-1).
  env = dict(os.environ if env is None else env)
  if workers > 1:  # One CPU thread each, and on a GPU an equal share of its memory (not JAX's default 75%).
    single_thread = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {single_thread}".strip()
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / workers:.3f}")

  def worker(index: int) -> None:
    while True:
      with lock:
        if not queue:
          return
        r = queue.pop(0)
      print(f"[{index}] {shlex.join(r.command)}", flush=True)
      r.workdir.parent.mkdir(parents=True, exist_ok=True)
      pin = ["taskset", "-c", str(cores[index % len(cores)])] if pin_cores else []
      with (r.workdir.parent / f"{r.workdir.name}.log").open("a") as log:
        code = subprocess.run([*pin, sys.executable, *r.command[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=env).returncode
      ok = code == 0 and finished(r.workdir)
      with lock:
        if not ok:
          failed.append(r)
        left = len(queue)
      print(f"[{index}] {r.workdir}: {'done' if ok else f'FAILED (exit {code}), see {r.workdir}.log'}; "
            f"{left} waiting", flush=True)

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(max(1, workers))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return failed
