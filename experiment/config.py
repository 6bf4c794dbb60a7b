"""Config handling shared by train.py and eval.py: the command line, checks
that run before anything is compiled or written, and the saved config."""

import math
import os
import pathlib
import sys

import jax
import ml_collections
from absl import flags


class ConfigError(ValueError):
  """A bad config value; the message names the field and the fix."""


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, but a user error is one line on stderr, not a traceback.

  Pass as `app.run(main, flags_parser=parse_flags)`.
  """
  for i, arg in enumerate(argv):  # A missing config file is otherwise only reported when first read.
    path = arg.split("=", 1)[1] if arg.startswith("--config=") else argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
      sys.exit(f"error: --config {path}: no such file; pass one of {sorted(str(p) for p in pathlib.Path('configs').glob('*.py') if 'def get_config' in p.read_text())}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):  # get_config raised (a bad `:key=value`): its last line says why.
      sys.exit(f"error: --config: {str(e).strip().splitlines()[-1].split(': ', 1)[-1]}")
    sys.exit(f"error: {e}")
  except (AttributeError, KeyError) as e:  # config_flags: an override of a field that does not exist.
    field = str(e).strip("\"'")
    overrides = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    named = next((o for o in overrides if field in o.split(".")), field)
    sys.exit(f"error: --{named}: no such config field; check the spelling against the config file")


def parse_arg(arg: str | None) -> dict[str, str]:
  """`--config file.py:smoke,method=mdgf,n=1` -> {"smoke": "", "method": "mdgf", "n": "1"}."""
  if not arg:
    return {}
  return dict((kv.split("=", 1) + [""])[:2] for kv in arg.split(","))


def parse_like(current, value: str, key: str):
  """`value` as the type of the field it replaces ("False" is False, not a true string)."""
  if isinstance(current, bool):
    if value.lower() not in ("true", "false"):
      raise ValueError(f"config argument {key}={value!r}: must be true or false")
    return value.lower() == "true"
  return type(current)(value) if current is not None else value


# Fields a config.json of an older version of the code lacks (checked like the `known` fields for presence).
NEWER_FIELDS = ("optimizer.decay_fraction", "optimizer.accumulate_steps", "optimizer.ema_decay", "dataset.workers",
                "profile_steps", "recalibrate_batches", "optimizer.step_at")


def epoch_fields(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{steps field: its epochs twin} for every step count `config` may give in epochs of the train split instead,
  by name, whatever section (a method's) it is in: a field `<name>_epochs` is the twin of `<name>_steps` where
  the config has one, else of `<name>` (num_epochs: num_steps; eval_every_epochs: eval_every;
  lowrank.shrink_every_epochs: lowrank.shrink_every). At most one of a pair is > 0. A run converts epochs to steps
  from the train split's real size (`in_steps`) before anything else reads them, and saves the converted config."""
  pairs = {}

  def walk(node, prefix: str) -> None:
    for key, value in node.items():
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f"{prefix}{key}.")
      elif key.endswith("_epochs"):
        base = key.removesuffix("_epochs")
        twin = f"{base}_steps" if f"{base}_steps" in node else base
        if twin in node:
          pairs[prefix + twin] = prefix + key

  walk(config, "")
  return pairs


def get_field(config: ml_collections.ConfigDict, field: str, default=None):
  """`config`'s dotted `field` ("optimizer.warmup_steps"); `default` where it is absent."""
  *parents, leaf = field.split(".")
  for p in parents:
    config = config.get(p) or {}
  return config.get(leaf, default)


def set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Sets `config`'s dotted `field` to `value`."""
  *parents, leaf = field.split(".")
  for p in parents:
    config = config[p]
  config[leaf] = value


def in_epochs(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{steps field: epochs} for each step count `config` gives in epochs."""
  return {steps: get_field(config, epochs) for steps, epochs in epoch_fields(config).items()
          if get_field(config, epochs, 0)}


def in_steps(config: ml_collections.ConfigDict, train_examples: int) -> ml_collections.ConfigDict:
  """`config` with every step count given in epochs converted to optimizer steps (at least one) of
  `config.batch_size` over `train_examples`, and its epochs field set to 0."""
  config = ml_collections.ConfigDict(config.to_dict())
  twins = epoch_fields(config)
  for steps, epochs in in_epochs(config).items():
    set_field(config, steps, max(1, round(epochs * train_examples / config.batch_size)))
    set_field(config, twins[steps], 0.0)
  return config


def _require(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field} {message}")


def check(config: ml_collections.ConfigDict, *, known: dict[str, list[str]]) -> None:
  """Raises ConfigError for the first bad field. `known` maps a field to its
  allowed values (datasets, models, layer types are registered elsewhere)."""
  for field in [*known, *NEWER_FIELDS]:
    value = config
    for part in field.split("."):
      _require(part in value, field, "is missing (a config.json written by an older version of the code?); add it")
      value = value[part]
    if field in known:
      _require(value in known[field], field, f"={value!r} is unknown; choose one of {sorted(known[field])}")
  twins = epoch_fields(config)
  for steps, epochs in twins.items():
    count, value = get_field(config, steps), get_field(config, epochs, 0)
    _require(isinstance(value, (int, float)) and 0 <= value < math.inf, epochs,
             f"={value!r} must be >= 0 and finite (0: {steps} counts in steps)")
    _require(not (value and count), steps, f"={count!r} and config.{epochs}={value!r} are both set; keep one, e.g. "
             f"--config.{epochs}=0 to count in steps")
  for field in ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every", "eval_batch_size",
                "keep_checkpoints"):
    if not (field in twins and get_field(config, twins[field], 0)):
      _require(isinstance(config[field], int) and config[field] > 0, field,
               f"={config[field]!r} must be a positive integer; set --config.{field}=<n>")
  _require(isinstance(config.seed, int) and 0 <= config.seed < 2**31, "seed", f"={config.seed!r} must be in [0, 2**31)")
  _require(isinstance(config.dataset.eval_limit, int) and config.dataset.eval_limit >= 0, "dataset.eval_limit",
           f"={config.dataset.eval_limit!r} must be >= 0 (0: the whole test split)")
  _require(isinstance(config.optimizer.warmup_steps, int) and config.optimizer.warmup_steps >= 0,
           "optimizer.warmup_steps", f"={config.optimizer.warmup_steps!r} must be >= 0")
  _require(0 < config.optimizer.learning_rate < math.inf, "optimizer.learning_rate",
           f"={config.optimizer.learning_rate!r} must be positive and finite; set --config.optimizer.learning_rate=1e-3")
  for field in ("weight_decay", "grad_clip"):
    value = config.optimizer[field]
    _require(0 <= value < math.inf, f"optimizer.{field}", f"={value!r} must be >= 0 and finite (0: off)")
  o = config.optimizer
  _require(0 < o.decay_fraction <= 1, "optimizer.decay_fraction", f"={o.decay_fraction!r} must be in (0, 1]")
  fractions = list(o.step_at)
  _require(all(isinstance(f, (int, float)) and 0 < f < 1 for f in fractions) and fractions == sorted(set(fractions)),
           "optimizer.step_at", f"={o.step_at!r} must be increasing fractions in (0, 1), e.g. (0.5, 0.75)")
  _require(0 <= o.ema_decay < 1, "optimizer.ema_decay",
           f"={o.ema_decay!r} must be in [0, 1) (0: off; e.g. 0.999); set --config.optimizer.ema_decay=0.999")
  _require(isinstance(o.accumulate_steps, int) and o.accumulate_steps >= 1, "optimizer.accumulate_steps",
           f"={o.accumulate_steps!r} must be an integer >= 1 (1: no accumulation)")
  _require(isinstance(config.recalibrate_batches, int) and config.recalibrate_batches >= 0, "recalibrate_batches",
           f"={config.recalibrate_batches!r} must be an integer >= 0 (0: never)")
  _require(isinstance(config.dataset.workers, int) and config.dataset.workers >= 0, "dataset.workers",
           f"={config.dataset.workers!r} must be an integer >= 0 (0: read on threads)")
  profile_steps(config)
  devices, micro = jax.device_count(), config.optimizer.accumulate_steps
  _require(config.batch_size % (devices * micro) == 0, "batch_size",
           f"={config.batch_size} is not divisible by the {devices} devices × optimizer.accumulate_steps={micro}; "
           f"use a multiple of {devices * micro}")
  _require(config.eval_batch_size % devices == 0, "eval_batch_size",
           f"={config.eval_batch_size} is not divisible by the {devices} devices; use a multiple of {devices}")


def profile_steps(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """`config.profile_steps` "a:b" as (a, b), steps 1 <= a <= b <= num_steps to trace; "" is None."""
  if not config.profile_steps:
    return None
  first, _, last = str(config.profile_steps).partition(":")
  try:
    a, b = int(first), int(last or first)
  except ValueError:
    a = b = 0
  _require(1 <= a <= b <= (config.num_steps or math.inf), "profile_steps",  # num_steps 0: still in epochs.
           f"={config.profile_steps!r} must be 'a:b' with 1 <= a <= b <= num_steps={config.num_steps}, e.g. '10:20'")
  return a, b
