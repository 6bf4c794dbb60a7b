"""Everything a run is built from, by config: data, model, optimizer.

train.py and eval.py build through here, so both see the same model. All of it
is checked (`check`) before anything is compiled or written to a workdir.
"""

import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import data
import models
from experiment import methods, sharding
from experiment.config import ConfigError, check as check_fields, epoch_fields, in_epochs

OPTIMIZERS = {"adamw", "sgd"}
SCHEDULES = {"cosine", "linear", "constant", "warmup_stable_decay", "step"}
DECAY = {"kernels", "all"}  # Which parameters weight decay shrinks: ndim >= 2 only, or every one.
WANDB_MODES = {"online", "offline", "disabled"}
COMPUTE_DTYPES = {"float32", "bfloat16"}  # What layers compute in; parameters and optimizer state stay float32.


def check(config: ml_collections.ConfigDict) -> None:
  check_fields(config, known={
      "model.name": list(models.MODELS),
      "layers.type": list(methods.REGISTRY), "optimizer.name": list(OPTIMIZERS),
      "compute_dtype": list(COMPUTE_DTYPES), "optimizer.schedule": list(SCHEDULES), "optimizer.decay": list(DECAY),
      "wandb.mode": list(WANDB_MODES), "sharding": list(sharding.KINDS)})
  methods.check(config)


def dataset(config: ml_collections.ConfigDict) -> data.Dataset:
  """What the configured dataset is: input shape and dtype, classes, default splits, how to load and batch it."""
  return data.of_config(config.dataset)


def example_input(config: ml_collections.ConfigDict, batch: int = 1) -> jax.Array:
  """Zeros shaped like a batch of the dataset's inputs (to trace or cost a model)."""
  spec = dataset(config)
  return jnp.zeros((batch, *spec.input_shape), spec.input_dtype)


SPLIT_FIELDS = ("train_split", "validation_split", "test_split")  # In TFDS slicing syntax; "": the dataset's default.
NOT_FILES = ("name", "eval_limit", "workers", "preprocess", *SPLIT_FIELDS)  # config.dataset fields not about files.


class Splits(NamedTuple):
  train: data.Split
  validation: data.Split
  test: data.Split


def split_names(config: ml_collections.ConfigDict) -> dict[str, str]:
  """config.dataset's split fields, the dataset's defaults where empty (or absent: a run of an older version)."""
  return {f: config.dataset.get(f) or default for f, default in zip(SPLIT_FIELDS, dataset(config).splits)}


def datasets(config: ml_collections.ConfigDict) -> Splits:
  """The train, validation and test splits; prepares this project's TFDS datasets on first use."""
  spec = dataset(config)
  takes = set(inspect.signature(spec.load).parameters) - {"split", "name"}
  fields = {k: v or None for k, v in config.dataset.items() if k not in NOT_FILES}  # Where its files are.
  if unknown := sorted(k for k, v in fields.items() if v and k not in takes):  # Another dataset's, left empty: fine.
    raise ConfigError(f"config.dataset.{unknown[0]} is not a field of the {config.dataset.name} dataset, which takes "
                      f"{sorted(takes)} (and {', '.join(NOT_FILES)})")
  fields = {k: v for k, v in fields.items() if k in takes}
  splits = []
  for field, split in split_names(config).items():
    try:
      source = data.Split(spec.load(split, **fields), spec.collate, spec.fixed_shapes)
    except data.DataError:
      raise
    except ValueError as e:  # TFDS's, for a split it does not have or a slice it cannot read.
      raise ConfigError(f"config.dataset.{field}={split!r}: {str(e).strip().splitlines()[0]}") from None
    if not len(source):
      raise ConfigError(f"config.dataset.{field}={split!r} has no examples in {config.dataset.name}; choose another "
                        f"slice (TFDS slicing syntax, e.g. train[:90%])")
    splits.append(source)
  splits = Splits(*splits)
  for field, split, name in (("batch_size", splits.train, "train"), ("eval_batch_size", splits.test, "test")):
    if config[field] > len(split):
      raise ConfigError(f"config.{field}={config[field]} exceeds the {len(split)} examples of the {name} split; "
                        f"use at most {len(split)}")
  return splits


def model(config: ml_collections.ConfigDict, method_state: dict | None = None, *, dense: bool = False) -> nnx.Module:
  """The model `config.layers` describes; at a `method_state` (one saved with a checkpoint; {}: a fresh start), the
  model the method trains then (e.g. dense during Maestro's dense warm-up); `dense=True`: every layer dense."""
  layers = {"type": "dense"} if dense else config.layers if method_state is None else methods.layers(config,
                                                                                                    method_state)
  layers = methods.layer_factory(layers, jnp.dtype(config.compute_dtype))
  spec = dataset(config)
  try:
    return models.build(config.model, layers, input_shape=spec.input_shape, num_classes=spec.num_classes,
                        seed=config.seed)
  except TypeError as e:  # A keyword the model or layer does not take.
    raise ConfigError(f"config.model / config.layers has a field the model does not take: {e}") from e
  except ValueError as e:  # Layers name the field in their message.
    raise ConfigError(str(e)) from e


def learning_rate(config: ml_collections.ConfigDict, method_state: dict | None = None) -> optax.Schedule:
  """Linear warm-up over `warmup_steps`, then `schedule`: cosine or linear decay to 0 at the last step, constant,
  warmup_stable_decay (constant, then linear decay to 0 over the last `decay_fraction` of the steps), or step
  (x0.1 at each fraction `step_at` of the steps after the warm-up). At `method_state`, a method may restart it
  with a linear re-warm after update `start` (Cuttlefish after its switch): x (count − start + 1) / steps until
  that reaches 1, so the first update after it runs at 1/steps of the schedule's value."""
  if epochs := in_epochs(config):
    raise ConfigError(f"config.{epoch_fields(config)[next(iter(epochs))]} is in epochs: convert the config first, "
                      f"experiment.config.in_steps(config, train_examples)")
  o, steps = config.optimizer, config.num_steps
  warmup = min(o.warmup_steps, steps)
  ramp = optax.linear_schedule(0.0, o.learning_rate, warmup) if warmup else None
  rest = max(steps - warmup, 1)
  decaying = min(max(round(o.decay_fraction * steps), 1), rest)  # warmup_stable_decay's last steps.
  after = {"cosine": lambda: optax.cosine_decay_schedule(o.learning_rate, rest),
           "linear": lambda: optax.linear_schedule(o.learning_rate, 0.0, rest),
           "constant": lambda: optax.constant_schedule(o.learning_rate),
           "warmup_stable_decay": lambda: optax.join_schedules(
               [optax.constant_schedule(o.learning_rate), optax.linear_schedule(o.learning_rate, 0.0, decaying)],
               [rest - decaying]),
           "step": lambda: optax.piecewise_constant_schedule(
               o.learning_rate, {max(1, round(f * rest)): 0.1 for f in o.step_at})}[o.schedule]()
  schedule = optax.join_schedules([ramp, after], [warmup]) if ramp else after
  if not (rewarm := methods.rewarm(config, method_state or {})):
    return schedule
  start, rewarm_steps = rewarm
  return lambda count: schedule(count) * jnp.clip((count - start + 1) / rewarm_steps, 0.0, 1.0)


def _name(path: tuple) -> str:
  """A parameter's name (its last key: kernel, bias, down, up, ...) from its path in a state tree."""
  return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]


def optimizer(config: ml_collections.ConfigDict, method_state: dict | None = None) -> optax.GradientTransformation:
  """AdamW or SGD with momentum (weight decay decoupled, on kernels only unless `decay=all`, and never on the
  parameters the method exempts at `method_state`), after gradient clipping, and with `ema_decay` > 0 an EMA of
  the parameters kept in the optimizer state (`ema_parameters`). The learning rate: `learning_rate`."""
  o, lr = config.optimizer, learning_rate(config, method_state)
  exempt = methods.decay_exempt(config, method_state or {})
  decayed = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, p: (o.decay == "all" or p.ndim >= 2) and _name(path) not in exempt, params)
  if o.name == "adamw":
    tx = optax.adamw(lr, weight_decay=o.weight_decay, mask=decayed)
  else:
    tx = optax.chain(optax.add_decayed_weights(o.weight_decay, decayed), optax.sgd(lr, momentum=0.9))
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx) if o.grad_clip > 0 else tx
  return optax.chain(tx, ema_parameters(o.ema_decay)) if o.ema_decay else tx


class EmaState(NamedTuple):
  ema: optax.Params


def ema_parameters(decay: float) -> optax.GradientTransformation:
  """Passes the updates through and keeps ema ← decay·ema + (1 − decay)·(params + updates): an exponential
  moving average of the parameters after each update, in the optimizer state, so that it is checkpointed, laid
  out and shrunk with the parameters' other optimizer state. (optax.ema averages updates, not parameters.)"""

  def update(updates, state, params):
    new = optax.apply_updates(params, updates)
    return updates, EmaState(jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, new))

  return optax.GradientTransformation(lambda params: EmaState(jax.tree.map(jnp.copy, params)), update)


def ema_of(optimizer: nnx.Optimizer) -> optax.Params | None:
  """The EMA of the parameters the optimizer keeps (`ema_decay` > 0), else None."""
  return optax.tree_utils.tree_get(nnx.as_pure(optimizer.opt_state), "ema", default=None)


def optimizer_at(model: nnx.Module, config: ml_collections.ConfigDict, step: int,
                 method_state: dict) -> nnx.Optimizer:
  """A fresh optimizer for `model` after a model switch to `method_state` at `step`: its moments and their
  counters (Adam's bias correction) start at 0, as a fresh optimizer's do; its learning-rate schedule continues
  from `step` (or restarts there, as the method says)."""
  opt = nnx.Optimizer(model, optimizer(config, method_state), wrt=nnx.Param)
  opt.step[...] = jnp.full_like(opt.step[...], step)  # Updates made: what `after_update`'s learning rate reads.
  is_schedule = lambda s: isinstance(s, optax.ScaleByScheduleState)
  for s in jax.tree.leaves(opt.opt_state, is_leaf=is_schedule):
    if is_schedule(s):
      s.count[...] = jnp.full_like(s.count[...], step)
  return opt


def with_parameters(model: nnx.Module, params: optax.Params) -> nnx.Module:
  """A copy of `model` whose parameters are `params` (a pure state of its nnx.Param, e.g. their EMA)."""
  copy = nnx.clone(model)
  nnx.update(copy, params)
  return copy


def count_params(model: nnx.Module) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
