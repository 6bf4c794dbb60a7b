"""The jitted steps of train.py: the train step, and the observe step a method
may run at log steps. Graph definitions are static arguments, so each distinct
graph (after a shrink, an N:M frame change) compiles once."""

import collections

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from experiment import methods
from experiment import sharding


def _gradients(method: methods.Hooks, seed: int, model: nnx.Module, batch: dict, step: jax.Array):
  """(loss, logits, the method's extra metrics), gradients w.r.t. the parameters."""
  key = jax.random.fold_in(jax.random.key(seed), step)

  def forward(model, soft_targets):
    logits = model(batch["inputs"])  # (b, classes) or, per token, (b, t, classes)
    if soft_targets is None:
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), logits
    return optax.softmax_cross_entropy(logits, soft_targets).mean(), logits

  def loss_fn(model):
    loss, logits, extra = method.loss(model, step, key, forward)
    return loss, (logits, extra)

  (loss, (logits, extra)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
  return (loss, logits, extra), grads


def _accumulated_gradients(method: methods.Hooks, seed: int, model: nnx.Module, batch: dict, step: jax.Array,
                           micro: int, mesh: Mesh):
  """`_gradients` over `micro` sequential micro-batches of `batch` (one `lax.scan`): the mean loss, accuracy, extra
  metrics and gradients, as one pass over the whole batch would give them up to float rounding. Micro-batch j
  holds examples j, j + micro, ..., so each is split over the devices like the batch."""
  def split(x):  # (b, ...) -> (micro, b / micro, ...)
    x = jnp.moveaxis(x.reshape(x.shape[0] // micro, micro, *x.shape[1:]), 1, 0)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, "data")))

  model_def, model_state = nnx.split(model)

  def one(grads, part):
    micro_model = nnx.merge(model_def, jax.tree.map(lambda x: x, model_state))  # Variables of this trace level.
    (loss, logits, extra), part_grads = _gradients(method, seed, micro_model, part, step)
    metrics = {"train/loss": loss, "train/accuracy": _accuracy(logits, part["targets"]), **extra}
    return jax.tree.map(jnp.add, grads, part_grads), (metrics, nnx.state(micro_model, nnx.Not(nnx.Param)))

  zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  grads, (metrics, variables) = jax.lax.scan(one, zeros, jax.tree.map(split, batch))
  nnx.update(model, jax.tree.map(lambda v: v[-1], variables))  # What the method set on the model (same each time).
  return jax.tree.map(lambda x: x.mean(0), metrics), jax.tree.map(lambda g: g / micro, grads)


def _accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == targets)


# jax.monitoring's event for each backend compilation (its `fun_name`: the jitted function's name).
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def count_compilations() -> collections.Counter:
  """Counts, from now on, the backend compilations of each jitted function by its name (e.g. "train_step")."""
  counts = collections.Counter()

  def listen(event: str, duration: float, *, fun_name: str = "", **_) -> None:
    if event == BACKEND_COMPILE_EVENT:
      counts[fun_name.removeprefix("jit(").removesuffix(")")] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  return counts


def flops(jitted, *args) -> float:
  """XLA's estimate of the floating-point operations of one call of `jitted` (static arguments included)."""
  cost = jitted.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def make_train_step(method: methods.Hooks, seed: int, mesh: Mesh, layout: str = "data",
                    skip_nonfinite: bool = False, accumulate_steps: int = 1,
                    learning_rate: optax.Schedule | None = None):
  """One jitted step: graph definitions (static), (model state, optimizer state), batch, step -> new states, metrics.

  A new graph definition (a shrink, an N:M frame change) compiles once; every other step reuses the compilation.
  The new state is laid out by `sharding.spec` (`layout`: data | fsdp), so its shardings are those of the state
  passed in, and the next call hits the same compilation.
  `skip_nonfinite`: a step with a non-finite metric (loss, gradient norm, norm of the updated weights, ...)
  returns the states it was given, and the metric `train/skipped` = 1.
  `accumulate_steps` > 1: the batch's gradients are accumulated over that many micro-batches, then one update.
  `learning_rate`: the optimizer's schedule, for a method that changes the parameters after the update
  (`method.updates_after`), which then gets the rate the update used.
  """
  if method.updates_after and learning_rate is None:
    raise ValueError("this method changes the parameters after each update by the learning rate: pass "
                     "make_train_step its learning_rate schedule")

  def train_step(model_def: nnx.GraphDef, opt_def: nnx.GraphDef, state: tuple[nnx.State, nnx.State], batch: dict,
                 step: jax.Array):
    given = jax.tree.map(lambda x: x, state)  # Its own Variables: `merge` shares those of `state`, which update mutates.
    model, optimizer = nnx.merge(model_def, state[0]), nnx.merge(opt_def, state[1])
    if accumulate_steps > 1:
      step_metrics, grads = _accumulated_gradients(method, seed, model, batch, step, accumulate_steps, mesh)
    else:
      (loss, logits, extra), grads = _gradients(method, seed, model, batch, step)
      step_metrics = {"train/loss": loss, "train/accuracy": _accuracy(logits, batch["targets"]), **extra}
    rate = learning_rate(optimizer.step[...]) if method.updates_after else None  # This update's (its count so far).
    optimizer.update(model, grads)
    if method.updates_after:
      method.after_update(model, step, rate)
    step_metrics |= {"train/grad_norm": optax.tree.norm(grads),
                     "train/param_norm": optax.tree.norm(nnx.state(model, nnx.Param))}
    new_state = (nnx.state(model), nnx.state(optimizer))
    if skip_nonfinite:
      finite = jnp.all(jnp.isfinite(jnp.stack(list(step_metrics.values()))))  # Loss, gradient and new weight norms.
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, given)
      step_metrics["train/skipped"] = 1.0 - finite
    return sharding.constrain(new_state, mesh, layout), sharding.constrain(step_metrics, mesh, "data")

  return jax.jit(train_step, static_argnums=(0, 1), donate_argnums=2)


def make_observe_step(method: methods.Hooks, seed: int, mesh: Mesh, layout: str = "data"):
  """Jitted, run at log steps just before the train step on the same inputs: the
  gradients that update will use, handed to `method.observe` to record on the model.
  Returns the new model state (the optimizer state is untouched)."""

  def observe_step(model_def: nnx.GraphDef, model_state: nnx.State, batch: dict, step: jax.Array):
    model = nnx.merge(model_def, model_state)
    batch_statistics = jax.tree.map(lambda x: x, nnx.state(model, nnx.BatchStat))  # The train step updates them.
    _, grads = _gradients(method, seed, model, batch, step)
    method.observe(model, step, grads)
    nnx.update(model, batch_statistics)
    return sharding.constrain(nnx.state(model), mesh, layout)

  return jax.jit(observe_step, static_argnums=0, donate_argnums=1)
