"""The training loop.

  python train.py --config configs/fmnist_mlp_dense.py --workdir runs/mlp
  python train.py --config configs/fmnist_mlp_dense.py:smoke --workdir /tmp/smoke --config.seed=1

or from Python, `train.train(config, workdir)` (returns the last metrics row).

`--workdir` is the resume key: if it holds a checkpoint, training continues
from it and reproduces the uninterrupted run bit for bit (same machine), however
the previous process ended (a kill, a crash, a preemption). One train.py at a
time per workdir; a workdir whose config.json differs from the requested config
is refused unless --allow_config_change. SIGTERM or Ctrl-C saves a checkpoint
after the current step and exits 0 (a second Ctrl-C stops at once).
"""

import json
import math
import os
import pathlib
import resource
import signal
import sys
import time


def _interrupted_before_training(*_) -> None:
  print("\nInterrupted by Ctrl-C before training started; run the same command to start again", file=sys.stderr,
        flush=True)
  os._exit(130)


if __name__ == "__main__":  # No traceback, also during the imports below; from the first step on, a Ctrl-C saves
  signal.signal(signal.SIGINT, _interrupted_before_training)  # and stops (_StopWatch).

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import tqdm  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from flax import nnx  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402

import data  # noqa: E402
from experiment import build, evaluation, metrics, plots, sharding, sweeps  # noqa: E402
from experiment import config as config_lib  # noqa: E402
from experiment import methods  # noqa: E402
from experiment import workdir as workdir_lib  # noqa: E402
from experiment import checkpoint as checkpoint_lib  # noqa: E402
from experiment import files  # noqa: E402
from experiment.step import count_compilations, flops, make_observe_step, make_train_step  # noqa: E402

IN_FLIGHT = 2  # Train steps dispatched ahead of the one the device has finished.


class NonFinite(RuntimeError):
  """A non-finite loss or gradient stopped the run (the message names the step and what was kept)."""


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.FATAL)  # Orbax logs every file it writes at INFO, and a failed write's traceback
  # at ERROR from its threads; train.py reports a failure itself, in one line.
  try:
    train(_CONFIG.value, pathlib.Path(_WORKDIR.value), allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (config_lib.ConfigError, data.DataError, NonFinite) as e:
    sys.exit(f"error: {e}")


def train(config: ml_collections.ConfigDict, workdir: pathlib.Path, *,
          allow_config_change: bool = False) -> dict[str, float]:
  """Trains the run of `config` in `workdir`, or resumes it from its newest whole checkpoint; returns its last
  metrics row (this process's: {} on all but the first of several), also after a SIGTERM or Ctrl-C saved and
  stopped it. A user's mistake is a ConfigError or DataError raised before anything is compiled or written; a
  non-finite update, NonFinite."""
  started = time.time()
  # Every user error surfaces here, before compilation and before the workdir is touched.
  sharding.initialize(config)
  build.check(config)
  splits = build.datasets(config)
  for split in splits:
    split.preload()
  if epochs := config_lib.in_epochs(config):  # Counted from here on in steps, the train split's real size.
    config = config_lib.in_steps(config, len(splits.train))
    print(f"Epochs of {len(splits.train):,} training examples in steps of {config.batch_size}: " + ", ".join(
        f"{config_lib.IN_EPOCHS[f]}={e:g} -> {f}={config_lib.get_field(config, f)}" for f, e in epochs.items()),
        file=sys.stderr)
  model = build.model(config, {})  # A fresh start's model and hooks (e.g. dense for a dense warm-up).
  method = methods.build(config, model)
  is_main = jax.process_index() == 0
  if workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f"--workdir {workdir} is a file; pass a folder (a new one, or a run's to resume it)")
  try:
    saved_config, restored = checkpoint_lib.saved_config(workdir)  # `restored`: from a checkpoint's copy.
  except files.DamagedFile as e:
    if not allow_config_change:
      raise
    saved_config, restored = None, f"{e.path} is {e.problem}; this run continues with the config passed"
  if restored:
    print(f"warning: {restored}", file=sys.stderr)
  changes = workdir_lib.claim(workdir, config, saved_config, allow_change=allow_config_change, lock=is_main)
  mesh = sharding.mesh()
  put = sharding.batch_placer(mesh)
  place = lambda tree: sharding.place(tree, mesh, config.sharding)
  stopping = _StopWatch(workdir)

  compilations = count_compilations()
  checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints, json.loads(config.to_json_best_effort()))
  batches = data.train_iterator(splits.train, config.batch_size, config.seed, process_index=jax.process_index(),
                                process_count=jax.process_count(), workers=config.dataset.workers, place=put,
                                augment=build.dataset(config).augments)
  start, damaged = checkpoints.resume_step(set_aside=is_main)
  for warning in damaged:
    print(f"warning: {warning}", file=sys.stderr)
  start = start or 0
  saved = checkpoints.restore_method(start) if start else {}  # It decides the model and shapes: read first.
  layers = methods.layers(config, saved)
  if layers != methods.layers(config, {}):  # Saved after the method moved to another model (a switch): that one.
    model = build.model(config, saved)
    method = methods.build(config, model)
  optimizer = nnx.Optimizer(model, build.optimizer(config, saved), wrt=nnx.Param)
  window: list[dict] = []  # Per-step metrics since the last log step (device arrays until fetched; means logged).
  method.restore(model, optimizer, saved)
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  state = place((model_state, opt_state))  # The one training state: the steps update it, `live` reads it.
  params = build.count_params(model)
  del model, optimizer
  flops_total = 0.0  # Training FLOPs so far: XLA's FLOPs of each step's compiled graph, summed over the steps.
  if start:
    state, data_state, window, counters = checkpoints.restore(start, state)
    flops_total = counters.get("flops_total", math.nan)  # Unknown for a checkpoint older than the counter.
    batches.set_state(data_state)
    print(f"Resumed from step {start} in {workdir}", file=sys.stderr)
  if is_main and (start == 0 or changes or restored):  # `restored`: config.json rewritten.
    workdir_lib.save_config(config, workdir, replaced=f"config.before_step_{start}.json" if changes else None)
  if is_main:
    workdir_lib.record_launch(workdir, start, ["python", *sys.argv], sweeps.code_version(), sweeps.machine())
  writer = metrics.MetricsWriter(workdir, config, resume_step=start, enabled=is_main)
  resumed = metrics.read(writer.path) if is_main and start else []
  earlier = [r["time/train_s"] for r in resumed if "time/train_s" in r]
  clock = time.time() - (earlier[-1] if earlier else 0.0)  # Wall time counts on from the resumed run's.
  if start == 0:
    writer.write(0, {"params/total": params}, console=False)
  put_whole = sharding.batch_placer(mesh, whole=True)
  text = build.dataset(config).text  # Character targets: evaluation adds bits per character.

  def evaluated(model: nnx.Module) -> dict[str, float]:
    """`model`'s metrics on the validation (val/...) and test (eval/...) splits."""
    return {f"{prefix}/{k}": v for prefix, split in (("val", splits.validation), ("eval", splits.test))
            for k, v in evaluation.evaluate(model, data.eval_batches(split, config.eval_batch_size,
                                                                     config.dataset.eval_limit or None),
                                            put_whole, text).items()}

  def live() -> tuple[nnx.Module, nnx.Optimizer]:
    """The model and optimizer as objects over the arrays of `state`, for the host's work between steps (metrics,
    evaluation, host updates, the method's state); made anew each time, so nothing else must be kept in step."""
    return nnx.merge(model_def, state[0]), nnx.merge(opt_def, state[1])

  def fetched(window: list[dict], step: int) -> list[dict]:
    """The window's metrics on the host (one transfer); a non-finite one stops the run, naming its step."""
    host = [{k: float(v) for k, v in m.items()} for m in jax.device_get(window)]
    for at, m in enumerate(host, start=step - len(host) + 1):
      if not all(map(math.isfinite, m.values())) and not m.get("train/skipped"):
        bad = ", ".join(f"{k}={v}" for k, v in m.items() if not math.isfinite(v))
        bar.close()
        writer.close()
        batches.close()
        checkpoints.close()  # A save in progress (of an earlier, finite state) ends whole.
        last = checkpoints.latest_step()
        kept = f"the last good checkpoint (step {last}) is intact in {workdir}" if last else "no checkpoint was written"
        raise NonFinite(f"non-finite {bad} at step {at}; stopped without saving, {kept}; lower "
                        f"--config.optimizer.learning_rate, or skip such updates with --config.skip_nonfinite=true")
    return host

  schedule = build.learning_rate(config, saved)
  make_step = lambda method: make_train_step(method, config.seed, mesh, config.sharding, config.skip_nonfinite,
                                             config.optimizer.accumulate_steps, schedule)
  train_step = make_step(method)
  observe_step = make_observe_step(method, config.seed, mesh, config.sharding)
  profile = config_lib.profile_steps(config) or (0, 0)
  step_flops = None  # Of the compiled step at the current shapes; re-measured after a shape change.
  bar = tqdm.tqdm(initial=start, total=config.num_steps, desc=workdir.name, dynamic_ncols=True,
                  disable=not is_main, mininterval=1 if sys.stderr.isatty() else 30)
  for step in range(start + 1, config.num_steps + 1):  # `step` = optimizer updates done after this one.
    batch = next(batches)  # Already on the devices (read and placed ahead, while earlier steps ran).
    if step == profile[0]:
      jax.profiler.start_trace(workdir / "profile")
    if step_flops is None:
      step_flops = flops(train_step, model_def, opt_def, state, batch, jnp.int32(step))  # XLA's estimate.
    flops_total += step_flops
    eval_step = step % config.eval_every == 0 or step == config.num_steps
    log_step = eval_step or step % config.log_every == 0  # An evaluation is logged whatever log_every is.
    if log_step and method.observes:
      state = (observe_step(model_def, state[0], batch, jnp.int32(step)), state[1])
    if len(window) > IN_FLIGHT:  # Bounds the steps queued on the device (and their batches) without idling it.
      jax.block_until_ready(window[-IN_FLIGHT - 1])
    state, step_metrics = train_step(model_def, opt_def, state, batch, jnp.int32(step))  # Dispatched, not awaited.
    window.append(step_metrics)
    if step == profile[1]:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
    bar.update()
    if log_step:
      window = fetched(window, step)  # The only wait on the device between log steps.
      model, optimizer = live()
      logged = _window_means(window)
      logged |= {"train/learning_rate": float(schedule(step - 1)), "params/effective": build.count_params(model),
                 "flops/train_step": step_flops, "flops/total": flops_total, "compiles/train_step": compilations["train_step"],
                 "time/train_s": time.time() - clock, **_peak_memory(), **method.metrics(step, model)}
      if eval_step:
        logged |= evaluated(model)
        ema = build.ema_of(optimizer)
        if ema is not None:  # val_ema/..., eval_ema/...
          logged |= {k.replace("/", "_ema/", 1): v for k, v in evaluated(build.with_parameters(model, ema)).items()}
      writer.write(step, logged, console="eval/accuracy" in logged)
      bar.set_postfix(loss=f"{logged['train/loss']:.4f}", acc=f"{logged['train/accuracy']:.3f}", refresh=False)
      window = []
    if step < config.num_steps and method.host_update_due(step):
      window = fetched(window, step)  # A non-finite state is neither shrunk nor switched.
      model, optimizer = live()
      if method.host_update(step, model, optimizer):  # New shapes or graph: one recompilation.
        state_now = method.state(step, model)
        if (now := methods.layers(config, state_now)) != layers:  # The method moves to another model (Maestro
          # after its dense warm-up, Cuttlefish at its switch): built from its state and filled from this one (the
          # SVD), with fresh hooks (given that state) and a fresh optimizer.
          old, model, layers = model, build.model(config, state_now), now
          methods.spec_of(config).switch(old, model)
          method = methods.build(config, model)
          optimizer = build.optimizer_at(model, config, step, state_now)
          method.restore(model, optimizer, state_now)
          schedule = build.learning_rate(config, state_now)
          train_step = make_step(method)
          observe_step = make_observe_step(method, config.seed, mesh, config.sharding)
        evaluation.recalibrate_on(model, splits.train, config, put_whole)  # BatchNorm statistics of the new model.
        (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
        state = place((model_state, opt_state))  # Re-laid out for the new shapes.
        step_flops = None
    stop = stopping(step)
    if step % config.checkpoint_every == 0 or step == config.num_steps or stop:
      window = fetched(window, step)  # No checkpoint ever holds a non-finite state.
      checkpoints.save(step, state, batches.get_state(), method.state(step, live()[0]), window,
                       {"flops_total": flops_total}, primary=is_main)
    if stop and step < config.num_steps:
      bar.close()
      writer.close()
      batches.close()
      checkpoints.close()
      print(f"Stopped by {stopping.by} after step {step}, saved a checkpoint in {workdir}/checkpoints; run the same "
            f"command to resume", file=sys.stderr)
      return (metrics.read(writer.path) or [{}])[-1] if is_main else {}
  bar.close()
  writer.close()
  batches.close()  # Its reading threads and worker processes.
  checkpoints.close()  # The last save's files and manifest written; older checkpoints deleted.

  relogged = start == config.num_steps and multihost_utils.broadcast_one_to_all(  # Resumed finished, its last row
      is_main and not sweeps.completed(resumed, start))  # lost (a damaged metrics.jsonl): its evaluation logged again.
  if relogged:
    print(f"warning: {writer.path} has lost the last step's row; evaluated the last checkpoint again and logged it",
          file=sys.stderr)
    model = live()[0]
    writer.write(start, {"params/effective": build.count_params(model), **evaluated(model)})
  if not is_main:
    return {}
  final = (metrics.read(workdir / "metrics.jsonl") or [{}])[-1]
  # A finished run started again draws no plots: they are in plots/ (unless it logged its last row again).
  if start < config.num_steps or relogged or not (workdir / "plots" / "training.png").is_file():
    for plot in (plots.training_curves, plots.ranks, plots.sparsity):
      plot(workdir, config)
  print(metrics.table([{
      "run": workdir.name, "model": config.model.name, "layers": config.layers.type,
      "params": int(final.get("params/effective", params)), "steps": config.num_steps,
      **({"sparsity": final["sparsity/total"]} if "sparsity/total" in final else {}),
      "wall time (s)": round(time.time() - started, 1), "compilations": final.get("compiles/train_step", 0),
      "peak MiB": final.get("memory/device_peak_mib", final.get("memory/host_peak_mib", 0)),
      "val accuracy": final.get("val/accuracy", float("nan")),
      "test accuracy": final.get("eval/accuracy", float("nan")), "test loss": final.get("eval/loss", float("nan")),
      **({"test bits/char": final["eval/bits_per_char"]} if "eval/bits_per_char" in final else {}),
  }]))
  print(f"Wrote {workdir}/metrics.jsonl, {workdir}/plots/ and checkpoints in {workdir}/checkpoints")
  return final


class _StopWatch:
  """`stop_watch(step)`: whether to save and stop after `step` because a SIGTERM (a preemption) or a Ctrl-C
  arrived; `by` says which. A second Ctrl-C stops at once: no traceback, and no checkpoint is lost (one being
  written has no manifest yet and does not count). Several processes: JAX's preemption sync point, where every
  process stops after the same step whichever of them got the signal (a Ctrl-C reaches it as a SIGTERM); call
  it at every step."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir, self.by = workdir, None
    self.sync = multihost_utils.reached_preemption_sync_point if jax.process_count() > 1 else None
    signal.signal(signal.SIGINT, self._interrupted)
    if not self.sync:
      signal.signal(signal.SIGTERM, lambda *_: setattr(self, "by", self.by or "SIGTERM"))

  def _interrupted(self, *_) -> None:
    if self.by == "Ctrl-C":
      print(f"\nStopped by a second Ctrl-C; the newest whole checkpoint in {self.workdir}/checkpoints is intact: "
            f"run the same command to resume from it", file=sys.stderr, flush=True)
      os._exit(130)
    self.by = "Ctrl-C"  # Before printing: a second Ctrl-C can interrupt this handler.
    print("\nCtrl-C: saving a checkpoint after this step, then stopping (Ctrl-C again: stop at once)",
          file=sys.stderr, flush=True)
    if self.sync:
      os.kill(os.getpid(), signal.SIGTERM)

  def __call__(self, step: int) -> bool:
    if self.sync:  # Every process answers alike, at the same step.
      if not self.sync(step):
        return False
      self.by = self.by or "SIGTERM"
    return self.by is not None


def _window_means(window: list[dict]) -> dict[str, float]:
  """Each metric's mean over the steps since the last log step, not counting skipped (non-finite) updates;
  with --config.skip_nonfinite, also how many were skipped."""
  counted = [m for m in window if not m.get("train/skipped")] or window
  means = {k: sum(m[k] for m in counted) / len(counted) for k in window[0] if k != "train/skipped"}
  if "train/skipped" in window[0]:
    means["train/skipped_updates"] = sum(m["train/skipped"] for m in window)
  return means


def _peak_memory() -> dict[str, float]:
  """This process's peak resident memory so far, and its first device's peak where the backend reports it
  (GPU, TPU), in MiB."""
  peak = {"memory/host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux.
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    peak["memory/device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  return peak


if __name__ == "__main__":  # The flags only here: train() is also a function other code imports.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).")
  _WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl, plots; resumes if it has a checkpoint.")
  _ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
      "allow_config_change", False, "Continue the run in --workdir although the config differs from its config.json "
      "(which is then kept as config.before_step_<n>.json).")
  flags.mark_flags_as_required(["config", "workdir"])
  try:
    app.run(main, flags_parser=config_lib.parse_flags)
  except (OSError, checkpoint_lib.CheckpointError) as e:  # The machine's failure (a full disk, a vanished folder): one line.
    saved = any(pathlib.Path(_WORKDIR.value, "checkpoint_manifests").glob("*.json"))
    message = str(e) if isinstance(e, checkpoint_lib.CheckpointError) else workdir_lib.machine_failure(
        f"accessing {e.filename or _WORKDIR.value}", e, "run the same command: " + (
            f"training resumes from the newest whole checkpoint in {_WORKDIR.value}/checkpoints" if saved else
            "the run starts again (it had saved no checkpoint)"))
    print(f"\nerror: {message}", file=sys.stderr, flush=True)  # On a line of its own, after a progress bar.
    os._exit(1)  # Without the interpreter's teardown, where Orbax's threads would report the failed write again.
