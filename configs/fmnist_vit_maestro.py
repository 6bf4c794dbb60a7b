"""Maestro ViT on Fashion-MNIST: every attention projection (query, key,
value, out) and both MLP layers of every block are their own LoD layer (ranks
per projection, not per head); the patch embedding and the head stay dense.

  python train.py --config configs/fmnist_vit_maestro.py --workdir runs/fmnist_vit_maestro
  python eval.py --workdir runs/fmnist_vit_maestro --rank_fractions=1,0.5,0.25 --svd_of=runs/fmnist_vit_dense

Measured (2 CPU cores, seed 0): test accuracy 87.81% (dense ViT: 88.46%) with 69,898
parameters (dense: 138,890); final ranks fall with depth (block0 26-38, block3 2-15 of 64);
1560 s wall while another training run shared the cores.
"""

from configs import common
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = common.base(dict(name="vit", patch=7, dim=64, depth=4, num_heads=4, mlp_dim=128), fmnist_epochs=15,
                  learning_rate=2e-3)
  c.optimizer.weight_decay = 0.05
  c = common.maestro(c, keep_dense=("patch_embed", "head"), group_lasso=1e-4, shrink_eps=1e-3)
  return common.apply_args(c, parse_arg(arg))
