"""Maestro MLP 784-1024-1024-10 on Fashion-MNIST: fc1 and fc2 are LoD layers
(start at full rank, spectral init), trained with single-layer ordered dropout,
self-distillation from the full-rank pass and the hierarchical group lasso,
shrunk every epoch; the head stays dense.

  python train.py --config configs/fmnist_mlp_maestro.py --workdir runs/fmnist_mlp_maestro
  python eval.py --workdir runs/fmnist_mlp_maestro --rank_fractions=1,0.75,0.5,0.25,0.1 --svd_of=runs/fmnist_mlp_dense

Measured (2 CPU cores, seed 0): test accuracy 89.43% (dense MLP: 89.69%), final ranks fc1 149,
fc2 53: 390,234 parameters, fc1+fc2 at 20.5% of the dense MLP's; 170 s wall.
Rank sweep and SVD baseline: see the README. The sweep (get_sweep, 18 runs; docs/RESULTS.md):

  python sweep.py --config configs/fmnist_mlp_maestro.py --folder runs/mlp_maestro --workers 2
  python eval.py report runs/mlp_maestro
"""

from configs import common
from experiment import methods
from experiment.config import parse_arg


def get_config(arg: str | None = None):
  c = common.base(dict(name="mlp", hidden=(1024, 1024)), fmnist_epochs=12)
  c = common.maestro(c, keep_dense=("head",), group_lasso=7e-5, shrink_eps=1e-3)
  c.lowrank.distill = True
  c.cuttlefish = common.cuttlefish(c, track_every_epochs=0.125)  # The sweep's Cuttlefish (fmnist_mlp_cuttlefish.py).
  c.layers.update(n=2, m=8)  # --config.layers.type=lowrank+nm: these LoD layers with 2:8-sparse factors ...
  c.nm = dict(methods.REGISTRY["nm"].sections["nm"], method="srste")  # ... trained by this N:M rule too.
  return common.apply_args(c, parse_arg(arg))


def get_sweep(name: str = "methods"):
  """methods: dense, Maestro at two group-lasso budgets, the Pufferfish-style baseline (a fixed rank ratio after
  one dense epoch; fmnist_mlp_pufferfish.py's fields, at this config's 12 epochs) at two ratios, and Cuttlefish
  (ranks chosen by the stable ranks; fmnist_mlp_cuttlefish.py). controlled: Maestro at λ 7e-5 as before and with
  the baseline's dense epoch, with and without the λ ramp and the fine-tune (one group: its recipe chosen on
  validation), against dense, the two Pufferfish ratios and Cuttlefish (as its authors train it: factors out of
  weight decay under Frobenius decay, the learning rate re-warmed after the switch). Three seeds."""
  if name == "controlled":
    epoch, ramp, finetune = common.DENSE_EPOCH, common.LAMBDA_RAMP, common.FINETUNE
    return dict(seeds=(0, 1, 2), runs=[
        dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
        *(dict(name=f"maestro{suffix}", group="Maestro", overrides=overrides) for suffix, overrides in (
            ("", {}), ("_warmup", epoch), ("_warmup_ramp", {**epoch, **ramp}),
            ("_warmup_finetune", {**epoch, **finetune}), ("_warmup_ramp_finetune", {**epoch, **ramp, **finetune}))),
        dict(name="pufferfish_0.12", group="Pufferfish 0.12", overrides=common.pufferfish(0.12)),
        dict(name="pufferfish_0.06", group="Pufferfish 0.06", overrides=common.pufferfish(0.06)),
        dict(name="cuttlefish", group="Cuttlefish", overrides={"layers.type": "cuttlefish"}),
    ])
  if name != "methods":
    raise ValueError(f"no sweep named {name!r}; this config's sweeps: methods, controlled")
  return dict(seeds=(0, 1, 2), runs=[
      dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
      dict(name="maestro_7e-5", group="Maestro", overrides={"lowrank.group_lasso": 7e-5}),
      dict(name="maestro_3e-4", group="Maestro", overrides={"lowrank.group_lasso": 3e-4}),
      dict(name="pufferfish_0.12", group="Pufferfish", overrides=common.pufferfish(0.12)),
      dict(name="pufferfish_0.06", group="Pufferfish", overrides=common.pufferfish(0.06)),
      dict(name="cuttlefish", group="Cuttlefish", overrides={"layers.type": "cuttlefish"}),
  ])
