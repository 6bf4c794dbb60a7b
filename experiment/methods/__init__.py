"""The training methods by name (`config.layers.type`), each declared in a module of its own (maestro.py, nm.py,
cuttlefish.py, lowrank_nm.py): its layer builders and their `config.layers` options, its config sections with
defaults (unknown keys are refused), its `:smoke` changes, how its hooks are made from them, and the models it
moves between (Maestro's dense warm-up, Cuttlefish's switch).
Adding a method: one module with a `METHOD = Spec(...)`, and its line in REGISTRY. Nothing above this package
names a method.

A method's hooks are an object that satisfies `Hooks` (a typing.Protocol; `Method` is plain training), e.g.
`lowrank.Maestro` and `sparsity.NMTraining`; train.py calls them and nothing else. `step` is 1-based: the update being made (in `loss`,
`observe`) or the number of updates done (in the host-side hooks).
"""

import ml_collections
from flax import nnx

from experiment.config import ConfigError
from experiment.methods import cuttlefish, lowrank_nm, maestro, nm
from experiment.methods.base import Composed, Forward, Hooks, InnerHooks, Method, Spec  # noqa: F401 - the package's API.
from models.layers import LayerFactory

REGISTRY = {spec.name: spec for spec in (Spec("dense"), maestro.METHOD, nm.METHOD, cuttlefish.METHOD,
                                         lowrank_nm.METHOD)}


def spec_of(config: ml_collections.ConfigDict) -> Spec:
  kind = config.layers.type
  if kind not in REGISTRY:
    raise ConfigError(f"config.layers.type={kind!r} is unknown; choose one of {sorted(REGISTRY)}")
  return REGISTRY[kind]


def check(config: ml_collections.ConfigDict) -> None:
  """The method exists, its config section is there, and neither it nor config.layers has a key no method knows
  (a misspelled option is an error, not silently dropped)."""
  spec = spec_of(config)
  allowed = {"type", "keep_dense", *(k for s in REGISTRY.values() for k in s.layer_options)}  # Another method's
  # options are kept (a sweep switches layers.type) and unused.
  if unknown := sorted(set(config.layers) - allowed):
    raise ConfigError(f"config.layers.{unknown[0]} is not an option of any layers.type; layers.type={spec.name!r} "
                      f"takes {sorted({'type', 'keep_dense', *spec.layer_options})}")
  for section, defaults in spec.sections.items():
    if section not in config:
      raise ConfigError(f"config.layers.type={spec.name!r} needs a config.{section} section (fields "
                        f"{sorted(defaults)}), which this config has not; start from a config of that method")
    if unknown := sorted(set(config[section]) - set(defaults)):
      raise ConfigError(f"config.{section}.{unknown[0]} is not a field of layers.type={spec.name!r}, which has "
                        f"{sorted(defaults)}")


def layer_factory(layers: ml_collections.ConfigDict | dict, dtype) -> LayerFactory:
  """The layer factory of `config.layers`: the method's builders with its options, dense where kept dense."""
  spec = REGISTRY[layers["type"]]
  options = {**spec.layer_options, **{k: v for k, v in dict(layers).items() if k in spec.layer_options}}
  return LayerFactory(spec.linear, spec.conv, keep_dense=tuple(layers.get("keep_dense", ())), dtype=dtype, **options)


def build(config: ml_collections.ConfigDict, model: nnx.Module) -> Hooks:
  """The hooks of the configured method for `model`, made from its config section."""
  spec = spec_of(config)
  try:
    return spec.make(config, model)
  except ConfigError:
    raise
  except ValueError as e:  # The library names its argument: a field of the (first) section.
    raise ConfigError(f"config.{next(iter(spec.sections))}.{e}") from e


def layers(config: ml_collections.ConfigDict, state: dict) -> dict:
  """The `config.layers` of the configured method's model at method state `state` ({}: a fresh start)."""
  return dict(spec_of(config).layers(config, state))


def objective(config: ml_collections.ConfigDict | dict) -> list[str]:
  """The terms the configured method adds to the cross-entropy (a config or a config.json's dict)."""
  return REGISTRY[config["layers"]["type"]].objective(config)


def plots(config: ml_collections.ConfigDict) -> tuple:
  """The configured method's plots of a run, beside the training curves (Spec.plots)."""
  return spec_of(config).plots


def decay_exempt(config: ml_collections.ConfigDict, state: dict) -> tuple[str, ...]:
  """The parameter names weight decay skips at method state `state` (Spec.decay_exempt)."""
  return tuple(spec_of(config).decay_exempt(config, state))


def rewarm(config: ml_collections.ConfigDict, state: dict) -> tuple[int, int] | None:
  """Where the learning rate restarts and over how many updates it re-warms, at method state `state`."""
  return spec_of(config).rewarm(config, state)
