"""Evaluation of a model on a split, and the recalibration of its BatchNorm statistics; shared by train.py and
eval.py."""

import functools
import math
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import data


@functools.partial(jax.jit, static_argnums=0)
def _sums(graphdef: nnx.GraphDef, state: nnx.State, batch: dict) -> dict[str, jax.Array]:
  logits = nnx.merge(graphdef, state)(batch["inputs"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])  # (b,) or, per token, (b, t)
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
  mask = jnp.broadcast_to(batch["mask"].reshape(-1, *(1,) * (loss.ndim - 1)), loss.shape)  # Padded examples: 0.
  return {"loss": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}


def evaluate(model: nnx.Module, batches: Iterable[dict], put: Callable[[dict], dict],
             text: bool = False) -> dict[str, float]:
  """Mean loss and accuracy over every target (example, or token) of `batches`, padding excluded; `text`: also
  bits per character (the loss in bits)."""
  graphdef, state = nnx.split(nnx.view(model, use_running_average=True, raise_if_not_found=False))  # BatchNorm's
  # running statistics, not the batch's.
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for batch in batches:
    for k, v in jax.device_get(_sums(graphdef, state, put(batch))).items():
      totals[k] += float(np.asarray(v))
  result = {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}
  return result | ({"bits_per_char": result["loss"] / math.log(2)} if text else {})


@functools.partial(jax.jit, static_argnums=0)
def _batch_statistics(graphdef: nnx.GraphDef, state: nnx.State, inputs: jax.Array) -> nnx.State:
  model = nnx.merge(graphdef, state)  # Its BatchNorms in training mode, momentum 0: running statistics := the batch's.
  model(inputs)
  return nnx.state(model, nnx.BatchStat)


def recalibrate(model: nnx.Module, batches: Iterable[dict], put: Callable[[dict], dict]) -> int:
  """Sets every BatchNorm's running mean and variance of `model` to the mean over `batches` of each batch's
  statistics (PyTorch's cumulative average), as for a model whose weights changed since they were gathered (a
  Maestro shrink, a rank cut). Returns the number of batches read; 0 (nothing read) without BatchNorm."""
  if not any(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_graph(model)):
    return 0
  measuring = nnx.merge(*nnx.split(model))  # A copy (same arrays) whose BatchNorms train with momentum 0.
  for _, m in nnx.iter_graph(measuring):
    if isinstance(m, nnx.BatchNorm):
      m.use_running_average, m.momentum = False, 0.0
  graphdef, state = nnx.split(measuring)
  sums, count = None, 0
  for batch in batches:
    stats = _batch_statistics(graphdef, state, put(batch)["inputs"])
    sums = stats if sums is None else jax.tree.map(jnp.add, sums, stats)
    count += 1
  if count:
    nnx.update(model, jax.tree.map(lambda total: total / count, sums))
  return count


def recalibrate_on(model: nnx.Module, train: data.Split, config, put: Callable[[dict], dict]) -> int:
  """`recalibrate` on the first config.recalibrate_batches whole training batches of config.batch_size, in order and
  not augmented (the same batches every time). Returns the number of batches read (0 without BatchNorm)."""
  whole = min(config.recalibrate_batches, len(train) // config.batch_size)  # No padded batch.
  return recalibrate(model, data.eval_batches(train, config.batch_size, whole * config.batch_size), put)
