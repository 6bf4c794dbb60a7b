"""Maestro (lowrank/; docs/maestro.md): `layers.type=lowrank`, configured by `config.lowrank`."""

import ml_collections

import lowrank
from experiment import plots
from experiment.methods.base import Method, Spec
from lowrank import deploy

# config.lowrank: each key, its default and meaning.
DEFAULTS = dict(
    sampler="single_layer",    # single_layer | independent | fixed_ratio | none (lowrank.maestro.SAMPLERS)
    fixed_ratio=0.25,          # ρ of the fixed_ratio (Pufferfish-style) sampler.
    group_lasso=0.0,           # λ of the hierarchical group lasso.
    hierarchical=True,         # False: the plain group lasso Σ_i ||d_i|| + ||u_i||.
    distill=False,             # True: CE(full) + CE(sampled, softmax(full)) instead of CE(sampled).
    shrink_every=0,            # Shrink every this many updates; 0: never.
    shrink_every_epochs=0.0,   # > 0: shrink_every in epochs of the train split.
    shrink_eps=0.0,            # Keep components with importance >= this.
    dense_warmup_steps=0,      # > 0: train dense this long, then switch to the SVD factors.
    dense_warmup_epochs=0.0,   # > 0: dense_warmup_steps in epochs.
    group_lasso_warmup=0.0,    # λ rises linearly from 0, from the end of the dense warm-up, over this fraction of
                               # all updates.
    finetune=0.0,              # The last fraction of the updates: a penalty-free fine-tune of the kept ranks (λ = 0, no
                               # sampling; a last shrink as it begins, none after).
)
TRAINER_FIELDS = ("dense_warmup_steps", "dense_warmup_epochs", "shrink_every_epochs", "group_lasso_warmup",
                  "finetune")  # Not lowrank.Maestro's arguments; make() turns the last two into updates.


class DenseWarmup(Method):
  """Plain training of the dense model until update `until`; its state then asks for the LoD model (`layers`)."""

  def __init__(self, until: int):
    self.until = until

  def host_update_due(self, step: int) -> bool:
    return step == self.until

  def host_update(self, step, model, optimizer) -> bool:
    return True  # The state below now names the LoD model: the trainer switches to it.

  def state(self, step: int, model) -> dict:
    return {"dense_warmup": step < self.until}


def make(config: ml_collections.ConfigDict, model) -> lowrank.Maestro | DenseWarmup:
  c = config.lowrank
  if not (isinstance(c.dense_warmup_steps, int) and c.dense_warmup_steps >= 0):
    raise ValueError(f"dense_warmup_steps={c.dense_warmup_steps!r} must be an integer >= 0")
  for field in ("group_lasso_warmup", "finetune"):
    if not 0 <= c[field] < 1:
      raise ValueError(f"{field}={c[field]} must be a fraction in [0, 1)")
  start = c.dense_warmup_steps
  finetune_from = config.num_steps - round(c.finetune * config.num_steps) if c.finetune else 0
  if finetune_from and finetune_from <= start:
    raise ValueError(f"finetune={c.finetune} begins the fine-tune before the dense warm-up ends (update {start}); "
                     f"make it shorter")
  maestro = lowrank.Maestro(**{k: v for k, v in c.items() if k not in TRAINER_FIELDS}, finetune_from=finetune_from,
                            group_lasso_ramp=(start, start + round(c.group_lasso_warmup * config.num_steps)))
  return DenseWarmup(c.dense_warmup_steps) if c.dense_warmup_steps and not lowrank.lod_layers(model) else maestro


def layers(config: ml_collections.ConfigDict, state: dict) -> dict:
  """Every layer dense during the dense warm-up (a fresh start with one, or its checkpoints); LoD after."""
  dense = state.get("dense_warmup", not state and config.lowrank.dense_warmup_steps > 0)
  return {**config.layers, "keep_dense": ("*",)} if dense else config.layers


def smoke(c: ml_collections.ConfigDict) -> None:
  """Shrinks (and a dense warm-up) that a 20-step run sees."""
  c.lowrank.shrink_every = 10 if c.lowrank.shrink_every or c.lowrank.shrink_every_epochs else 0
  c.lowrank.dense_warmup_steps = 5 if c.lowrank.dense_warmup_steps or c.lowrank.dense_warmup_epochs else 0


def objective(config) -> list[str]:
  c = config["lowrank"]
  return ["distillation"] * c["distill"] + ["penalty"] * (c["group_lasso"] > 0)


METHOD = Spec("lowrank", lowrank.linear, lowrank.conv, layer_options=dict(rank_ratio=1.0, ranks={}, init="spectral"),
              sections={"lowrank": DEFAULTS}, make=make, smoke=smoke, objective=objective, layers=layers,
              switch=deploy.copy_svd, plots=(plots.ranks,))
