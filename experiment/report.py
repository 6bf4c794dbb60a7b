"""The report of a sweep folder (`python eval.py report <folder>`): one table
row per run name, mean ± std over its seeds, and the plots that compare
methods: accuracy against the N:M level per method, accuracy against
parameters for low-rank runs (with dense and extra baselines), and the rank
and sparsity trajectories of chosen runs. Written to `<folder>/report.md`
and `<folder>/plots/`, with the code version, the machine and the commands."""

import dataclasses
import json
import pathlib
import statistics

from experiment import metrics, plots, sweeps
from experiment.config import ConfigError
from experiment.plots import plt


@dataclasses.dataclass
class Result:
  """One finished run: its place in the sweep, config and metrics."""
  name: str
  group: str
  seed: int
  workdir: pathlib.Path
  config: dict
  rows: list[dict]

  @property
  def final(self) -> dict:
    return self.rows[-1]

  @property
  def layers(self) -> str:
    return self.config["layers"]["type"]

  @property
  def params(self) -> float:
    """Parameters at the end: in use (low rank: the kept ranks), not pruned (N:M)."""
    total = self.final.get("params/effective", self.rows[0].get("params/total", float("nan")))
    return total * (1 - self.final.get("sparsity/total", 0.0))


def collect(folder: pathlib.Path) -> tuple[dict, list[Result], list[str]]:
  """The sweep record, its finished runs, and the workdir names of runs not finished."""
  try:
    sweep = json.loads((folder / "sweep.json").read_text())
  except FileNotFoundError:
    raise ConfigError(f"{folder} has no sweep.json: run the sweep first (python sweep.py --config configs/<file>.py "
                      f"--folder {folder})") from None
  results, missing = [], []
  for r in sweep["runs"]:
    workdir = folder / r["workdir"]
    if not sweeps.finished(workdir):
      missing.append(r["workdir"])
      continue
    results.append(Result(r["name"], r["group"], r["seed"], workdir, json.loads((workdir / "config.json").read_text()),
                          metrics.read(workdir / "metrics.jsonl")))
  return sweep, results, missing


def shape_changes(rows: list[dict]) -> int:
  """How often a run's logged ranks or N:M pattern changed from one logged step to the next (shrinks, frames)."""
  shape = lambda r: tuple(sorted((k, v) for k, v in r.items() if k.startswith(("rank/", "nm/n", "nm/m"))))
  logged = [shape(r) for r in rows if "train/loss" in r]
  return sum(a != b for a, b in zip(logged, logged[1:]))


def by_name(results: list[Result]) -> dict[str, list[Result]]:
  out: dict[str, list[Result]] = {}
  for r in results:
    out.setdefault(r.name, []).append(r)
  return out


def metric(results: list[Result]) -> str:
  """The metric the plots show: bits per character for text, else accuracy."""
  return "eval/bits_per_char" if any("eval/bits_per_char" in r.final for r in results) else "eval/accuracy"


def shown(key: str, value: float) -> str:
  """`value` of `key` as the report writes it (accuracy in %)."""
  return f"{100 * value:.2f}%" if key == "eval/accuracy" else f"{value:.4f}"


def mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
  if len(values) == 1:
    return f"{scale * values[0]:.{digits}f}"
  return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def table(results: list[Result]) -> list[dict]:
  """One row per run name: seeds, every final eval metric (accuracy in %), parameters, sparsity, wall time."""
  rows = []
  for name, runs in by_name(results).items():
    finals = [r.final for r in runs]
    row = {"run": name, "group": runs[0].group, "seeds": len(runs)}
    for key in sorted({k for f in finals for k in f if k.startswith("eval/")}):
      values = [f[key] for f in finals if key in f]
      pct = key == "eval/accuracy"
      row[f"{key.removeprefix('eval/')}{' (%)' if pct else ''}"] = mean_std(values, 100 if pct else 1, 2 if pct else 4)
    row["params (nonzero)"] = f"{statistics.mean(r.params for r in runs):,.0f}"
    for key, label, fmt in (("sparsity/total", "sparsity", ".3f"), ("time/train_s", "train time (s)", ".0f")):
      values = [f[key] for f in finals if key in f]
      row[label] = format(statistics.mean(values), fmt) if values else "—"
    rows.append(row)
  return rows


def nm_table(results: list[Result], key: str) -> list[dict]:
  """N:M sweeps: one row per method (and dense), one column per N:M level: `key` as mean ± std (seeds)."""
  groups, dense = _groups(results, "nm"), [r.final[key] for r in results if r.layers == "dense" and key in r.final]
  levels = sorted({(r.config["layers"]["n"], r.config["layers"]["m"]) for r in results if r.layers == "nm"},
                  key=lambda nm: nm[0] / nm[1], reverse=True)
  if not levels:  # No N:M runs (e.g. a low-rank sweep): no table.
    return []
  scale = 100 if key == "eval/accuracy" else 1
  cell = lambda values: f"{mean_std(values, scale, 2 if scale == 100 else 4)} ({len(values)})" if values else "—"
  rows = [{"method": "dense", **{f"{n}:{m}": cell(dense) for n, m in levels}}] if dense else []
  for group, names in groups.items():
    by_level = {(rs[0].config["layers"]["n"], rs[0].config["layers"]["m"]): [r.final[key] for r in rs]
                for rs in names.values()}
    rows.append({"method": group, **{f"{n}:{m}": cell(by_level.get((n, m), [])) for n, m in levels}})
  return rows


def _groups(results: list[Result], kind: str) -> dict[str, dict[str, list[Result]]]:
  """group -> run name -> seeds, of the runs with `kind` layers."""
  out: dict[str, dict[str, list[Result]]] = {}
  for r in results:
    if r.layers == kind:
      out.setdefault(r.group, {}).setdefault(r.name, []).append(r)
  return out


def _dense_line(ax, results: list[Result], key: str, scale: float) -> None:
  dense = [r.final[key] * scale for r in results if r.layers == "dense" and key in r.final]
  if dense:
    mean = statistics.mean(dense)
    seeds = f"{len(dense)} seed{'s' if len(dense) > 1 else ''}"
    ax.axhline(mean, color="black", ls="--", lw=1, label=f"dense ({mean:.2f}, {seeds})")


def plot_nm(results: list[Result], folder: pathlib.Path, key: str = "eval/accuracy") -> pathlib.Path | None:
  """Test accuracy against the N:M level (sparsity 1 − N/M of the N:M layers), one line per method."""
  groups = _groups(results, "nm")
  if not groups:
    return None
  scale = 100 if key == "eval/accuracy" else 1
  fig, ax = plt.subplots(figsize=(7, 4.5))
  levels = {}
  for group, names in groups.items():
    points = []
    for runs in names.values():
      n, m = runs[0].config["layers"]["n"], runs[0].config["layers"]["m"]
      values = [r.final[key] * scale for r in runs]
      levels[1 - n / m] = f"{n}:{m}"
      points.append((1 - n / m, statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0))
    points.sort()
    ax.errorbar(*zip(*points), marker="o", capsize=3, label=group)
  _dense_line(ax, results, key, scale)
  ax.set_xticks(sorted(levels), [levels[x] for x in sorted(levels)])
  ax.set(xlabel="N:M (sparsity of the N:M layers →)", ylabel=label(key),
         title="N:M methods by sparsity level (mean ± std over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plots.save(fig, folder, "nm_levels.png")


def plot_params(results: list[Result], folder: pathlib.Path, baselines: dict[str, list[tuple[float, float]]],
                key: str = "eval/accuracy") -> pathlib.Path | None:
  """Test accuracy against parameters of the low-rank runs (mean ± std per run name), the dense runs, and
  `baselines` (name -> [(params, accuracy)]: e.g. post-hoc SVD truncation of the dense run)."""
  groups = _groups(results, "lowrank")
  if not groups:
    return None
  scale = 100 if key == "eval/accuracy" else 1
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for group, names in groups.items():
    points = sorted((statistics.mean(r.params for r in runs), statistics.mean(r.final[key] * scale for r in runs),
                     statistics.stdev(r.final[key] * scale for r in runs) if len(runs) > 1 else 0.0)
                    for runs in names.values())
    ax.errorbar(*zip(*points), marker="o", capsize=3, label=group)
  for name, points in baselines.items():
    ax.plot(*zip(*sorted((p, a * scale) for p, a in points)), marker="s", ls=":", label=name)
  dense = [r for r in results if r.layers == "dense"]
  if dense:
    ax.errorbar([statistics.mean(r.params for r in dense)], [statistics.mean(r.final[key] * scale for r in dense)],
                marker="*", ms=12, color="black", ls="none", label="dense")
  ax.set(xscale="log", xlabel="parameters (nonzero)", ylabel=label(key),
         title=f"low rank: {label(key).removeprefix('test ')} against size")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plots.save(fig, folder, "params.png")


def plot_trajectories(results: list[Result], folder: pathlib.Path) -> pathlib.Path | None:
  """Kept ranks (low rank: the sum over layers) and N:M sparsity, against the step, of `results`."""
  lowrank = [r for r in results if r.layers == "lowrank"]
  nm = [r for r in results if r.layers == "nm"]
  panels = [p for p in (("kept rank (sum over layers)", lowrank), ("sparsity of all parameters", nm)) if p[1]]
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
  for ax, (title, runs) in zip(axes[0], panels):
    for r in runs:
      if title.startswith("kept"):
        keys = [k for k in r.final if k.startswith("rank/")]
        steps = [row["step"] for row in r.rows if keys[0] in row]
        ax.plot(steps, [sum(row[k] for k in keys) for row in r.rows if keys[0] in row], label=f"{r.name} s{r.seed}")
      else:
        ax.plot(*plots.series(r.rows, "sparsity/total"), label=f"{r.name} s{r.seed}")
    ax.set(xlabel="step", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return plots.save(fig, folder, "trajectories.png")


def label(key: str) -> str:
  return {"eval/accuracy": "test accuracy (%)", "eval/bits_per_char": "test bits per character (lower: better)"}.get(
      key, f"test {key.removeprefix('eval/')}")
