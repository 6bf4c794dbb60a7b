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

import contextlib
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
  config, splits = prepare(config)  # Every user error surfaces here, before compilation and before the workdir
  saved_config, restored = run_config(workdir, allow_config_change)  # is touched.
  is_main = jax.process_index() == 0
  changes = workdir_lib.claim(workdir, config, saved_config, allow_change=allow_config_change, lock=is_main)
  stopping = _StopWatch(workdir)
  with contextlib.ExitStack() as teardown:  # However training ends: its threads stopped, its last save whole.
    session = Trainer(config, workdir, splits, teardown)
    start = session.resume()
    if is_main and (start == 0 or changes or restored):  # `restored`: config.json rewritten.
      workdir_lib.save_config(config, workdir, replaced=f"config.before_step_{start}.json" if changes else None)
    if is_main:
      workdir_lib.record_launch(workdir, start, ["python", *sys.argv], sweeps.code_version(), sweeps.machine())
    session.open_metrics(start)
    bar = teardown.enter_context(tqdm.tqdm(initial=start, total=config.num_steps, desc=workdir.name,
                                           dynamic_ncols=True, disable=not is_main,
                                           mininterval=1 if sys.stderr.isatty() else 30))
    for step in range(start + 1, config.num_steps + 1):  # `step` = optimizer updates done after this one.
      session.update(step)
      bar.update()
      if session.log_due(step):
        logged = session.log(step)
        bar.set_postfix(loss=f"{logged['train/loss']:.4f}", acc=f"{logged['train/accuracy']:.3f}", refresh=False)
      if step < config.num_steps:
        session.host_update(step)
      stop = stopping(step)
      if step % config.checkpoint_every == 0 or step == config.num_steps or stop:
        session.checkpoint(step)
      if stop and step < config.num_steps:
        teardown.close()
        print(f"Stopped by {stopping.by} after step {step}, saved a checkpoint in {workdir}/checkpoints; run the "
              f"same command to resume", file=sys.stderr)
        return session.last_row()
    relogged = start == config.num_steps and session.relog_last_row(start)
  if not is_main:
    return {}
  # A finished run started again draws no plots: they are in plots/ (unless it logged its last row again).
  if start < config.num_steps or relogged or not (workdir / "plots" / "training.png").is_file():
    plots.training_curves(workdir, config, methods.objective(config))
    for plot in methods.plots(config):
      plot(workdir, config)
  final = session.last_row()
  print(summary(config, workdir, final, session.params, time.time() - started))
  print(f"Wrote {workdir}/metrics.jsonl, {workdir}/plots/ and checkpoints in {workdir}/checkpoints")
  return final


def prepare(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, build.Splits]:
  """Every check of `config` that needs no workdir: its fields, its data (read into memory), its model and method
  (built once, and dropped); with durations in epochs turned into steps of the train split's real size."""
  sharding.initialize(config)
  build.check(config)
  splits = build.datasets(config)
  for split in splits:
    split.preload()
  if epochs := config_lib.in_epochs(config):
    config = config_lib.in_steps(config, len(splits.train))
    print(f"Epochs of {len(splits.train):,} training examples in steps of {config.batch_size}: " + ", ".join(
        f"{config_lib.epoch_fields(config)[f]}={e:g} -> {f}={config_lib.get_field(config, f)}"
        for f, e in epochs.items()),
        file=sys.stderr)
  methods.build(config, build.model(config, {}))
  return config, splits


def run_config(workdir: pathlib.Path, allow_config_change: bool) -> tuple[dict | None, bool]:
  """The config the run in `workdir` was started with (None: no run there), and whether config.json is to be
  written again: it was damaged (and read from a checkpoint's copy, or, with `allow_config_change`, is replaced by
  this one)."""
  if workdir.exists() and not workdir.is_dir():
    raise config_lib.ConfigError(f"--workdir {workdir} is a file; pass a folder (a new one, or a run's to resume it)")
  try:
    return checkpoint_lib.saved_config(workdir)
  except files.DamagedFile as e:
    if not allow_config_change:
      raise
    print(f"warning: {e.path} is {e.problem}; this run continues with the config passed", file=sys.stderr)
    return None, True


class Trainer:
  """One process's training session: the model and optimizer (their graph definitions, and their arrays as one
  placed `state`), the method's hooks, the jitted steps, the input iterator, the checkpoints and the metrics.
  `rebuild` makes all but the last three, at a fresh start, a resume, and a switch of the method to another model
  mid-run. Its resources close with `teardown`."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path, splits: build.Splits,
               teardown: contextlib.ExitStack):
    self.config, self.workdir, self.splits = config, workdir, splits
    self.is_main = jax.process_index() == 0
    self.mesh = sharding.mesh()
    self.put_whole = sharding.batch_placer(self.mesh, whole=True)
    self.compilations = count_compilations()
    self.checkpoints = checkpoint_lib.Checkpoints(workdir, config.keep_checkpoints,
                                                  json.loads(config.to_json_best_effort()))
    teardown.callback(self.checkpoints.close)  # The last save's files and manifest written; old ones deleted.
    self.batches = data.train_iterator(splits.train, config.batch_size, config.seed,
                                       process_index=jax.process_index(), process_count=jax.process_count(),
                                       workers=config.dataset.workers, place=sharding.batch_placer(self.mesh),
                                       augment=build.dataset(config).augments)
    teardown.callback(self.batches.close)  # Its reading threads and worker processes.
    self.teardown = teardown
    self.profile = config_lib.profile_steps(config) or (0, 0)
    self.window: list[dict] = []  # Per-step metrics since the last log step (device arrays until fetched).
    self.flops_total = 0.0  # Training FLOPs so far: XLA's FLOPs of each step's compiled graph, summed.
    self.resumed: list[dict] = []  # The metrics rows of the run resumed.

  def resume(self) -> int:
    """Builds the session at the newest whole checkpoint (setting newer, damaged ones aside) or, without one, at
    the start; returns the step it starts from."""
    start, damaged = self.checkpoints.resume_step(set_aside=self.is_main)
    for warning in damaged:
      print(f"warning: {warning}", file=sys.stderr)
    start = start or 0
    saved = self.checkpoints.restore_method(start) if start else {}  # It decides the model and shapes.
    self.rebuild(saved, start)
    self.params = build.count_params(self.live()[0])
    if start:
      self.state, data_state, self.window, counters = self.checkpoints.restore(start, self.state)
      self.flops_total = counters.get("flops_total", math.nan)  # Unknown for a checkpoint older than the counter.
      self.batches.set_state(data_state)
      print(f"Resumed from step {start} in {self.workdir}", file=sys.stderr)
    return start

  def rebuild(self, method_state: dict, step: int, switched_from: nnx.Module | None = None) -> None:
    """The model, method, optimizer, learning-rate schedule and jitted steps of the method at `method_state` ({}:
    a fresh start), placed on the mesh. `switched_from`: the model the method leaves at `step` (Maestro after its
    dense warm-up, Cuttlefish at its switch), whose weights the new one takes (the SVD); the optimizer is a fresh
    one, whose schedule continues from `step`."""
    config = self.config
    model = build.model(config, method_state)
    if switched_from is not None:
      methods.spec_of(config).switch(switched_from, model)
    self.method = methods.build(config, model)
    optimizer = build.optimizer_at(model, config, step, method_state)
    self.method.restore(model, optimizer, method_state)
    self.layers = methods.layers(config, method_state)
    self.schedule = build.learning_rate(config, method_state)
    self.train_step = make_train_step(self.method, config.seed, self.mesh, config.sharding, config.skip_nonfinite,
                                      config.optimizer.accumulate_steps, self.schedule)
    self.observe_step = make_observe_step(self.method, config.seed, self.mesh, config.sharding)
    self.adopt(model, optimizer)

  def adopt(self, model: nnx.Module, optimizer: nnx.Optimizer) -> None:
    """Makes `model` and `optimizer` the training state, laid out on the mesh; the next step's FLOPs are measured
    anew (its shapes or graph may have changed)."""
    (self.model_def, model_state), (self.opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
    self.state = sharding.place((model_state, opt_state), self.mesh, self.config.sharding)
    self.step_flops = None

  def live(self) -> tuple[nnx.Module, nnx.Optimizer]:
    """The model and optimizer as objects over the arrays of the state, for the host's work between steps
    (metrics, evaluation, host updates, the method's state); made anew each time, so nothing else is kept in step."""
    return nnx.merge(self.model_def, self.state[0]), nnx.merge(self.opt_def, self.state[1])

  def open_metrics(self, start: int) -> None:
    """The metrics writer (rows after `start` dropped), and the clock, which counts on from the resumed run's."""
    self.writer = metrics.MetricsWriter(self.workdir, self.config, resume_step=start, enabled=self.is_main)
    self.teardown.callback(self.writer.close)
    self.resumed = metrics.read(self.writer.path) if self.is_main and start else []
    earlier = [r["time/train_s"] for r in self.resumed if "time/train_s" in r]
    self.clock = time.time() - (earlier[-1] if earlier else 0.0)
    if start == 0:
      self.writer.write(0, {"params/total": self.params}, console=False)

  def log_due(self, step: int) -> bool:
    """Whether `step` is logged: every `log_every` and every evaluation."""
    return self.eval_due(step) or step % self.config.log_every == 0

  def eval_due(self, step: int) -> bool:
    return step % self.config.eval_every == 0 or step == self.config.num_steps

  def update(self, step: int) -> None:
    """Dispatches update `step` on the devices, without waiting for it (but for the one `IN_FLIGHT` before)."""
    batch = next(self.batches)  # Already on the devices (read and placed ahead, while earlier steps ran).
    if step == self.profile[0]:
      jax.profiler.start_trace(self.workdir / "profile")
    if self.step_flops is None:  # XLA's estimate, of the step compiled at the current shapes.
      self.step_flops = flops(self.train_step, self.model_def, self.opt_def, self.state, batch, jnp.int32(step))
    self.flops_total += self.step_flops
    if self.log_due(step) and self.method.observes:
      self.state = (self.observe_step(self.model_def, self.state[0], batch, jnp.int32(step)), self.state[1])
    if len(self.window) > IN_FLIGHT:  # Bounds the steps queued on the device (and their batches).
      jax.block_until_ready(self.window[-IN_FLIGHT - 1])
    self.state, step_metrics = self.train_step(self.model_def, self.opt_def, self.state, batch, jnp.int32(step))
    self.window.append(step_metrics)
    if step == self.profile[1]:
      jax.block_until_ready(self.state)
      jax.profiler.stop_trace()

  def fetch(self, step: int) -> None:
    """The window's metrics onto the host (one transfer: the only wait on the device between log steps); a
    non-finite one stops the run, naming its step."""
    self.window = [{k: float(v) for k, v in m.items()} for m in jax.device_get(self.window)]
    for at, m in enumerate(self.window, start=step - len(self.window) + 1):
      if not all(map(math.isfinite, m.values())) and not m.get("train/skipped"):
        bad = ", ".join(f"{k}={v}" for k, v in m.items() if not math.isfinite(v))
        self.checkpoints.close()  # A save in progress (of an earlier, finite state) ends whole.
        last = self.checkpoints.latest_step()
        kept = (f"the last good checkpoint (step {last}) is intact in {self.workdir}" if last else
                "no checkpoint was written")
        raise NonFinite(f"non-finite {bad} at step {at}; stopped without saving, {kept}; lower "
                        f"--config.optimizer.learning_rate, or skip such updates with --config.skip_nonfinite=true")

  def log(self, step: int) -> dict[str, float]:
    """Logs the window's means and the run's state at `step`, with an evaluation where one is due."""
    self.fetch(step)
    model, optimizer = self.live()
    logged = _window_means(self.window) | {
        "train/learning_rate": float(self.schedule(step - 1)), "params/effective": build.count_params(model),
        "flops/train_step": self.step_flops, "flops/total": self.flops_total,
        "compiles/train_step": self.compilations["train_step"], "time/train_s": time.time() - self.clock,
        **_peak_memory(), **self.method.metrics(step, model)}
    if self.eval_due(step):
      logged |= self.evaluate(model)
      if (ema := build.ema_of(optimizer)) is not None:  # val_ema/..., eval_ema/...
        logged |= {k.replace("/", "_ema/", 1): v for k, v in self.evaluate(build.with_parameters(model, ema)).items()}
    self.writer.write(step, logged, console="eval/accuracy" in logged)
    self.window = []
    return logged

  def evaluate(self, model: nnx.Module) -> dict[str, float]:
    """`model`'s metrics on the validation (val/...) and test (eval/...) splits."""
    config = self.config
    return {f"{prefix}/{k}": v for prefix, split in (("val", self.splits.validation), ("eval", self.splits.test))
            for k, v in evaluation.evaluate(model, data.eval_batches(split, config.eval_batch_size,
                                                                     config.dataset.eval_limit or None),
                                            self.put_whole, build.dataset(config).text).items()}

  def host_update(self, step: int) -> None:
    """The method's update between steps where one is due (a shrink, a frame, a switch to another model): new
    shapes or a new graph, compiled once."""
    if not self.method.host_update_due(step):
      return
    self.fetch(step)  # A non-finite state is neither shrunk nor switched.
    model, optimizer = self.live()
    if not self.method.host_update(step, model, optimizer):
      return
    method_state = self.method.state(step, model)
    if methods.layers(self.config, method_state) != self.layers:  # The method moves to another model.
      self.rebuild(method_state, step, switched_from=model)
      model, optimizer = self.live()
    evaluation.recalibrate_on(model, self.splits.train, self.config, self.put_whole)  # BatchNorm statistics.
    self.adopt(model, optimizer)

  def checkpoint(self, step: int) -> None:
    """Saves step `step` (asynchronously); never a non-finite state."""
    self.fetch(step)
    self.checkpoints.save(step, self.state, self.batches.get_state(), self.method.state(step, self.live()[0]),
                          self.window, {"flops_total": self.flops_total}, primary=self.is_main)

  def relog_last_row(self, step: int) -> bool:
    """A finished run started again whose metrics.jsonl lost its last row (damaged): evaluates the last checkpoint
    and logs it again. Whether it did (alike on every process)."""
    lost = multihost_utils.broadcast_one_to_all(self.is_main and not sweeps.completed(self.resumed, step))
    if lost:
      print(f"warning: {self.writer.path} has lost the last step's row; evaluated the last checkpoint again and "
            f"logged it", file=sys.stderr)
      model = self.live()[0]
      self.writer.write(step, {"params/effective": build.count_params(model), **self.evaluate(model)})
    return bool(lost)

  def last_row(self) -> dict[str, float]:
    """The run's last metrics row ({} on all but the first of several processes)."""
    return (metrics.read(self.writer.path) or [{}])[-1] if self.is_main else {}


def summary(config: ml_collections.ConfigDict, workdir: pathlib.Path, final: dict, params: int, seconds: float) -> str:
  """The table a finished run prints (`params`: the model's at the start, where its last row has none)."""
  return metrics.table([{
      "run": workdir.name, "model": config.model.name, "layers": config.layers.type,
      "params": int(final.get("params/effective", params)), "steps": config.num_steps,
      **({"sparsity": final["sparsity/total"]} if "sparsity/total" in final else {}),
      "wall time (s)": round(seconds, 1), "compilations": final.get("compiles/train_step", 0),
      "peak MiB": final.get("memory/device_peak_mib", final.get("memory/host_peak_mib", 0)),
      "val accuracy": final.get("val/accuracy", float("nan")),
      "test accuracy": final.get("eval/accuracy", float("nan")), "test loss": final.get("eval/loss", float("nan")),
      **({"test bits/char": final["eval/bits_per_char"]} if "eval/bits_per_char" in final else {}),
  }])


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
