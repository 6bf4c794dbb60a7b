"""Pufferfish-style baseline for the Maestro MLP: a fixed rank ratio ρ for every
factorized layer (fc1, fc2; the head stays dense), after a dense warm-up of one
epoch whose kernels are truncated by SVD to that rank. No ordered dropout, no
group lasso, no shrinking. ρ = 0.12 gives about the parameter count Maestro
ends at (fc1: 95, fc2: 123 ranks).

  python train.py --config configs/fmnist_mlp_pufferfish.py --workdir runs/fmnist_mlp_pufferfish

(The `fixed_ratio` sampler, `--config.lowrank.sampler=fixed_ratio`, is the other
reading of Pufferfish: full-size factors of which only the first ceil(ρ·r) are
ever used; it trains the same subnetwork at a higher cost.)

Measured (2 CPU cores, seed 0): test accuracy 89.85%, 435,962 parameters (fc1+fc2 at 22.9% of
dense); 52 s wall.
"""

from configs import common
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = common.base(dict(name="mlp", hidden=(1024, 1024)), fmnist_epochs=8)
  c = common.maestro(c, keep_dense=("head",), group_lasso=0.0, shrink_eps=0.0, sampler="none")
  c.layers.rank_ratio = 0.12
  c.lowrank.shrink_every = 0
  c.lowrank.dense_warmup_steps = common.epochs(1, c.batch_size)
  return common.apply_args(c, parse_arg(arg))
