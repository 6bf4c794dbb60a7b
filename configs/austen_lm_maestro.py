"""Maestro character-level language model on Jane Austen's novels: the model
of austen_lm_dense.py with every attention and MLP projection a LoD layer
(starting at full rank), trained with ordered dropout and the hierarchical
group lasso, shrunk ten times during training; the head stays dense.

  python train.py --config configs/austen_lm_maestro.py --workdir runs/austen_lm_maestro
  python sweep.py --config configs/austen_lm_maestro.py --folder runs/austen_maestro --workers 2   # two budgets
  python eval.py report runs/austen_maestro
"""

from configs import austen_lm_dense, common
from experiment.config import parse_arg

BUDGETS = {"maestro_small": 3e-4, "maestro_large": 3e-5}  # Run name -> group-lasso λ (larger λ: smaller model).


def get_config(arg: str | None = None):
  c = austen_lm_dense.get_config()
  c = common.maestro(c, keep_dense=("head",), group_lasso=1e-4, shrink_eps=1e-3,
                     shrink_every_epochs=0)
  c.lowrank.shrink_every = c.num_steps // 10
  return common.apply_args(c, parse_arg(arg))


def get_sweep():
  """Dense, and Maestro at two budgets (group-lasso strengths); one seed (33-48 minutes a run on one CPU core)."""
  return dict(seeds=(0,), runs=[dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
                                *(dict(name=name, group="Maestro", overrides={"lowrank.group_lasso": lam})
                                  for name, lam in BUDGETS.items())])
