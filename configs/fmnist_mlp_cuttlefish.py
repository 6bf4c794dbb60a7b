"""Cuttlefish on the Maestro MLP 784-1024-1024-10 (Fashion-MNIST): fc1 and fc2 train full rank while their
stable ranks are measured every quarter epoch, then switch to LoD layers at the ranks those choose (the SVD of
the trained kernels) once the ranks have settled, with Frobenius decay after; the head stays dense. The
reference's criterion (lowrank/cuttlefish.py) with its values, except that it measures every epoch of 200-300
and this run has 12: a quarter epoch here, so its 15-measurement minimum is ~4 epochs (31% of the run).

  python train.py --config configs/fmnist_mlp_cuttlefish.py --workdir runs/fmnist_mlp_cuttlefish

Measured: see docs/RESULTS.md (the Maestro sweep, where it is a baseline).
"""

from configs import common
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = common.base(dict(name="mlp", hidden=(1024, 1024)), fmnist_epochs=12)
  c.layers = dict(type="cuttlefish", keep_dense=("head",), ranks={})
  c.cuttlefish = common.cuttlefish(c, track_every_epochs=0.125)
  return common.apply_args(c, parse_arg(arg))
