"""Character-level language model on Jane Austen's six novels (data/austen.py:
the Debian package r-cran-janeaustenr, 90/5/5 split, windows of 128
characters): a decoder-only transformer (models/lm.py), dense. The metric is
bits per character on the test split (`eval/bits_per_char`).

  python train.py --config configs/austen_lm_dense.py --workdir runs/austen_lm_dense
  python eval.py --workdir runs/austen_lm_dense --sample="It is a truth universally acknowledged"
"""

from configs import common
from experiment.config import parse_arg

MODEL = dict(dim=192, depth=4, num_heads=4, mlp_dim=768)


def get_config(arg: str | None = None):
  c = common.austen_lm(num_steps=1700, batch_size=32, learning_rate=3e-3, model=MODEL)
  return common.apply_args(c, parse_arg(arg))
