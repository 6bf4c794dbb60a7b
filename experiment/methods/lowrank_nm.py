"""Low rank + N:M (sparsity/lowrank.py; docs/nm_sparsity.md): `layers.type=lowrank+nm`, LoD layers whose factors
are N:M-sparse, trained by Maestro (`config.lowrank`) and the N:M rule (`config.nm`) at once; `config.layers`
takes both methods' options (rank_ratio, ranks, init; n, m, patterns)."""

import ml_collections

from experiment.config import ConfigError
from experiment.methods import maestro, nm
from experiment.methods.base import Composed, Spec
from sparsity import lowrank as nm_lowrank


def make(config: ml_collections.ConfigDict, model) -> Composed:
  if config.lowrank.dense_warmup_steps:
    raise ConfigError(f"config.lowrank.dense_warmup_steps={config.lowrank.dense_warmup_steps}: layers.type="
                      f"'lowrank+nm' starts from its sparse factors, without a dense warm-up; set it to 0")
  parts = {}
  for section, method in (("lowrank", maestro.METHOD), ("nm", nm.METHOD)):  # Maestro's loss wraps the N:M rule's.
    try:
      parts[section] = method.make(config, model)
    except ValueError as e:
      raise ConfigError(f"config.{section}.{e}") from e
  return Composed(parts)


METHOD = Spec("lowrank+nm", nm_lowrank.linear, nm_lowrank.conv,
              layer_options={**maestro.METHOD.layer_options, **nm.METHOD.layer_options},
              sections={"lowrank": maestro.DEFAULTS, "nm": nm.DEFAULTS}, make=make, objective=maestro.objective,
              plots=(*maestro.METHOD.plots, *nm.METHOD.plots))
