"""The jitted steps of train.py: the train step, and the observe step a method
may run at log steps. Graph definitions are static arguments, so each distinct
graph (after a shrink, an N:M frame change) compiles once."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from experiment import method as method_lib
from experiment import sharding


def _gradients(method: method_lib.Method, seed: int, model: nnx.Module, batch: dict, step: jax.Array):
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


def flops(jitted, *args) -> float:
  """XLA's estimate of the floating-point operations of one call of `jitted` (static arguments included)."""
  cost = jitted.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def make_train_step(method: method_lib.Method, seed: int, mesh: Mesh, layout: str = "data",
                    skip_nonfinite: bool = False):
  """One jitted step: graph definitions (static), (model state, optimizer state), batch, step -> new states, metrics.

  A new graph definition (a shrink, an N:M frame change) compiles once; every other step reuses the compilation.
  The new state is laid out by `sharding.spec` (`layout`: data | fsdp), so its shardings are those of the state
  passed in, and the next call hits the same compilation.
  `skip_nonfinite`: a step with a non-finite metric (loss, gradient norm, norm of the updated weights, ...)
  returns the states it was given, and the metric `train/skipped` = 1.
  """

  def train_step(model_def: nnx.GraphDef, opt_def: nnx.GraphDef, state: tuple[nnx.State, nnx.State], batch: dict,
                 step: jax.Array):
    given = jax.tree.map(lambda x: x, state)  # Its own Variables: `merge` shares those of `state`, which update mutates.
    model, optimizer = nnx.merge(model_def, state[0]), nnx.merge(opt_def, state[1])
    (loss, logits, extra), grads = _gradients(method, seed, model, batch, step)
    optimizer.update(model, grads)
    step_metrics = {"train/loss": loss, "train/accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["targets"]),
                    "train/grad_norm": optax.tree.norm(grads),
                    "train/param_norm": optax.tree.norm(nnx.state(model, nnx.Param)), **extra}
    new_state = (nnx.state(model), nnx.state(optimizer))
    if skip_nonfinite:
      finite = jnp.all(jnp.isfinite(jnp.stack(list(step_metrics.values()))))  # Loss, gradient and new weight norms.
      new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, given)
      step_metrics["train/skipped"] = 1.0 - finite
    return sharding.constrain(new_state, mesh, layout), sharding.constrain(step_metrics, mesh, "data")

  return jax.jit(train_step, static_argnums=(0, 1), donate_argnums=2)


def make_observe_step(method: method_lib.Method, seed: int, mesh: Mesh, layout: str = "data"):
  """Jitted, run at log steps just before the train step on the same inputs: the
  gradients that update will use, handed to `method.observe` to record on the model.
  Returns the new model state (the optimizer state is untouched)."""

  def observe_step(model_def: nnx.GraphDef, model_state: nnx.State, batch: dict, step: jax.Array):
    model = nnx.merge(model_def, model_state)
    _, grads = _gradients(method, seed, model, batch, step)
    method.observe(model, step, grads)
    return sharding.constrain(nnx.state(model), mesh, layout)

  return jax.jit(observe_step, static_argnums=0, donate_argnums=1)
