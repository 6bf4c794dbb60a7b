"""Low rank + N:M on the Maestro MLP 784-1024-1024-10 (Fashion-MNIST): fc1 and fc2 are LoD layers whose factors
are 2:8-sparse (down along its inputs, up along the rank), trained by Maestro (fmnist_mlp_maestro.py's ordered
dropout, distillation, group lasso λ 7e-5 and shrinking every epoch, ranks kept multiples of 8) and SR-STE at once;
the head stays dense.

  python train.py --config configs/fmnist_mlp_lowrank_nm.py --workdir runs/fmnist_mlp_lowrank_nm
  python eval.py --workdir runs/fmnist_mlp_lowrank_nm --export=runs/fmnist_mlp_lowrank_nm/export

The sweep compares it with low rank alone and N:M alone at about the same packed bytes of fc1 and fc2 (docs/RESULTS.md):

  python sweep.py --config configs/fmnist_mlp_lowrank_nm.py --folder runs/mlp_lowrank_nm --workers 2
"""

from configs import common, fmnist_mlp_maestro
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = fmnist_mlp_maestro.get_config()
  c.layers.type = "lowrank+nm"
  return common.apply_args(c, parse_arg(arg))


def get_sweep():
  """Three seeds, 12 epochs each, of low rank + N:M 2:8 (about 1.1 MB of packed fc1 and fc2), and low rank alone
  (Maestro, float32 factors) and N:M alone (SR-STE, packed) at about that size (λ 1.2e-4, 1:8) and at about half
  of it (λ 3e-4, 1:16)."""
  nm = lambda n, m: {"layers.type": "nm", "layers.n": n, "layers.m": m}
  return dict(seeds=(0, 1, 2), runs=[
      dict(name="lowrank+nm_2of8", group="low rank + N:M", overrides={}),
      dict(name="maestro_1.2e-4", group="low rank", overrides={"layers.type": "lowrank", "lowrank.group_lasso": 1.2e-4}),
      dict(name="maestro_3e-4", group="low rank", overrides={"layers.type": "lowrank", "lowrank.group_lasso": 3e-4}),
      dict(name="nm_1of8", group="N:M", overrides=nm(1, 8)),
      dict(name="nm_1of16", group="N:M", overrides=nm(1, 16)),
  ])
