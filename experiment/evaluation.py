"""Evaluation of a model on a split, shared by train.py and eval.py."""

import functools
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


@functools.partial(jax.jit, static_argnums=0)
def _sums(graphdef: nnx.GraphDef, state: nnx.State, batch: dict) -> dict[str, jax.Array]:
  logits = nnx.merge(graphdef, state)(batch["image"])
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return {"loss": jnp.sum(loss * batch["mask"]), "correct": jnp.sum(correct * batch["mask"]),
          "count": jnp.sum(batch["mask"])}


def evaluate(model: nnx.Module, batches: Iterable[dict], put: Callable[[dict], dict]) -> dict[str, float]:
  """Mean loss and accuracy over every (unpadded) example of `batches`."""
  graphdef, state = nnx.split(model)
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for batch in batches:
    for k, v in jax.device_get(_sums(graphdef, state, put(batch))).items():
      totals[k] += float(np.asarray(v))
  return {"loss": totals["loss"] / totals["count"], "accuracy": totals["correct"] / totals["count"]}
