"""Restore a run's checkpoint and evaluate it on the test split.

  python eval.py --workdir runs/mlp                       # newest checkpoint (or --step N; --ema: the EMA of the parameters)
  python eval.py --workdir runs/mlp --watch [--watch_interval=5]   # beside train.py: each new checkpoint as it lands
  python eval.py --workdir runs/maestro --rank_fractions=1,0.5,0.25,0.1 [--svd_of=runs/dense]
  python eval.py --workdir runs/maestro --macs_budget=0.3 --export=runs/maestro/export
  python eval.py --exported runs/maestro/export
  python eval.py --workdir runs/nm --export=runs/nm/export     # N:M: packed values + in-group indices
  python eval.py --workdir runs/austen_lm_dense --sample="It is a truth" [--sample_length=500 --temperature=0.8]
  python eval.py report runs/sweeps/vit_nm [--trajectories=sdgf-stepwise_1of8,mdgf-exp_1of8]

Low-rank runs: `--rank_fractions` evaluates the model cut to each fraction of
every layer's rank (exported: sliced, dense where cheaper) and plots accuracy
(a language model's: bits per character) against parameters and MACs; `--svd_of` adds post-hoc SVD truncation of a dense
run at exactly the same per-layer ranks (so the same parameter count);
`--macs_budget` runs the greedy per-layer rank search to that fraction of the
model's MACs, scored on validation examples; `--export` writes the model (at the
searched ranks, or as trained) as a standalone folder.
Language models: `--sample` prints text the model generates after the prompt
(and evaluates nothing). N:M runs: evaluation always uses the hard masks; `--export` packs every N:M
kernel (kept values + uint8 positions in the group) and reports its bytes
against dense; `--exported` evaluates either kind of export folder.
Prints a table and writes `<workdir>/eval.json` (and `plots/rank_sweep.png`).
Beside a running train.py: a checkpoint counts once its manifest is written (one
still being written is skipped) and is read through hard links to its files, so
the run deleting it (beyond keep_checkpoints) cannot break the read; one deleted
before it was linked gives way to the newest whole one (a `--step N`: one error
line naming the steps left). `--watch` looks every `--watch_interval` seconds and
evaluates the newest whole checkpoint when it is newer than the last row of
`<workdir>/eval_metrics.jsonl`, appends a row (`step`, `eval/accuracy`,
`eval/loss`, ...: train.py's keys) and exits once the run's last step is in it;
rerun, it continues; Ctrl-C or SIGTERM stops it.
`report <folder>`: the report of a sweep folder (sweep.py): a Markdown table
(mean ± std over seeds), plots (accuracy against the N:M level per method,
accuracy against parameters for low rank with the dense run and its post-hoc
SVD truncation at each low-rank run's final ranks, rank and sparsity
trajectories), the code version, the machine and every command, in
`<folder>/report.md` and `<folder>/plots/` (or `--report_to`, e.g. a folder of docs/).
"""

import collections
import contextlib
import copy
import json
import os
import pathlib
import shlex
import shutil
import signal
import sys
import tempfile
import time
from typing import Iterator

import jax
from absl import app, flags, logging
from flax import nnx

import data
from experiment import build, evaluation, export, files, metrics, plots, report, sharding, sweeps
from experiment import config as config_lib
from experiment import methods
from experiment import workdir as workdir_lib
from experiment.checkpoint import Checkpoints, load_config
from lowrank import deploy, maestro
from models import lm
from sparsity.training import nm_layers

_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of a train.py run.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the newest whole one).")
_EMA = flags.DEFINE_bool("ema", False, "Evaluate the EMA of the parameters (a run with optimizer.ema_decay > 0).")
_FRACTIONS = flags.DEFINE_list("rank_fractions", [], "Low-rank: evaluate at these fractions of every layer's rank.")
_SVD_OF = flags.DEFINE_string("svd_of", None, "A dense run to truncate by SVD at the same ranks (baseline).")
_BUDGET = flags.DEFINE_float("macs_budget", None, "Low-rank: greedy rank search to this fraction of the MACs.")
_SEARCH_EXAMPLES = flags.DEFINE_integer("search_examples", 1000,
                                        "--macs_budget: validation examples the search scores on.")
_EXPORT = flags.DEFINE_string("export", None, "Write the model as a standalone folder here (low-rank: at the searched "
                               "ranks; N:M: packed).")
_EXPORTED = flags.DEFINE_string("exported", None, "Evaluate a folder written by --export instead of a run.")
_SAMPLE = flags.DEFINE_string("sample", None, "Language models: print text generated after this prompt.")
_SAMPLE_LENGTH = flags.DEFINE_integer("sample_length", 500, "--sample: characters to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "--sample: logits are divided by it (lower: more likely text).")
_SAMPLE_SEED = flags.DEFINE_integer("sample_seed", 0, "--sample: random seed.")
_REPORT_TO = flags.DEFINE_string("report_to", None, "report: write report.md and plots/ here (default: the sweep folder).")
_REFERENCE = flags.DEFINE_string("reference", "", "report: the group every group's chosen run is compared with "
                                 "(difference and 95% interval; groups named by their N:M level, \"STE 1:8\", by "
                                 "the name without it, \"STE\": at each level); default: dense, where the sweep"
                                 " has it.")
_TRAJECTORIES = flags.DEFINE_list("trajectories", [], "report: run names whose rank/sparsity trajectories to plot "
                                  "(seed 0; default: every run whose ranks or N:M pattern changed while training).")
_WATCH = flags.DEFINE_bool("watch", False, "Evaluate each new whole checkpoint of --workdir as it lands (beside "
                           "train.py), appending to <workdir>/eval_metrics.jsonl, until the run's last step.")
_WATCH_INTERVAL = flags.DEFINE_float("watch_interval", 5.0, "--watch: seconds between looks for a new checkpoint.")

RETRIES = 5  # Reads of a checkpoint that the running train.py deleted meanwhile, before giving up.


def restore(workdir: pathlib.Path, step: int | None, mesh, ema: bool = False) -> tuple[nnx.Module, object, int]:
  """The model of `workdir` at whole checkpoint `step` (None: the newest), with its config and step; `ema`: with the
  EMA of its parameters."""
  model, optimizer, config, step = restore_train_state(workdir, step, mesh)
  if ema:
    if (params := build.ema_of(optimizer)) is None:
      raise config_lib.ConfigError(f"--ema: {workdir} kept no EMA of its parameters (config.optimizer.ema_decay=0)")
    model = build.with_parameters(model, params)
  return model, config, step


def restore_train_state(workdir: pathlib.Path, step: int | None, mesh) -> tuple[nnx.Module, nnx.Optimizer, object, int]:
  """The model and optimizer of `workdir` at whole checkpoint `step` (None: the newest), its config and step.
  Beside a running train.py, which deletes old checkpoints as it writes new ones, the checkpoint is read from hard
  links to it (`pinned`); one deleted before it was linked (or, without links, while it was read) is read again at
  the newest whole one (`step` None), or is an error naming those left."""
  config = load_config(workdir)
  build.check(config)
  checkpoints = Checkpoints(workdir)
  if step is not None and not checkpoints.is_whole(step):
    raise config_lib.ConfigError(f"--step={step}: no such whole checkpoint in {workdir}/checkpoints; available "
                                 f"steps: {whole_steps(checkpoints)}")
  deleted = []
  for _ in range(RETRIES):
    chosen = newest_whole_step(checkpoints) if step is None else step
    if chosen is None:
      raise config_lib.ConfigError(f"{workdir} has no whole checkpoint (in {workdir}/checkpoints)")
    with pinned(checkpoints, chosen) as source:
      try:
        if source.is_whole(chosen):
          return *_read(source, config, chosen, mesh), config, chosen
      except Exception:  # Orbax's error depends on which file went first: FileNotFoundError, KeyError, ValueError...
        if source.is_whole(chosen):
          raise  # Not deleted: a real error (e.g. a checkpoint of another version of the code).
      if step is not None:
        raise config_lib.ConfigError(f"--step={step}: the running train.py deleted this checkpoint as it was read "
                                     f"(it keeps {config.keep_checkpoints}); available steps: "
                                     f"{whole_steps(checkpoints)}") from None
      deleted.append(chosen)
      print(f"note: the running train.py deleted checkpoint step {chosen} as it was read; reading the newest whole "
            f"one", file=sys.stderr)
  raise config_lib.ConfigError(f"the running train.py deleted checkpoints {deleted} of {workdir} as each was read; "
                               f"try again, or raise its keep_checkpoints")


def newest_whole_step(checkpoints: Checkpoints, after: int = -1) -> int | None:
  """The newest step after `after` whose checkpoint is whole now (manifest written, every file matching it): never
  one that train.py is still writing or is deleting. Looks again if the manifests changed while it looked (a new
  one written, then the one found deleted); looks at no step older than the one it returns."""
  while True:
    listed = _manifest_steps(checkpoints, after)
    step = next((s for s in listed if checkpoints.is_whole(s)), None)
    if step is not None or listed == _manifest_steps(checkpoints, after):
      return step


def whole_steps(checkpoints: Checkpoints) -> list[int]:
  return sorted(s for s in _manifest_steps(checkpoints) if checkpoints.is_whole(s))


def _manifest_steps(checkpoints: Checkpoints, after: int = -1) -> list[int]:
  """Steps with a manifest, newest first (not Orbax's listing: it reads every step's metadata, which fails if
  train.py deletes that step meanwhile)."""
  return sorted((int(p.stem) for p in checkpoints.manifests.glob("*.json") if p.stem.isdigit() and int(p.stem) > after),
                reverse=True)


@contextlib.contextmanager
def pinned(checkpoints: Checkpoints, step: int) -> Iterator[Checkpoints]:
  """Checkpoint `step` and its manifest as hard links in a workdir of their own inside `checkpoints.workdir`,
  removed after: a train.py deleting the checkpoint meanwhile removes its names, not the files read here (if it
  deleted one before it was linked, the copy is not whole). Where the workdir takes no links (read-only, a file
  system without them): the checkpoint itself."""
  try:
    folder = pathlib.Path(tempfile.mkdtemp(prefix=".eval-pin-", dir=checkpoints.workdir))
  except OSError:
    yield checkpoints
    return
  try:
    copy = Checkpoints(folder)
    yield copy if _linked(checkpoints, copy, step) else checkpoints
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def _linked(checkpoints: Checkpoints, copy: Checkpoints, step: int) -> bool:
  """Hard-links checkpoint `step` and its manifest into `copy` (those deleted meanwhile left out); False where the
  file system has no hard links."""
  original, into = (pathlib.Path(c.manager.directory) / str(step) for c in (checkpoints, copy))
  try:
    files = [(checkpoints.manifests / f"{step}.json", copy.manifests / f"{step}.json")]
    files += [(p, into / p.relative_to(original)) for p in sorted(original.rglob("*")) if p.is_file()]
    for source, link in files:
      link.parent.mkdir(parents=True, exist_ok=True)
      os.link(source, link)
  except FileNotFoundError:
    pass
  except OSError:
    return False
  return True


def _read(checkpoints: Checkpoints, config, step: int, mesh) -> tuple[nnx.Module, nnx.Optimizer]:
  saved = checkpoints.restore_method(step)  # The model the method trained then (e.g. dense in a warm-up).
  model = build.model(config, saved)
  optimizer = nnx.Optimizer(model, build.optimizer(config, saved), wrt=nnx.Param)
  methods.build(config, model).restore(model, optimizer, saved)
  like = sharding.place((nnx.state(model), nnx.state(optimizer)), mesh, config.sharding)
  model_state, optimizer_state = checkpoints.restore_state(step, like)
  nnx.update(model, model_state)
  nnx.update(optimizer, optimizer_state)
  return model, optimizer


def watch(workdir: pathlib.Path, mesh, interval: float) -> None:
  """`--watch`: whenever the newest whole checkpoint is newer than the last row of `<workdir>/eval_metrics.jsonl`,
  evaluates it and appends its row (a checkpoint that rotated away before its turn is skipped), until the run's
  last step is in the file. Takes no lock; writes that file and, while it reads, the links of `pinned` (nothing in
  checkpoints/)."""
  for stop in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C stops it, and SIGTERM alike, also where the shell that
    signal.signal(stop, signal.default_int_handler)  # started it in the background made it ignore SIGINT.
  path, last = workdir / "eval_metrics.jsonl", 0
  try:
    config = load_config(workdir)
    rows = metrics.read(path, complete_only=True) if path.exists() else []
    files.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))  # Without a row a kill cut short.
    last = rows[-1]["step"] if rows else 0
    test = tester(config, build.datasets(config).test, sharding.batch_placer(mesh, whole=True))
    checkpoints = Checkpoints(workdir)
    print(f"Watching {workdir}/checkpoints (every {interval:g} s) until step {config.num_steps}; rows in {path}",
          flush=True)
    while last < config.num_steps:
      if newest_whole_step(checkpoints, after=last) is None:
        time.sleep(interval)
        continue
      started = time.time()
      model, optimizer, config, last = restore_train_state(workdir, None, mesh)
      row = {f"eval/{k}": v for k, v in test(model).items()}
      if (ema := build.ema_of(optimizer)) is not None:  # As train.py logs it.
        row |= {f"eval_ema/{k}": v for k, v in test(build.with_parameters(model, ema)).items()}
      with path.open("a") as f:
        f.write(json.dumps({"step": last, **row}) + "\n")
      print(f"step {last}: " + "  ".join(f"{k}={v:.4g}" for k, v in row.items()) + f"  ({time.time() - started:.1f} s)",
            flush=True)
  except KeyboardInterrupt:
    print(f"Stopped; {path} holds steps up to {last}: run the same command to continue", file=sys.stderr)
    return
  print(f"Evaluated the run's last step ({config.num_steps}); rows in {path}")


def check_flags() -> None:
  """The flags' values on their own (what they need of the run is checked once it is read)."""
  if _BUDGET.present and not 0 < _BUDGET.value <= 1:
    raise config_lib.ConfigError(f"--macs_budget={_BUDGET.value}: a fraction of the model's MACs, in (0, 1]")
  if _BUDGET.present and _SEARCH_EXAMPLES.value < 1:
    raise config_lib.ConfigError(f"--search_examples={_SEARCH_EXAMPLES.value}: must be >= 1")
  if _EXPORTED.value and not (pathlib.Path(_EXPORTED.value) / "export.json").is_file():
    raise config_lib.ConfigError(f"--exported={_EXPORTED.value}: no export.json there; pass a folder written by "
                                 f"eval.py --export")
  if _EXPORT.value and pathlib.Path(_EXPORT.value).exists() and not pathlib.Path(_EXPORT.value).is_dir():
    raise config_lib.ConfigError(f"--export={_EXPORT.value} is a file; pass a folder to write the model into")
  rank_fractions()


def rank_fractions() -> list[float]:
  """--rank_fractions as numbers, each in (0, 1]."""
  try:
    fractions = [float(f) for f in _FRACTIONS.value]
  except ValueError:
    fractions = [float("nan")]
  if any(not 0 < f <= 1 for f in fractions):
    raise config_lib.ConfigError(f"--rank_fractions={','.join(_FRACTIONS.value)}: each must be a number in (0, 1]")
  return fractions


def svd_baseline(mesh) -> nnx.Module:
  """The dense model of --svd_of's run."""
  try:
    model, config, _ = restore(pathlib.Path(_SVD_OF.value), None, mesh)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"--svd_of={_SVD_OF.value}: {e}") from None
  if maestro.lod_layers(model) or nm_layers(model):
    raise config_lib.ConfigError(f"--svd_of={_SVD_OF.value} has low-rank or N:M layers; pass a dense run "
                                 f"(config.layers.type=dense) of the same model")
  return model


def print_sample(model: nnx.Module, config) -> None:
  """`--sample`: the prompt and what the model writes after it."""
  spec = build.dataset(config)
  if not spec.text:
    raise config_lib.ConfigError(f"--sample needs a language-model run (a text dataset, e.g. configs/austen_lm_dense.py); "
                                 f"this run's dataset is {config.dataset.name}")
  if not _SAMPLE.value or _SAMPLE_LENGTH.value < 1 or not _TEMPERATURE.value > 0:
    raise config_lib.ConfigError("--sample needs a prompt of at least one character, --sample_length >= 1 and "
                                 "--temperature > 0")
  prompt = spec.encode(_SAMPLE.value)
  ids = lm.sample(model, prompt.tolist(), _SAMPLE_LENGTH.value, jax.random.key(_SAMPLE_SEED.value), _TEMPERATURE.value)
  print(_SAMPLE.value + spec.decode(ids))


def tester(config, source, put):
  """model -> its test metrics on `source` (config.eval_batch_size, config.dataset.eval_limit)."""
  return lambda m: evaluation.evaluate(m, data.eval_batches(source, config.eval_batch_size,
                                                            config.dataset.eval_limit or None), put,
                                       build.dataset(config).text)


def recalibrated(test, config, train: data.Split, put):
  """`test`, after recomputing the BatchNorm statistics of the model it is given (a rank cut, an SVD truncation) on
  the first config.recalibrate_batches training batches; says so once where the model has BatchNorm."""
  said = []

  def run(model: nnx.Module) -> dict:
    if (batches := evaluation.recalibrate_on(model, train, config, put)) and not said:
      print(f"BatchNorm statistics of each cut recomputed on {batches} training batches of {config.batch_size} "
            f"(config.recalibrate_batches)")
      said.append(True)
    return test(model)

  return run


def svd_truncation(dense: nnx.Module, config, ranks: dict[str, int], test) -> tuple[nnx.Module, dict]:
  """Post-hoc SVD truncation of a dense model at the ranks of a low-rank run of `config`, and its test result."""
  full_rank = copy.deepcopy(config)  # The low-rank run's layers at their starting (full) rank.
  full_rank.layers.rank_ratio, full_rank.layers.ranks = 1.0, {}
  svd = export.from_dense(dense, full_rank)
  truncated = export.sliced(svd, config, ranks)[0]
  return truncated, test(truncated)


def sweep_report(folder: pathlib.Path, mesh) -> None:
  """`eval.py report <folder>`."""
  started = time.time()
  sweep, results, missing = report.collect(folder)
  if not results:
    raise config_lib.ConfigError(f"no run of {folder} has finished yet; run: {sweep['command']}")
  key = report.metric(results)
  groups = report.reference_names(results, key)
  reference = _REFERENCE.value or ("dense" if "dense" in groups else None)
  if reference not in groups | {None}:
    raise config_lib.ConfigError(f"--reference={reference}: no group of that name; the groups are {sorted(groups)}")
  put = sharding.batch_placer(mesh, whole=True)
  baselines, notes = {}, []
  dense = next((r for r in results if r.dense), None)
  if dense and any(r.low_rank for r in results):  # SVD of the dense run at each low-rank run's ranks.
    try:
      dense_model = restore(dense.workdir, None, mesh)[0]
    except config_lib.ConfigError as e:
      dense_model = None
      notes.append(f"No SVD baseline: {e}.")
      print(f"warning: {notes[-1]}", file=sys.stderr)
    lowrank = report.by_name([r for r in results if r.low_rank]) if dense_model else {}
    for runs in lowrank.values():
      config = load_config(runs[0].workdir)
      test = tester(config, build.datasets(config).test, put)
      ranks = {k.removeprefix("rank/"): int(v) for k, v in runs[0].final.items() if k.startswith("rank/")}
      model, result = svd_truncation(dense_model, config, ranks, test)
      baselines.setdefault(f"SVD of dense ({dense.name} s{dense.seed})", []).append(
          (build.count_params(model), result[key.removeprefix("eval/")]))
  chosen = _TRAJECTORIES.value or [r.name for r in results if r.seed == results[0].seed and report.shape_changes(r.rows)]
  traced = [r for r in results if r.name in chosen and r.seed == min(x.seed for x in results if x.name == r.name)]
  out = pathlib.Path(_REPORT_TO.value or folder)
  figures = [p for p in (report.plot_nm(results, out, key), report.plot_params(results, out, baselines, key),
                         report.plot_flops(results, out, key), report.plot_flip_rates(results, out),
                         report.plot_trajectories(traced, out)) if p]
  rows = report.table(results)
  machines = collections.Counter(" + ".join(sorted({l["machine"] for l in workdir_lib.launches(r.workdir)}))
                                 or "a machine not recorded (run made before launches.jsonl)" for r in results)
  lines = [f"# Report: {folder.name}", "",
           f"Sweep of `{sweep['config']}`, code {sweep['code']} (report made with code {sweeps.code_version()}), "
           f"{len(results)} finished runs" + (f", {len(missing)} not finished: {', '.join(missing)}" if missing else "")
           + ".", "", "Machines (each run's launches.jsonl): " + "; ".join(f"{n} runs on {m}" for m, n in machines.items())
           + f". Last sweep command on {sweep.get('machine', 'not recorded')}; this report on {sweeps.machine()}.", "",
           "Commands:", "", "```", sweep["command"], "python " + shlex.join(sys.argv), "```", "",
           "Test metrics at the last step, mean ± std over seeds:", "", metrics.table(rows), "",
           "Train FLOPs: XLA's count of each compiled train step, summed over the run's steps, less the forward FLOPs a "
           "sparse matmul unit saves on layers with a binary N:M mask (N/M of theirs).", ""]
  choices = report.chosen_table(results, key, reference)
  labels = {row["group"] for row in choices}
  levels = labels != {r.group for r in results} or bool(reference and reference not in labels)  # Named by N:M level.
  lines += [f"Chosen on validation: each group's run{' (at each N:M level)' * levels} with the best validation "
            f"{key.removeprefix('eval/')} on the first seed all its runs have (seed 0), among those whose N:M mask did "
            "not freeze; its test metric over all its seeds and over the seeds held out from that choice (their "
            "count in brackets; all seeds where there was nothing to choose)"
            + (f", and the held-out difference to {reference}'s{' at the same level' * levels} with a 95% interval "
               "(Welch's t; none for a row at another N:M level or sparsity)" if reference else "") + ". "
            "Flip rate: the fraction of mask entries changed between log steps, averaged over the run; frozen: "
            "none changed after the first quarter.", "", metrics.table(choices), ""]
  if by_level := report.nm_table(results, key):
    lines += [f"{report.label(key).capitalize()} by N:M level, mean ± std (seeds):", "", metrics.table(by_level), ""]
  lines += [n + "\n" for n in notes]
  for name, points in baselines.items():
    lines += [f"{name}, at each low-rank run's final ranks: " + ", ".join(f"{p:,} params {report.shown(key, a)}"
                                                                          for p, a in points) + ".", ""]
  lines += [f"![{p.stem}](plots/{p.name})" for p in figures] + ["", "<details><summary>Every run's train.py command"
                                                                 "</summary>", "", "```"]
  lines += [r["command"] for r in sweep["runs"]] + ["```", "</details>", ""]
  (out / "report.md").write_text("\n".join(lines))
  print(metrics.table(rows))
  print(f"Wrote {out}/report.md and " + ", ".join(str(p) for p in figures) + f" ({time.time() - started:.0f} s)")


def main(argv) -> None:
  logging.set_verbosity(logging.WARNING)
  mesh = sharding.mesh()
  if argv[1:2] == ["report"]:
    try:
      if len(argv) != 3:
        raise config_lib.ConfigError("usage: python eval.py report <sweep folder>")
      sweep_report(pathlib.Path(argv[2]), mesh)
    except (config_lib.ConfigError, data.DataError) as e:
      sys.exit(f"error: {e}")
    return
  if argv[1:]:
    sys.exit(f"error: unknown arguments {argv[1:]}; the only command is `report <sweep folder>`")
  if _WATCH.value:
    others = [f"--{h.name}" for h in (_STEP, _EMA, _FRACTIONS, _SVD_OF, _BUDGET, _EXPORT, _EXPORTED, _SAMPLE)
              if h.present]
    try:
      if others or not _WORKDIR.value or not _WATCH_INTERVAL.value > 0:
        raise config_lib.ConfigError("--watch takes --workdir=<run folder> and --watch_interval > 0 only"
                                     + (f", not {', '.join(others)}" if others else ""))
      watch(pathlib.Path(_WORKDIR.value), mesh, _WATCH_INTERVAL.value)
    except (config_lib.ConfigError, data.DataError) as e:
      sys.exit(f"error: {e}")
    return
  put = sharding.batch_placer(mesh, whole=True)
  try:
    check_flags()
    if _EXPORTED.value:
      folder = pathlib.Path(_EXPORTED.value)
      model, config, exported = export.load(folder)
      step, workdir = exported["step"], folder
    elif _WORKDIR.value:
      workdir = pathlib.Path(_WORKDIR.value)
      model, config, step = restore(workdir, _STEP.value, mesh, _EMA.value)
      if _SAMPLE.value is not None:
        print_sample(model, config)
        return
    else:
      raise config_lib.ConfigError("pass --workdir=<run folder> or --exported=<export folder>")
    splits = build.datasets(config)
    lowrank_model, nm_model = bool(maestro.lod_layers(model)), bool(nm_layers(model))
    if (_FRACTIONS.value or _BUDGET.value) and not lowrank_model:
      raise config_lib.ConfigError("--rank_fractions/--macs_budget need a run with low-rank layers; this one has none")
    if _EXPORT.value and not (lowrank_model or nm_model):
      raise config_lib.ConfigError("--export needs a run with low-rank or N:M layers; this one has neither")
    if _EXPORT.value and _BUDGET.value and nm_model:
      raise config_lib.ConfigError("--export packs a model with N:M layers at its trained ranks, not at those "
                                   "--macs_budget searches; pass one of the two")
    if _EXPORT.value and any(layer.sparsity.unstructured for _, layer in nm_layers(model)):
      raise config_lib.ConfigError("--export packs N:M patterns; this run's masks are unstructured")
    fractions = rank_fractions()
    baseline = svd_baseline(mesh) if _SVD_OF.value else None
  except (config_lib.ConfigError, data.DataError) as e:
    sys.exit(f"error: {e}")

  test = tester(config, splits.test, put)
  result = test(model)
  key = "bits_per_char" if "bits_per_char" in result else "accuracy"  # The task's metric: the first column shown.
  column = {"accuracy": "test accuracy", "bits_per_char": "test bits/char"}[key]
  report = {"step": step, "params/total": build.count_params(model), **{f"eval/{k}": v for k, v in result.items()}}
  rows = [{"run": workdir.name, "step": step, "params": report["params/total"], column: result[key]}]
  if lowrank_model:
    report["macs"] = export.forward_macs(model, config)
    report["ranks"] = maestro.ranks(model)

  if fractions:
    test_cut = recalibrated(test, config, splits.train, put)
    sweep = export.rank_sweep(model, config, fractions, test_cut)
    if baseline is not None:
      for row in sweep:
        row |= {f"svd_{k}": v for k, v in svd_truncation(baseline, config, row["ranks"], test_cut)[1].items()}
    report["rank_sweep"] = sweep
    plots.rank_sweep(workdir, config, sweep, key)
    rows = [{"rank fraction": r["rank_fraction"], "params": r["params"], "MACs": int(r["macs"]),
             column: r[key], **({"SVD of dense": r[f"svd_{key}"]} if f"svd_{key}" in r else {})} for r in sweep]

  chosen = maestro.ranks(model)
  if _BUDGET.value:
    held_out = next(data.eval_batches(splits.validation, min(_SEARCH_EXAMPLES.value, len(splits.validation))))
    score = lambda m: evaluation.evaluate(m, [held_out], put)["accuracy"]
    chosen = deploy.greedy_rank_search(model, _BUDGET.value * report["macs"], score,
                                         lambda m: export.forward_macs(m, config))
    searched, _ = export.sliced(model, config, chosen)
    report["greedy_search"] = {"budget": _BUDGET.value, "ranks": chosen, "params": build.count_params(searched),
                               "macs": export.forward_macs(searched, config), "accuracy": test(searched)["accuracy"]}
    rows.append({"greedy search": f"≤{_BUDGET.value:g} MACs", "params": report["greedy_search"]["params"],
                 "MACs": int(report["greedy_search"]["macs"]), "test accuracy": report["greedy_search"]["accuracy"]})
  if _EXPORT.value and nm_model:
    summary = export.save_nm(pathlib.Path(_EXPORT.value), model, config,
                             {"step": step, "accuracy": result["accuracy"]})
    report["export"] = {"folder": _EXPORT.value, **summary}
    b = summary["bytes"]
    rows.append({"export": _EXPORT.value, "N:M kernels (bytes)": b["nm_kernels_packed"],
                 "dense (bytes)": b["nm_kernels_dense"], "ratio": b["nm_kernels_packed"] / b["nm_kernels_dense"],
                 "model (bytes)": b["model_packed"], "model dense (bytes)": b["model_dense"]})
  elif _EXPORT.value:
    exported, exported_config = export.sliced(model, config, chosen)
    summary = {"step": step, "ranks": chosen, "params": build.count_params(exported),
               "macs": export.forward_macs(exported, config), "accuracy": test(exported)["accuracy"]}
    export.save_lowrank(pathlib.Path(_EXPORT.value), exported, exported_config, summary)
    report["export"] = {"folder": _EXPORT.value, **summary}

  (workdir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
  for group in _same_keys(rows):
    print(metrics.table(group))
  print(f"Wrote {workdir}/eval.json" + (f" and {workdir}/plots/rank_sweep.png" if fractions else ""))


def _same_keys(rows: list[dict]) -> list[list[dict]]:
  groups: list[list[dict]] = []
  for row in rows:
    if groups and list(groups[-1][0]) == list(row):
      groups[-1].append(row)
    else:
      groups.append([row])
  return groups


if __name__ == "__main__":
  try:
    app.run(main, flags_parser=config_lib.parse_flags)
  except OSError as e:  # The machine's failure (a full disk, a removed folder): one line.
    sys.exit("error: " + workdir_lib.machine_failure(f"accessing {e.filename or 'a file'}", e, "run the same command"))
