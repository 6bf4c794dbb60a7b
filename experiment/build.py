"""Everything a run is built from, by config: data, model, optimizer.

train.py and eval.py build through here, so both see the same model. All of it
is checked (`check`) before anything is compiled or written to a workdir.
"""

import inspect

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import data
import models
from experiment import sharding
from experiment.config import ConfigError, check as check_fields

OPTIMIZERS = {"adamw", "sgd"}
SCHEDULES = {"cosine", "constant"}
WANDB_MODES = {"online", "offline", "disabled"}


def check(config: ml_collections.ConfigDict) -> None:
  check_fields(config, known={
      "dataset.name": list(data.DATASETS), "model.name": list(models.MODELS),
      "layers.type": list(models.LAYER_TYPES), "optimizer.name": list(OPTIMIZERS),
      "optimizer.schedule": list(SCHEDULES), "wandb.mode": list(WANDB_MODES), "sharding": list(sharding.KINDS)})


def dataset(config: ml_collections.ConfigDict) -> data.Dataset:
  """What the configured dataset is: input shape and dtype, classes, how to load and batch it."""
  return data.DATASETS[config.dataset.name]


def example_input(config: ml_collections.ConfigDict, batch: int = 1) -> jax.Array:
  """Zeros shaped like a batch of the dataset's inputs (to trace or cost a model)."""
  spec = dataset(config)
  return jnp.zeros((batch, *spec.input_shape), spec.input_dtype)


def datasets(config: ml_collections.ConfigDict) -> tuple[data.Split, data.Split]:
  """(train, test) splits; prepares the TFDS dataset on first use."""
  spec = dataset(config)
  fields = {k: v or None for k, v in config.dataset.items() if k not in ("name", "eval_limit")}  # Where its files are.
  takes = set(inspect.signature(spec.load).parameters) - {"split"}
  if set(fields) - takes:
    raise ConfigError(f"config.dataset.{sorted(set(fields) - takes)[0]} is not a field of the {config.dataset.name} "
                      f"dataset, which takes {sorted(takes)} (and name, eval_limit)")
  train, test = (data.Split(spec.load(split, **fields), spec.collate) for split in ("train", "test"))
  for field, split, name in (("batch_size", train, "train"), ("eval_batch_size", test, "test")):
    if config[field] > len(split):
      raise ConfigError(f"config.{field}={config[field]} exceeds the {len(split)} examples of the {name} split; "
                        f"use at most {len(split)}")
  return train, test


def model(config: ml_collections.ConfigDict, dense: bool = False) -> nnx.Module:
  """The configured model; `dense=True`: the same model with every layer dense."""
  layers = {"type": "dense"} if dense else config.layers
  spec = dataset(config)
  try:
    return models.build(config.model, layers, input_shape=spec.input_shape, num_classes=spec.num_classes,
                        seed=config.seed)
  except TypeError as e:  # A keyword the model or layer does not take.
    raise ConfigError(f"config.model / config.layers has a field the model does not take: {e}") from e
  except ValueError as e:  # Layers name the field in their message.
    raise ConfigError(str(e)) from e


def learning_rate(config: ml_collections.ConfigDict) -> optax.Schedule:
  o = config.optimizer
  if o.schedule == "constant":
    return optax.linear_schedule(0.0, o.learning_rate, max(o.warmup_steps, 1)) if o.warmup_steps else optax.constant_schedule(o.learning_rate)
  warmup = max(o.warmup_steps, 1)  # A warm-up as long as the run: it ends before the peak, with no decay.
  return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, warmup, max(config.num_steps, warmup + 1))


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o, lr = config.optimizer, learning_rate(config)
  tx = optax.adamw(lr, weight_decay=o.weight_decay) if o.name == "adamw" else optax.sgd(lr, momentum=0.9)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip), tx) if o.grad_clip > 0 else tx


def dense_warmup_steps(config: ml_collections.ConfigDict) -> int:
  return config.lowrank.get("dense_warmup_steps", 0) if config.layers.type == "lowrank" else 0


def optimizer_at(model: nnx.Module, config: ml_collections.ConfigDict, step: int) -> nnx.Optimizer:
  """A fresh optimizer for `model` whose step counters (and so its learning-rate
  schedule) continue from `step`."""
  opt = nnx.Optimizer(model, optimizer(config), wrt=nnx.Param)
  flat = [(p, v.replace(jnp.full_like(v[...], step)) if p[-1] in ("count", "step") else v)
          for p, v in nnx.to_flat_state(nnx.state(opt))]
  nnx.update(opt, nnx.from_flat_state(flat))
  return opt


def count_params(model: nnx.Module) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
