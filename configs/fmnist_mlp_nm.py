"""N:M MLP 784-1024-1024-10 on Fashion-MNIST: fc1 and fc2 are N:M (groups of M
inputs), the head stays dense. Default: SR-STE at 2:4.

  python train.py --config configs/fmnist_mlp_nm.py --workdir runs/fmnist_mlp_nm
  python train.py --config configs/fmnist_mlp_nm.py:method=mdgf,decay=exp,n=1,m=8 --workdir runs/mlp_mdgf_1_8
  python eval.py --workdir runs/fmnist_mlp_nm --export=runs/fmnist_mlp_nm/export

`:arg` names: method (ste | srste | mdgf | sdgf | unstructured | dense), decay (exp | linear),
k (α's coefficient; default: exp 5/T, linear 2/T for a sparse phase of T updates), structure (stepwise | geometric | densify), n, m, warmup, finetune (fractions).
fc1's 784 inputs take M ∈ {2, 4, 8, 16} (784 = 16·49), so SDGF `geometric` (M up to 8·M) needs fc1 dense.

Measured (2 CPU cores, seed 0, one single-threaded process while other runs shared the cores): the
default, SR-STE 2:4, reached 89.61% test accuracy (dense MLP: 89.69%) in 226 s; `eval.py --export`
packs fc1 and fc2 into 4,628,480 bytes, 0.625 of their 7,405,568 dense fp32 bytes.
"""

from configs import common


def get_config(arg: str | None = None):
  c = common.base(dict(name="mlp", hidden=(1024, 1024)), fmnist_epochs=8)
  c = common.nm(c, keep_dense=("head",), n=2, m=4)
  return common.nm_config(c, arg)
