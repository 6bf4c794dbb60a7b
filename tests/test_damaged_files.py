"""Every small file a run, a sweep or an export reads back, damaged in each way a power cut, a full disk or a careless
edit leaves one; then the entry points run on the damaged folder, in this process: eval.py on the run and on an
export, eval.py report, sweep.py and the resume (train.py). Each succeeds (with a warning naming what it rebuilt
or skipped) or ends in one error line naming the file; never a traceback, no file that was whole is lost, and
after the resume the run is whole and finished again."""

import contextlib
import importlib.util
import io
import json
import pathlib
import shutil

import numpy as np
import pytest

from experiment import config as config_lib
from experiment import metrics, sweeps
from tests.conftest import main_here, run, train_here

RUN = "sweep/dense_s0"
# Each file read back (relative to a folder holding a sweep of one finished run, and an export of an N:M run): what
# it holds (a JSON object, JSON lines, a line of text), and how a warning or error about it names it.
FILES = {
    "sweep/sweep.json": ("object", "sweep.json"),
    f"{RUN}/config.json": ("object", "config.json"),
    f"{RUN}/metrics.jsonl": ("lines", "metrics.jsonl"),
    f"{RUN}/launches.jsonl": ("lines", "launches.jsonl"),
    f"{RUN}/checkpoint_manifests/4.json": ("object", "checkpoint step 4"),
    f"{RUN}/checkpoints/4/method/metadata": ("object", "checkpoint step 4"),  # The method's state.
    f"{RUN}/checkpoints/4/window/metadata": ("object", "checkpoint step 4"),  # The metrics window, the counters.
    f"{RUN}/wandb_id": ("text", "wandb_id"),
    "export/export.json": ("object", "export.json"),
    "export/config.json": ("object", "export/config.json"),
}
# A file's bytes as each kind of damage leaves them (None: deleted), given what it holds.
DAMAGES = {
    "truncated": lambda data, kind: data[:len(data) // 2],
    "NUL-filled": lambda data, kind: bytes(len(data)),
    "random bytes": lambda data, kind: np.random.default_rng(len(data)).bytes(len(data)),
    "wrong JSON type": lambda data, kind: b"[]\n" * (data.count(b"\n") if kind == "lines" else 1),
    "missing keys": lambda data, kind: b"{}\n" * (data.count(b"\n") if kind == "lines" else 1),
    "deleted": lambda data, kind: None,
}
# Damage that is no damage to what reads the file: a run made before launches.jsonl existed has none, and a run
# that never logged to wandb has no wandb_id.
SILENT = {(f"{RUN}/launches.jsonl", "deleted"), (f"{RUN}/wandb_id", "deleted")}

SWEEP_CONFIG = """
from configs import fmnist_mlp_nm

def get_config(arg=None):
  c = fmnist_mlp_nm.get_config("smoke")
  c.dataset.update({dataset})
  c.num_steps, c.checkpoint_every, c.keep_checkpoints, c.eval_every, c.log_every = 4, 2, 2, 2, 1
  c.layers.type = arg or "dense"
  return c

def get_sweep():
  return dict(seeds=(0,), runs=[dict(name="dense", group="dense", overrides={{}})])
"""


@pytest.fixture(scope="module")
def whole(tiny_data, tmp_path_factory) -> pathlib.Path:
  """A folder holding a sweep of one finished dense run (checkpoints at steps 2 and 4) and an export of an N:M run
  (outside the folder: its checkpoints are not this test's)."""
  root = tmp_path_factory.mktemp("whole")
  dataset = {k.removeprefix("dataset."): v for k, v in tiny_data.items()}
  (root / "sweep_config.py").write_text(SWEEP_CONFIG.format(dataset=dataset))
  train_here(_config(root), root / RUN, {"seed": 0})  # As sweep.py's command for it.
  metrics._wandb_id(root / RUN)  # Kept by a run that logs to wandb.
  assert entry(root, "sweep.py", "--emit=slurm")[0] is None  # Writes sweep.json; nothing to submit.
  nm = tmp_path_factory.mktemp("nm_run")
  train_here(_config(root, "nm"), nm)
  assert entry(root, "eval.py", f"--workdir={nm}", f"--export={root / 'export'}")[0] is None
  return root


def _config(root: pathlib.Path, arg: str | None = None):
  spec = importlib.util.spec_from_file_location("sweep_config", root / "sweep_config.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def entry(root: pathlib.Path, script: str, *args: str) -> tuple[str | int | None, str]:
  """`python <script> <args>` in this process (sweep.py with its --config and --folder): None (success) or its
  error line, and what it wrote to stderr before."""
  if script == "sweep.py":
    args = (f"--config={root / 'sweep_config.py'}", f"--folder={root / 'sweep'}", *args)
  result = main_here(script, *args, check=False)
  if result.returncode == 0:
    return None, result.stderr
  *before, last = result.stderr.rstrip("\n").split("\n")
  return last, "\n".join(before)


def resume(root: pathlib.Path) -> tuple[str | None, str]:
  """The run's train.py command again, in this process: None or the error line, and stderr."""
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
    try:
      train_here(_config(root), root / RUN, {"seed": 0})
      code = None
    except config_lib.ConfigError as e:  # train.py's main: `error: <message>`.
      code = f"error: {e}"
  return code, stderr.getvalue()


def files_of(folder: pathlib.Path) -> set[pathlib.Path]:
  return {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_file_is_rebuilt_skipped_or_one_line(whole, tmp_path, name, damage):
  folder = tmp_path / "damaged"
  shutil.copytree(whole, folder)
  path, (kind, named) = folder / name, FILES[name]
  damaged = DAMAGES[damage](path.read_bytes(), kind)
  path.unlink() if damaged is None else path.write_bytes(damaged)
  before = files_of(folder) - {pathlib.Path(name)}

  outcomes = {
      "eval.py": entry(folder, "eval.py", f"--workdir={folder / RUN}"),
      "eval.py --exported": entry(folder, "eval.py", f"--exported={folder / 'export'}"),
      "eval.py report": entry(folder, "eval.py", "report", str(folder / "sweep")),
      "sweep.py": entry(folder, "sweep.py", "--emit=slurm"),  # Reads what `sweep.py` does, starts no training.
      "train.py (resume)": resume(folder),
  }
  if name.endswith("wandb_id"):  # Read only by a run that logs to wandb: what it reads, directly.
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
      kept = metrics._wandb_id(folder / RUN)
    assert kept == (folder / name).read_text() and len(kept) == 12, kept
    outcomes["wandb run id"] = (None, stderr.getvalue())

  for where, (code, stderr) in outcomes.items():
    assert "Traceback" not in stderr, f"{where}:\n{stderr}"
    if code not in (None, 0):
      assert isinstance(code, str) and "\n" not in code and code.startswith("error: "), f"{where}: {code!r}"
      assert named in code + stderr, f"{where}: neither the error nor a warning names {named}: {code}"
  said = "\n".join(f"{code}\n{stderr}" for code, stderr in outcomes.values())
  assert named in said or (name, damage) in SILENT, f"no warning or error names {named}:\n{said}"
  aside = pathlib.Path(RUN, "damaged_checkpoints", "4")  # Where the resume moved a damaged checkpoint 4.
  moved = {p for p in before if p.parts[:4] == (*RUN.split("/"), "checkpoints", "4")
           and (folder / aside / pathlib.Path(*p.parts[4:])).is_file()}
  moved |= {pathlib.Path(RUN, "checkpoint_manifests", "4.json")} & {
      p for p in before if (folder / aside.with_name("4.manifest.json")).is_file()}
  assert before - files_of(folder) - moved == set()
  assert sweeps.finished(folder / RUN)  # The resume restored config.json, or logged the last row again, or retrained.
  assert (folder / RUN / "plots" / "training.png").is_file()
  read = lambda root: json.loads((root / RUN / "config.json").read_text())
  assert read(folder) == read(whole)


@pytest.mark.slow  # The default test runs sweep.py --emit=slurm, which reads the same files and starts no training.
@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", [f"{RUN}/config.json", f"{RUN}/metrics.jsonl", "sweep/sweep.json"])
def test_a_sweep_over_a_damaged_run_repairs_it_through_its_train_py(whole, tmp_path, name, damage):
  folder = tmp_path / "damaged"
  shutil.copytree(whole, folder)
  path = folder / name
  damaged = DAMAGES[damage](path.read_bytes(), FILES[name][0])
  path.unlink() if damaged is None else path.write_bytes(damaged)
  out = run("sweep.py", f"--config={folder / 'sweep_config.py'}", f"--folder={folder / 'sweep'}")
  log = folder / "sweep" / "dense_s0.log"  # The run's train.py output, where the sweep ran it again.
  assert "Traceback" not in out.stderr + (log.read_text() if log.exists() else "")
  assert "1 of 1 runs finished" in out.stdout and sweeps.finished(folder / RUN)
