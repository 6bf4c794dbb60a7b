"""Cuttlefish (lowrank/cuttlefish.py; docs/maestro.md, its Cuttlefish section): `layers.type=cuttlefish`, configured by
`config.cuttlefish`. Full rank until the tracked stable ranks settle, then LoD layers at the ranks they choose;
the layers in `config.layers.keep_dense` are neither tracked nor factorized."""

import ml_collections

from experiment.config import get_field
from experiment import plots
from experiment.methods.base import Spec
from lowrank import cuttlefish, deploy

# config.cuttlefish: each key, its default and meaning (the reference's values).
DEFAULTS = dict(
    track_every=0,            # Measure the stable ranks every this many updates ...
    track_every_epochs=1.0,   # ... or epochs of the train split (the reference: every epoch).
    window=15,                # Measurements before a layer can be stable, and the EMA's span (α = 2/(window + 1)).
    recent=11,                # Mean |gradient| of the EMA over this many last measurements ...
    tolerance=0.1,            # ... at most this: stable.
    relax=1.0,                # Tolerance x relax with 2 layers unstable, x 2·relax with 1 (the reference: 2.5 for
                              # ResNet-18 and VGG-19).
    frobenius_decay=1e-4,     # λ of λ/2·‖down·up‖²_F per factorized layer after the switch; while > 0, the
                              # factors get no ordinary weight decay (the reference's parameter groups).
    rewarm_steps=0,           # After the switch the learning rate restarts at 0 and re-warms linearly to the
    rewarm_epochs=5.0,        # schedule's value over this many updates, or epochs (the reference: a fresh
                              # optimizer, re-warmed over its warm-up's 5 epochs); both 0: no restart.
)
TRAINER_FIELDS = ("track_every_epochs", "rewarm_steps", "rewarm_epochs")  # Not lowrank.Cuttlefish's arguments.


def make(config: ml_collections.ConfigDict, model) -> cuttlefish.Cuttlefish:
  rewarm = config.cuttlefish.rewarm_steps
  if not (isinstance(rewarm, int) and 0 <= rewarm <= config.num_steps):
    raise ValueError(f"rewarm_steps={rewarm!r} must be an integer from 0 to the run's {config.num_steps} updates")
  return cuttlefish.Cuttlefish(model, **{k: v for k, v in config.cuttlefish.items() if k not in TRAINER_FIELDS})


def layers(config: ml_collections.ConfigDict, state: dict) -> dict:
  """Dense and tracked until the switch; then LoD at the ranks it chose."""
  return {**config.layers, "ranks": {**config.layers.get("ranks", {}), **state["ranks"]}} if "ranks" in state \
      else config.layers


def smoke(c: ml_collections.ConfigDict) -> None:
  """A switch that a 20-step run sees: a measurement every 2 updates, stable after 3 whatever the ranks do
  (any tolerance is met), so the ranks are chosen at step 8; a re-warm over 4 updates after it."""
  c.cuttlefish.update(track_every=2, track_every_epochs=0.0, window=3, recent=2, tolerance=1e9, rewarm_steps=4,
                      rewarm_epochs=0.0)


def objective(config) -> list[str]:
  return ["Frobenius decay after the switch"] * (config["cuttlefish"]["frobenius_decay"] > 0)


def decay_exempt(config, state: dict) -> tuple[str, ...]:
  """With Frobenius decay on, the factors (which exist after the switch) get no ordinary weight decay (as in the
  reference)."""
  return ("down", "up") if config.cuttlefish.frobenius_decay > 0 else ()


def rewarm(config, state: dict) -> tuple[int, int] | None:
  """After the switch, the learning rate restarts and re-warms over `rewarm_steps` (the reference's fresh
  optimizer); its schedule then goes on where it was. (A run saved before re-warms existed has no `switched_at`.)"""
  if "switched_at" not in state or not (steps := get_field(config, "cuttlefish.rewarm_steps", 0)):
    return None
  return state["switched_at"], steps


METHOD = Spec("cuttlefish", cuttlefish.linear, cuttlefish.conv, layer_options=dict(ranks={}),
              sections={"cuttlefish": DEFAULTS}, make=make, smoke=smoke, objective=objective, layers=layers,
              switch=deploy.copy_svd, decay_exempt=decay_exempt, rewarm=rewarm, plots=(plots.ranks,))
