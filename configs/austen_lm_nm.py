"""N:M character-level language model on Jane Austen's novels: the model of
austen_lm_dense.py with every attention and MLP projection N:M (groups of M
inputs); the head stays dense (the token embedding is a table, not a layer).
Default: SR-STE at 2:4.

  python train.py --config configs/austen_lm_nm.py:method=mdgf,decay=exp,n=1,m=8 --workdir runs/austen_lm_mdgf_1of8
  python sweep.py --config configs/austen_lm_nm.py --folder runs/austen_nm --workers 2   # the sweep below
  python eval.py report runs/austen_nm

`:arg` names as in fmnist_vit_nm.py (method, decay, structure, n, m, ...).

Measured (the sweep, seed 0, on an H100; docs/RESULTS.md): test bits/char dense 1.780; 1:8 / 1:16:
STE 2.001 / 2.148, SR-STE 1.975 / 2.120, MDGF-exp 1.982 / 2.131.
"""

from configs import austen_lm_dense, common


def get_config(arg: str | None = None):
  c = austen_lm_dense.get_config()
  c = common.nm(c, keep_dense=("head",), n=2, m=4)
  return common.nm_config(c, arg)


def get_sweep():
  """Dense, and STE, SR-STE and MDGF-exp at 1:8 and 1:16; one seed (each run is 20 CPU minutes)."""
  return common.nm_sweep(levels=((1, 8), (1, 16)), methods=("ste", "sr-ste", "mdgf-exp"), seeds=(0,))
