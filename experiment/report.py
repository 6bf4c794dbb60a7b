"""The report of a sweep folder (`python eval.py report <folder>`): one table
row per run name, mean ± std over its seeds, and the plots that compare
methods: accuracy against the N:M level per method, accuracy against
parameters for low-rank runs (with dense and extra baselines), and the rank
and sparsity trajectories of chosen runs. Written to `<folder>/report.md`
and `<folder>/plots/`, with the code version, the machine and the commands."""

import dataclasses
import math
import pathlib
import statistics

from scipy import stats

from experiment import checkpoint, files, metrics, plots, sweeps
from experiment.config import ConfigError
from experiment.plots import label, pyplot


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
  def low_rank(self) -> bool:
    """It logged ranks (rank/<layer>): a low-rank method, whichever (the report names none)."""
    return any(k.startswith("rank/") for k in self.final)

  @property
  def sparse(self) -> bool:
    """It logged an N:M pattern (nm/n)."""
    return "nm/n" in self.final

  @property
  def dense(self) -> bool:
    return not (self.low_rank or self.sparse)

  @property
  def train_flops(self) -> float:
    """Training FLOPs: XLA's count of each compiled step summed over the run, less the forward FLOPs N:M hardware
    saves (nm/forward_flops_saved: binary N:M masks at N/M); nan for a run older than either count."""
    saved = self.final.get("nm/forward_flops_saved", math.nan if self.sparse else 0.0)
    return self.final.get("flops/total", math.nan) - saved

  @property
  def flip_rate(self) -> float:
    """The mean over its log steps of nm/flip_rate (the fraction of mask entries changed since the previous log
    step); nan for a run without N:M masks."""
    values = [r["nm/flip_rate"] for r in self.rows if "nm/flip_rate" in r]
    return statistics.mean(values) if values else math.nan

  @property
  def frozen(self) -> bool:
    """An N:M mask frozen from early on: not one entry flipped at any log step after the first quarter of the run
    (where decoupled SR-STE's decay is so strong that a pruned weight never comes back)."""
    later = [r["nm/flip_rate"] for r in self.rows if "nm/flip_rate" in r and r["step"] > self.rows[-1]["step"] / 4]
    return bool(later) and max(later) == 0

  @property
  def params(self) -> float:
    """Parameters at the end: in use (low rank: the kept ranks), not pruned (N:M)."""
    total = self.final.get("params/effective", self.rows[0].get("params/total", float("nan")))
    return total * (1 - self.final.get("sparsity/total", 0.0))


def collect(folder: pathlib.Path) -> tuple[dict, list[Result], list[str]]:
  """The sweep record, its finished runs, and the workdir names of runs not finished."""
  if not (folder / "sweep.json").exists():
    raise ConfigError(f"{folder} has no sweep.json: run the sweep first (python sweep.py --config configs/<file>.py "
                      f"--folder {folder})")
  sweep = files.read_json(folder / "sweep.json", sweeps.SWEEP_SCHEMA, "run the sweep's command again (python sweep.py "
                          "--config <its config> --folder <this folder>): it rewrites the file and skips finished runs")
  results, missing = [], []
  for r in sweep["runs"]:
    workdir = folder / r["workdir"]
    try:
      config, _ = checkpoint.saved_config(workdir)
    except files.DamagedFile as e:
      files.warn(e.path, f"{e}; its run is left out of this report")
      config = None
    rows = metrics.read(workdir / "metrics.jsonl") if config else []
    if config is None or not sweeps.completed(rows, config["num_steps"]):
      last = workdir / "checkpoint_manifests" / f"{config and config['num_steps']}.json"
      if last.is_file() and checkpoint.Checkpoints(workdir).is_whole(config["num_steps"]):
        files.warn(workdir / "metrics.jsonl", f"{workdir / 'metrics.jsonl'} has lost the last step's row of a finished "
                                              "run; its run is left out: its train.py command logs the row again")
      missing.append(r["workdir"])
      continue
    results.append(Result(r["name"], r["group"], r["seed"], workdir, config, rows))
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
    for key, column, fmt in (("sparsity/total", "sparsity", ".3f"), ("time/train_s", "train time (s)", ".0f")):
      values = [f[key] for f in finals if key in f]
      row[column] = format(statistics.mean(values), fmt) if values else "—"
    row["train FLOPs"] = _flops(runs)
    row["flip rate"] = _flip_rate(runs)
    rows.append(row)
  return _without_empty(rows, "flip rate")


def _without_empty(rows: list[dict], column: str) -> list[dict]:
  """`rows` without `column` where no row has a value in it (a flip rate in a sweep without N:M runs)."""
  return rows if any(row[column] != "—" for row in rows) else [{k: v for k, v in row.items() if k != column}
                                                                for row in rows]


def _flip_rate(runs: list[Result]) -> str:
  """The runs' mean mask flip rate over the run (`Result.flip_rate`), "frozen" where every seed's mask froze
  early, — without N:M masks."""
  known = [r.flip_rate for r in runs if math.isfinite(r.flip_rate)]
  if not known:
    return "—"
  return f"{statistics.mean(known):.2e}" + (" (frozen)" if all(r.frozen for r in runs) else "")


def _flops(runs: list[Result]) -> str:
  """The mean training FLOPs of the runs that counted them (the seeds of one config count the same), or —."""
  known = [r.train_flops for r in runs if math.isfinite(r.train_flops)]
  return f"{statistics.mean(known):.3g}" if known else "—"


def welch(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
  """mean(a) − mean(b) and its `confidence` interval by Welch's t (unequal variances); nan bounds where either has
  fewer than 2 values."""
  diff = statistics.mean(a) - statistics.mean(b)
  if min(len(a), len(b)) < 2:
    return diff, math.nan, math.nan
  if statistics.variance(a) + statistics.variance(b) == 0:  # No spread: no width (scipy's interval is nan).
    return diff, diff, diff
  interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
  return diff, float(interval.low), float(interval.high)


def better(key: str) -> int:
  """+1 where a larger `key` is better (accuracy), -1 where smaller is (loss, bits per character)."""
  return 1 if key.endswith("accuracy") else -1


def validation(key: str) -> str:
  """The validation twin (val/...) of a test metric (eval/...)."""
  return key.replace("eval/", "val/", 1)


@dataclasses.dataclass(frozen=True)
class Choice:
  """A run name chosen on validation: its results (all seeds) and the seeds whose validation chose it (none where
  there was nothing to choose from). Its other seeds are held out: their test metrics carry no selection bias."""
  runs: list[Result]
  by: frozenset[int]

  @property
  def held_out(self) -> list[Result]:
    return [r for r in self.runs if r.seed not in self.by]


def best_on_validation(names: dict[str, list[Result]], key: str) -> Choice:
  """Of several run names (name -> seeds), the one with the best validation `key` on the first seed they all have
  (seed 0: a first look at seed 0 chooses, the other seeds are then run for the chosen name and held out), among
  those whose N:M mask did not freeze (`Result.frozen`) unless all did; each name on the mean of its own seeds
  where they share none. Runs without validation metrics (older ones) are chosen last."""
  if len(names) == 1:
    return Choice(next(iter(names.values())), frozenset())
  shared = set.intersection(*({r.seed for r in runs} for runs in names.values()))
  by = {min(shared)} if shared else {r.seed for runs in names.values() for r in runs}
  moving = {name: runs for name, runs in names.items() if not all(r.frozen for r in runs if r.seed in by)} or names

  def score(runs: list[Result]) -> float:
    values = [r.final[validation(key)] for r in runs if r.seed in by and validation(key) in r.final]
    return better(key) * statistics.mean(values) if values else -math.inf

  return Choice(max(moving.values(), key=score), frozenset(by))


def chosen_on_validation(results: list[Result], key: str) -> dict[str, Choice]:
  """Each group's run name chosen on validation (`best_on_validation`). A group with runs at several N:M levels
  (or N:M and not) is chosen at each, as "group n:m" ("group" for its runs that are not N:M), since a denser level
  would always win."""
  chosen = {}
  for group, names in _groups(results, lambda r: True).items():
    at = _by_level(names, key)
    for level, choice in at.items():
      name = f"{group} {level[0]}:{level[1]}" if level and len(at) > 1 else group
      if name in chosen:
        raise ConfigError(f"two groups would both be reported as {name!r} (one at several N:M levels); rename one "
                          "in the sweep's config")
      chosen[name] = choice
  return chosen


def _level(r: Result) -> tuple[int, int] | None:
  """A sparse run's N:M level (n, m); None for any other run."""
  return (r.config["layers"]["n"], r.config["layers"]["m"]) if r.sparse else None


def _by_level(names: dict[str, list[Result]], key: str) -> dict[tuple[int, int] | None, Choice]:
  """A group's runs at each N:M level (None: not N:M): the run name chosen on validation where it has several
  there."""
  levels = {}
  for name, runs in names.items():
    levels.setdefault(_level(runs[0]), {})[name] = runs
  return {level: best_on_validation(at, key) for level, at in levels.items()}


def reference_names(results: list[Result], key: str) -> set[str]:
  """What `chosen_table` takes as its reference: every row it reports, and the name of a method whose rows are named
  by their N:M level ("STE" for "STE 1:8" and "STE 1:16": compared at each level)."""
  rows = chosen_on_validation(results, key)
  return set(rows) | {name.removesuffix(" {}:{}".format(*_level(c.runs[0]))) for name, c in rows.items()
                      if c.runs[0].sparse}


def _sparsity(runs: list[Result]) -> float:
  return statistics.mean(r.final.get("sparsity/total", 0.0) for r in runs)


def chosen_table(results: list[Result], key: str, reference: str | None) -> list[dict]:
  """One row per `chosen_on_validation` entry: its chosen run, the validation `key` that chose it, its test `key`
  (mean ± std) over all its seeds and over its held-out seeds, the mask flip rate, training FLOPs, and the test
  difference on held-out seeds to the `reference`'s chosen run with its 95% interval. The reference is the
  reference's row at the row's N:M level where it has several; there is none for a row at another N:M level or
  another overall sparsity (N:M in fewer layers)."""
  chosen, scale = chosen_on_validation(results, key), 100 if key == "eval/accuracy" else 1
  digits = 2 if scale == 100 else 4
  column = f"Δ held-out test vs {reference} (95% CI)"
  rows = []
  for group, choice in chosen.items():
    runs, held_out = choice.runs, choice.held_out
    val = [r.final[validation(key)] for r in runs if (r.seed in choice.by or not choice.by) and validation(key) in r.final]
    row = {"group": group, "chosen": runs[0].name, "seeds": len(runs), "val": mean_std(val, scale, digits) if val else "—",
           "test": mean_std([r.final[key] for r in runs], scale, digits),
           "test, held out": (mean_std([r.final[key] for r in held_out], scale, digits) if held_out else "—")
           + (f" ({len(held_out)})" if choice.by else ""),
           "flip rate": _flip_rate(runs), "train FLOPs": _flops(runs)}
    level = _level(runs[0])
    base = chosen.get(reference) or (chosen.get(f"{reference} {level[0]}:{level[1]}") if level and reference else None)
    if base is not None and level and _level(base.runs[0]) not in (None, level):
      base = None  # N:M at another level: no comparison.
    if base is not None and level and _level(base.runs[0]) and abs(_sparsity(runs) - _sparsity(base.runs)) > 0.005:
      base = None  # The same N:M in other layers (another overall sparsity): none either.
    if base is choice:
      row[column] = "—"
    elif base is not None and not (held_out and base.held_out):
      row[column] = "no held-out seed"
    elif base is not None:
      diff, lo, hi = welch([r.final[key] for r in held_out], [r.final[key] for r in base.held_out])
      row[column] = (f"{scale * diff:+.{digits}f} (one seed: no interval)" if math.isnan(lo)
                     else f"{scale * diff:+.{digits}f} ({scale * lo:+.{digits}f} to {scale * hi:+.{digits}f})")
    rows.append(row)
  if any(column in row for row in rows):
    rows = [{**row, column: row.get(column, "no reference at its level")} for row in rows]
  return _without_empty(rows, "flip rate")


def nm_table(results: list[Result], key: str) -> list[dict]:
  """N:M sweeps: one row per method (and dense), one column per N:M level: `key` as mean ± std (seeds) of the
  group's run there (chosen on validation where it has several)."""
  groups, dense = _groups(results, Result.sparse), [r.final[key] for r in results if r.dense and key in r.final]
  levels = sorted({_level(r) for r in results if r.sparse}, key=lambda nm: nm[0] / nm[1], reverse=True)
  if not levels:  # No N:M runs (e.g. a low-rank sweep): no table.
    return []
  scale = 100 if key == "eval/accuracy" else 1
  cell = lambda values: f"{mean_std(values, scale, 2 if scale == 100 else 4)} ({len(values)})" if values else "—"
  rows = [{"method": "dense", **{f"{n}:{m}": cell(dense) for n, m in levels}}] if dense else []
  for group, names in groups.items():
    by_level = {level: [r.final[key] for r in c.runs] for level, c in _by_level(names, key).items()}
    rows.append({"method": group, **{f"{n}:{m}": cell(by_level.get((n, m), [])) for n, m in levels}})
  return rows


def _groups(results: list[Result], kind) -> dict[str, dict[str, list[Result]]]:
  """group -> run name -> seeds, of the runs of that `kind` (Result.sparse, Result.low_rank, or a function)."""
  out: dict[str, dict[str, list[Result]]] = {}
  kind = getattr(kind, "fget", kind)
  for r in results:
    if kind(r):
      out.setdefault(r.group, {}).setdefault(r.name, []).append(r)
  return out


def seeds_note(counts: list[int]) -> str:
  """What a plot's points are, given the seeds of each: one seed, or mean ± std over them."""
  if max(counts) == 1:
    return "one seed"
  if min(counts) == max(counts):
    return f"mean ± std over {counts[0]} seeds"
  return f"mean over {min(counts)}–{max(counts)} seeds, ± std where ≥ 2"


def _experiments(results: list[Result]) -> str:
  """"Fashion-MNIST · MLP": the datasets and models of `results`."""
  return " / ".join(sorted({plots.experiment_name(r.config) for r in results}))


def _title(results: list[Result], what: str, counts: list[int]) -> str:
  return f"{_experiments(results)}\n{what} ({seeds_note(counts)})"


def _mean_std_line(ax, points: list[tuple[float, list[float]]], **style) -> None:
  """The means of `points` (x, values over seeds) sorted by x, joined by a line unless `style` says otherwise,
  with ± std error bars at the points of 2 or more seeds, and only there."""
  points = sorted(points)
  line, = ax.plot([x for x, _ in points], [statistics.mean(v) for _, v in points], **style)
  spread = [(x, statistics.mean(v), statistics.stdev(v)) for x, v in points if len(v) > 1]
  if spread:
    ax.errorbar(*zip(*spread), ls="none", capsize=3, color=line.get_color())


def _dense_line(ax, results: list[Result], key: str, scale: float) -> list[int]:
  """The dense runs' mean as a horizontal line, ± std as a band where there are 2 or more seeds; their seed count."""
  dense = [r.final[key] * scale for r in results if r.dense and key in r.final]
  if dense:
    mean = statistics.mean(dense)
    ax.axhline(mean, color="black", ls="--", lw=1, label=_dense_label(dense, scale))
    if len(dense) > 1:
      std = statistics.stdev(dense)
      ax.axhspan(mean - std, mean + std, color="black", alpha=0.1, lw=0)
  return [len(dense)] if dense else []


def _dense_label(values: list[float], scale: float) -> str:
  seeds = f"{len(values)} seed{'s' if len(values) > 1 else ''}"
  return f"dense ({mean_std(values, digits=2 if scale == 100 else 4)}, {seeds})"


def plot_nm(results: list[Result], folder: pathlib.Path, key: str = "eval/accuracy") -> pathlib.Path | None:
  """Test accuracy against the N:M level (sparsity 1 − N/M of the N:M layers), one line per method."""
  groups = _groups(results, Result.sparse)
  if not groups:
    return None
  scale = 100 if key == "eval/accuracy" else 1
  fig, ax = pyplot().subplots(figsize=(7, 4.5))
  levels, counts = {}, []
  for group, names in groups.items():
    points = []
    for (n, m), choice in _by_level(names, key).items():
      runs = choice.runs
      levels[1 - n / m] = f"{n}:{m}"
      points.append((1 - n / m, [r.final[key] * scale for r in runs]))
      counts.append(len(runs))
    _mean_std_line(ax, points, marker="o", label=group)
  counts += _dense_line(ax, results, key, scale)
  ax.set_xticks(sorted(levels), [levels[x] for x in sorted(levels)])
  ax.set(xlabel="N:M pattern (sparsity 1 − N/M of the N:M layers →)", ylabel=label(key),
         title=_title(results, "N:M methods by sparsity level", counts))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plots.save(fig, folder, "nm_levels.png")


def plot_params(results: list[Result], folder: pathlib.Path, baselines: dict[str, list[tuple[float, float]]],
                key: str = "eval/accuracy") -> pathlib.Path | None:
  """Test accuracy against parameters of the low-rank runs (mean ± std per run name), the dense runs, and
  `baselines` (name -> [(params, accuracy)]: e.g. post-hoc SVD truncation of the dense run at each low-rank run's
  ranks), each baseline one curve sorted by parameters."""
  groups = _groups(results, Result.low_rank)
  if not groups:
    return None
  scale = 100 if key == "eval/accuracy" else 1
  fig, ax = pyplot().subplots(figsize=(7, 4.5))
  counts = [len(runs) for names in groups.values() for runs in names.values()]
  for group, names in groups.items():
    _mean_std_line(ax, [(statistics.mean(r.params for r in runs), [r.final[key] * scale for r in runs])
                        for runs in names.values()], marker="o", label=group)
  for name, points in baselines.items():
    ax.plot(*zip(*sorted((p, a * scale) for p, a in points)), marker="D", ms=5, ls=":",
            label=f"{name}, at each low-rank run's ranks")
  dense = [r for r in results if r.dense]
  if dense:
    values = [r.final[key] * scale for r in dense]
    counts.append(len(dense))
    _mean_std_line(ax, [(statistics.mean(r.params for r in dense), values)], marker="*", ms=14, color="black",
                   ls="none", label=_dense_label(values, scale))
  ax.set(xscale="log", xlabel="parameters (nonzero, in use at the end)", ylabel=label(key),
         title=_title(results, f"low rank: {label(key).removeprefix('test ')} against size", counts))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plots.save(fig, folder, "params.png")


def plot_flops(results: list[Result], folder: pathlib.Path, key: str = "eval/accuracy") -> pathlib.Path | None:
  """Test `key` against each run's training FLOPs (`Result.train_flops`), one line per group over its run names: where
  curves overlap in FLOPs, the comparison at equal training cost (none for one run name: nothing to compare)."""
  groups = _groups([r for r in results if math.isfinite(r.train_flops)], lambda r: True)
  if sum(len(names) for names in groups.values()) < 2:
    return None
  scale = 100 if key == "eval/accuracy" else 1
  fig, ax = pyplot().subplots(figsize=(7, 4.5))
  counts = [len(runs) for names in groups.values() for runs in names.values()]
  for group, names in groups.items():
    _mean_std_line(ax, [(statistics.mean(r.train_flops for r in runs), [r.final[key] * scale for r in runs])
                        for runs in names.values()], marker="o", label=group)
  ax.set(xscale="log", xlabel="training FLOPs (XLA's count of each step, summed; N:M forward at N/M)", ylabel=label(key),
         title=_title(results, f"{label(key).removeprefix('test ')} against training FLOPs", counts))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return plots.save(fig, folder, "flops.png")


def plot_flip_rates(results: list[Result], folder: pathlib.Path) -> pathlib.Path | None:
  """The mask flip rate against the step, one line per N:M run name (its first seed): where a mask keeps moving,
  settles, or freezes (0, at the bottom of the symmetric-log axis)."""
  first = {}
  for r in sorted((r for r in results if r.sparse), key=lambda r: r.seed):
    first.setdefault(r.name, r)
  if not first:
    return None
  fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
  ax.set_prop_cycle(color=pyplot().cm.tab20.colors)  # More runs than the default cycle's ten colors.
  for name, r in first.items():
    ax.plot(*plots.series(r.rows, "nm/flip_rate"), label=f"{name} s{r.seed}" + (" (frozen)" if r.frozen else ""))
  ax.set_yscale("symlog", linthresh=1e-5)
  ax.set(xlabel=plots.STEP, ylabel="fraction of mask entries flipped since the previous log step",
         title=f"{_experiments(results)}\nN:M mask flip rate")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  return plots.save(fig, folder, "flip_rates.png")


def plot_trajectories(results: list[Result], folder: pathlib.Path) -> pathlib.Path | None:
  """Kept ranks (low rank: the sum over layers) and N:M sparsity, against the step, of `results`, as steps."""
  lowrank = [r for r in results if r.low_rank]
  nm = [r for r in results if r.sparse]
  panels = [p for p in (("kept rank, summed over layers", "rank (components)", lowrank, _rank_sum),
                        ("sparsity of all parameters", "sparsity (fraction of weights pruned)", nm,
                         lambda rows: plots.series(rows, "sparsity/total"))) if p[2]]
  if not panels:
    return None
  fig, axes = pyplot().subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
  for ax, (title, ylabel, runs, trajectory) in zip(axes[0], panels):
    for r in runs:
      ax.step(*trajectory(r.rows), where="post", label=f"{r.name} s{r.seed}")
    ax.set(xlabel=plots.STEP, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(_experiments(results))
  return plots.save(fig, folder, "trajectories.png")


def _rank_sum(rows: list[dict]) -> tuple[list[int], list[float]]:
  keys = [k for k in rows[-1] if k.startswith("rank/")]
  logged = [row for row in rows if keys[0] in row]
  return [row["step"] for row in logged], [sum(row[k] for k in keys) for row in logged]
