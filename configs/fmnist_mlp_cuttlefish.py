"""Cuttlefish on the Maestro MLP 784-1024-1024-10 (Fashion-MNIST): fc1 and fc2 train full rank while their
stable ranks are measured every eighth of an epoch, then switch to LoD layers at the ranks those choose (the SVD of
the trained kernels) once the ranks have settled, with Frobenius decay after; the head stays dense. The
reference's criterion (lowrank/cuttlefish.py) with its values, except that it measures every epoch of 200-300
and this run has 12: an eighth of an epoch here (its 15-measurement minimum: ~2 epochs).

  python train.py --config configs/fmnist_mlp_cuttlefish.py --workdir runs/fmnist_mlp_cuttlefish

Measured (2 CPU cores, seed 0): the ranks settled and were chosen between steps 1550 and 1600 of 2578: fc1 107, fc2 64 (of 784
and 1024), 336,826 parameters; test accuracy 89.97% (validation 89.56%), 103 s wall. Seeds 0-2 in the Maestro
sweep: 89.87 ± 0.09% at 350,725 parameters (docs/RESULTS.md).
"""

from configs import common
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = common.base(dict(name="mlp", hidden=(1024, 1024)), fmnist_epochs=12)
  c.layers = dict(type="cuttlefish", keep_dense=("head",), ranks={})
  c.cuttlefish = common.cuttlefish(c, track_every_epochs=0.125)
  return common.apply_args(c, parse_arg(arg))
