"""The one metrics writer: console, `<workdir>/metrics.jsonl` (the source of
truth) and wandb. Metric names are flat paths such as `train/loss`."""

import json
import math
import pathlib
import re
import sys
import uuid

import tqdm

from experiment.files import read_rows, warn, write_atomic


WANDB_ID = "[0-9a-f]{12}"  # The wandb run id `_wandb_id` keeps.


class MetricsWriter:

  def __init__(self, workdir: pathlib.Path, config, *, resume_step: int, enabled: bool = True):
    self.path, self.enabled, self.run = workdir / "metrics.jsonl", enabled, None
    if not enabled:
      return
    if self.path.exists():  # Drop rows a killed run logged after its last checkpoint (and a line it cut short);
      rows = read(self.path, complete_only=True) if resume_step else []  # a fresh start logs step 0 again.
      rows = [r for r in rows if r["step"] <= resume_step]
      write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))
    elif resume_step:
      print(f"warning: {self.path} is missing; the rows of steps up to {resume_step} are lost, and logging goes on "
            f"from there", file=sys.stderr)
    if config.wandb.mode != "disabled":
      import wandb  # Imported only when used: it takes a few seconds.
      self.run = wandb.init(project=config.wandb.project, name=config.wandb.name or workdir.name, dir=workdir,
                            mode=config.wandb.mode, config=config.to_dict(), id=_wandb_id(workdir), resume="allow")

  def write(self, step: int, metrics: dict[str, float], *, console: bool = True) -> None:
    if not self.enabled:
      return
    row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")
    if self.run is not None:
      self.run.log(metrics, step=step)
    if console:
      tqdm.tqdm.write(f"step {step}: " + "  ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items())))

  def close(self) -> None:
    if self.run is not None:
      self.run.finish()


def read(path: pathlib.Path, *, complete_only: bool = False) -> list[dict]:
  """The rows of a metrics.jsonl (none if there is none; a damaged one's readable rows, with a warning);
  `complete_only`: skip a last line a kill cut short."""
  return read_rows(path, _is_row, complete_only=complete_only)


def _is_row(row: dict) -> bool:
  """A row as `write` writes it: an integer step, and numbers."""
  number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
  return isinstance(row.get("step"), int) and all(map(number, row.values()))


def _wandb_id(workdir: pathlib.Path) -> str:
  """A run id kept in the workdir, so a resumed run continues the same wandb run (a new one, with a warning, where
  the file is damaged)."""
  path = workdir / "wandb_id"
  if path.is_file() and re.fullmatch(WANDB_ID, kept := path.read_bytes().decode(errors="replace").strip()):
    return kept
  if path.exists():
    warn(path, f"{path} is damaged (not a wandb run id); this run logs to a new wandb run")
  write_atomic(path, uuid.uuid4().hex[:12])
  return path.read_text()


def _fmt(v: float) -> str:
  return f"{v:.4g}" if isinstance(v, float) and not math.isnan(v) and abs(v) < 1e6 else str(v)


def table(rows: list[dict[str, object]]) -> str:
  """A Markdown table of rows with the same keys."""
  keys = list(rows[0])
  cells = [[_fmt(r[k]) if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
  widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
  line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
  return "\n".join([line(keys), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
