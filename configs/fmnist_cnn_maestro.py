"""Maestro CNN on Fashion-MNIST: conv2 (a 3x3 conv, factored into a 3x3 conv to
r channels and a 1x1 conv) and fc are LoD layers; conv1 (one input channel)
and the head stay dense.

  python train.py --config configs/fmnist_cnn_maestro.py --workdir runs/fmnist_cnn_maestro
  python eval.py --workdir runs/fmnist_cnn_maestro --rank_fractions=1,0.5,0.25 --svd_of=runs/fmnist_cnn_dense

Measured (the sweep's seed 0, one CPU core each, docs/RESULTS.md): test accuracy 91.99% (dense: 92.42%) with
385,482 parameters (dense: 824,650; conv2 kept all 64 ranks, fc 106 of 256), 3093 s wall.
"""

from configs import common
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = common.base(dict(name="cnn", channels=(32, 64), hidden=256), fmnist_epochs=10)
  c = common.maestro(c, keep_dense=("conv1", "head"), group_lasso=1e-4, shrink_eps=1e-3)
  c.cuttlefish = common.cuttlefish(c, track_every_epochs=0.125)  # The sweep's Cuttlefish baseline.
  return common.apply_args(c, parse_arg(arg))


def get_sweep(name: str = "methods"):
  """methods: dense, Maestro, the Pufferfish-style baseline (fixed rank ratio after one dense epoch) at ρ = 0.43,
  about Maestro's size (conv2: 28, fc: 111 ranks; 389,770 parameters), and Cuttlefish. controlled: dense, that
  baseline, and Maestro as before, with self-distillation (its full-rank network trained directly too), with
  distillation and λ doubled (the same λ·steps as ten epochs at 1e-4), and with distillation on the baseline's
  terms (its dense epoch first, the λ ramp, the fine-tune), one group: its recipe chosen on validation; five
  epochs, not ten (a Maestro run with distillation takes about 45 minutes on one core of a 2-core CPU at ten).
  Three seeds."""
  dense = dict(name="dense", group="dense", overrides={"layers.type": "dense"})
  baseline = dict(name="pufferfish_0.43", group="Pufferfish", overrides=common.pufferfish(0.43))
  if name == "controlled":
    distill = {"lowrank.distill": True}
    recipe = {**distill, **common.DENSE_EPOCH, **common.LAMBDA_RAMP, **common.FINETUNE}
    maestro = [dict(name=f"maestro{suffix}", group="Maestro", overrides=overrides) for suffix, overrides in (
        ("", {}), ("_distill", distill), ("_distill_lambda2e-4", {**distill, "lowrank.group_lasso": 2e-4}),
        ("_distill_warmup_ramp_finetune", recipe))]
    five_epochs = common.step_budget(common.epochs(5, 256))
    return dict(seeds=(0, 1, 2), runs=[dict(r, overrides={**r["overrides"], **five_epochs})
                                       for r in (dense, baseline, *maestro)])
  if name != "methods":
    raise ValueError(f"no sweep named {name!r}; this config's sweeps: methods, controlled")
  return dict(seeds=(0, 1, 2), runs=[dense, dict(name="maestro", group="Maestro", overrides={}), baseline,
                                     dict(name="cuttlefish", group="Cuttlefish",
                                          overrides={"layers.type": "cuttlefish"})])
