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


def get_sweep():
  """Dense, Maestro, the Pufferfish-style baseline (fixed rank ratio after one dense epoch) at ρ = 0.43, about
  Maestro's size (conv2: 28, fc: 111 ranks; 389,770 parameters), and Cuttlefish, three seeds."""
  return dict(seeds=(0, 1, 2), runs=[dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
                                     dict(name="maestro", group="Maestro", overrides={}),
                                     dict(name="pufferfish_0.43", group="Pufferfish", overrides=common.pufferfish(0.43)),
                                     dict(name="cuttlefish", group="Cuttlefish", overrides={"layers.type": "cuttlefish"})])
