"""The training loop.

  python train.py --config configs/fmnist_mlp_dense.py --workdir runs/mlp
  python train.py --config configs/fmnist_mlp_dense.py:smoke --workdir /tmp/smoke --config.seed=1

`--workdir` is the resume key: if it holds a checkpoint, training continues
from it and reproduces the uninterrupted run bit for bit (same machine).
"""

import functools
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import optax
import tqdm
from absl import app, flags, logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from ml_collections import config_flags

import data
from experiment import build, evaluation, metrics, plots
from experiment import config as config_lib
from experiment.checkpoint import Checkpoints

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics.jsonl, plots; resumes if it has a checkpoint.")
flags.mark_flags_as_required(["config", "workdir"])


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def train_step(model_def: nnx.GraphDef, opt_def: nnx.GraphDef, state: tuple[nnx.State, nnx.State], batch: dict):
  model, optimizer = nnx.merge(model_def, state[0]), nnx.merge(opt_def, state[1])

  def loss_fn(model):
    logits = model(batch["image"])  # (b, classes)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), logits

  (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  optimizer.update(model, grads)
  step_metrics = {"train/loss": loss, "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
                  "train/grad_norm": optax.global_norm(grads)}
  return (nnx.state(model), nnx.state(optimizer)), step_metrics


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO.
  config, workdir = _CONFIG.value, pathlib.Path(_WORKDIR.value)
  started = time.time()
  try:  # Every user error surfaces here, before compilation and before the workdir is touched.
    build.check(config)
    train_source, test_source = build.datasets(config)
    model = build.model(config)
  except (config_lib.ConfigError, data.DataError) as e:
    sys.exit(f"error: {e}")
  optimizer = nnx.Optimizer(model, build.optimizer(config), wrt=nnx.Param)
  mesh = build.data_mesh()
  put = build.batch_placer(mesh)
  (model_def, model_state), (opt_def, opt_state) = nnx.split(model), nnx.split(optimizer)
  state = jax.device_put((model_state, opt_state), NamedSharding(mesh, PartitionSpec()))

  workdir.mkdir(parents=True, exist_ok=True)
  checkpoints = Checkpoints(workdir, config.keep_checkpoints)
  batches = data.train_iterator(train_source, config.batch_size, config.seed,
                                process_index=jax.process_index(), process_count=jax.process_count())
  start = checkpoints.latest_step() or 0
  if start:
    state, data_state = checkpoints.restore(start, state)
    batches.set_state(data_state)
    print(f"Resumed from step {start} in {workdir}", file=sys.stderr)
  else:
    config_lib.save(config, workdir)
  is_main = jax.process_index() == 0
  writer = metrics.MetricsWriter(workdir, config, resume_step=start, enabled=is_main)
  num_params = build.count_params(model)
  if start == 0:
    writer.write(0, {"params/total": num_params}, console=False)
  eval_batches = lambda: data.eval_batches(test_source, config.eval_batch_size, config.dataset.eval_limit or None)

  def run_eval() -> dict[str, float]:
    nnx.update(model, state[0])
    return {f"eval/{k}": v for k, v in evaluation.evaluate(model, eval_batches(), put).items()}

  schedule = build.learning_rate(config)
  window: list[dict] = []
  bar = tqdm.tqdm(initial=start, total=config.num_steps, desc=workdir.name, dynamic_ncols=True,
                  disable=not is_main, mininterval=1 if sys.stderr.isatty() else 30)
  for step in range(start + 1, config.num_steps + 1):  # `step` = optimizer updates done after this one.
    state, step_metrics = train_step(model_def, opt_def, state, put(next(batches)))
    step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    if not all(map(math.isfinite, step_metrics.values())):
      bad = ", ".join(f"{k}={v}" for k, v in step_metrics.items() if not math.isfinite(v))
      writer.close()
      sys.exit(f"error: non-finite {bad} at step {step}; stopped without saving. The last good checkpoint "
               f"(step {checkpoints.latest_step()}) is intact in {workdir}; lower --config.optimizer.learning_rate")
    window.append(step_metrics)
    bar.update()
    if step % config.log_every == 0 or step == config.num_steps:
      logged = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
      logged["train/learning_rate"] = float(schedule(step - 1))
      if step % config.eval_every == 0 or step == config.num_steps:
        logged |= run_eval()
      writer.write(step, logged, console="eval/accuracy" in logged)
      bar.set_postfix(loss=f"{logged['train/loss']:.4f}", acc=f"{logged['train/accuracy']:.3f}")
      window = []
    if step % config.checkpoint_every == 0 or step == config.num_steps:
      checkpoints.save(step, state, batches.get_state())
  bar.close()
  writer.close()

  final = metrics.read(workdir / "metrics.jsonl")[-1] if is_main else {}
  if is_main:
    plots.training_curves(workdir)
    print(metrics.table([{
        "run": workdir.name, "model": config.model.name, "layers": config.layers.type, "params": num_params,
        "steps": config.num_steps, "wall time (s)": round(time.time() - started, 1),
        "test accuracy": final.get("eval/accuracy", float("nan")), "test loss": final.get("eval/loss", float("nan")),
    }]))
    print(f"Wrote {workdir}/metrics.jsonl, {workdir}/plots/training.png and checkpoints in {workdir}/checkpoints")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
