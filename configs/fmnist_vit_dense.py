"""Dense ViT (4x4 patches, dim 64, depth 4, 4 heads, MLP 128) on Fashion-MNIST.

  python train.py --config configs/fmnist_vit_dense.py --workdir runs/fmnist_vit_dense

Measured (2 CPU cores): RESULT_PENDING
"""

from configs import common
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = common.base(dict(name="vit", patch=4, dim=64, depth=4, num_heads=4, mlp_dim=128), num_epochs=20, learning_rate=2e-3)
  return common.smoke(c) if "smoke" in parse_arg(arg) else c
