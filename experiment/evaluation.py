"""Evaluation of a model on a split, shared by train.py and eval.py."""

import functools
import math
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


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
  graphdef, state = nnx.split(model)
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for batch in batches:
    for k, v in jax.device_get(_sums(graphdef, state, put(batch))).items():
      totals[k] += float(np.asarray(v))
  result = {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}
  return result | ({"bits_per_char": result["loss"] / math.log(2)} if text else {})
