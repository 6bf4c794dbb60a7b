"""N:M ViT on Fashion-MNIST (7x7 patches: 16 tokens; dim 128, depth 2, 4 heads, MLP 256):
every block's query/key/value/out and both MLP layers are N:M (groups of M inputs);
the patch embedding and the head stay dense. Default: SR-STE at 2:4.
(dim 128 so that every SDGF frame up to 8:128, geometric at 1:16, divides the 128 inputs.)

  python train.py --config configs/fmnist_vit_nm.py --workdir runs/vit_nm_srste_2_4
  python train.py --config configs/fmnist_vit_nm.py:method=mdgf,decay=exp,n=1,m=8 --workdir runs/vit_nm_mdgf_exp_1_8
  python train.py --config configs/fmnist_vit_nm.py:method=sdgf,structure=geometric,n=1,m=16 --workdir runs/vit_sdgf_geo_1_16
  python train.py --config configs/fmnist_vit_nm.py:method=dense --workdir runs/vit_nm_dense   # the dense baseline
  python train.py --config configs/fmnist_vit_nm.py:ffn_only=true ...   # PGF's choice: only the MLP layers N:M

`:arg` names: method (ste | srste | mdgf | sdgf | unstructured | dense), decay (exp | linear),
k (α's coefficient; default: exp 5/T, linear 2/T for a sparse phase of T updates),
structure (stepwise | geometric | densify), n, m, warmup, finetune (fractions), ffn_only, seed.

The N:M ablation is this config's sweep (get_sweep: dense, and STE, SR-STE, MDGF-linear, MDGF-exp,
SDGF-stepwise, SDGF-geometric at 2:4, 1:4, 1:8, 1:16, seeds 0, 1, 2):

  python sweep.py --config configs/fmnist_vit_nm.py --folder runs/nm --workers 2
  python eval.py report runs/nm

Measured (the sweep, seeds 0-2; docs/RESULTS.md has the whole table): dense 86.69 ± 0.25%,
SR-STE 2:4 86.56 ± 0.08%; at 1:8 / 1:16: STE 86.26 / 85.63, SR-STE 86.17 / 85.32, MDGF-linear 86.35 / 85.78,
MDGF-exp 86.54 / 85.96, SDGF-stepwise 85.02 / 81.40, SDGF-geometric 85.60 / 85.01.
"""

from configs import common
from experiment.config import parse_arg, parse_like


def get_config(arg: str | None = None):
  args = parse_arg(arg)
  ffn_only = parse_like(False, args.pop("ffn_only", "false"), "ffn_only")
  c = common.base(dict(name="vit", patch=7, dim=128, depth=2, num_heads=4, mlp_dim=256), fmnist_epochs=4,
                  learning_rate=2e-3)
  c.optimizer.weight_decay = 0.05
  c = common.nm(c, keep_dense=("patch_embed", "head", *(("block*/attn/*",) if ffn_only else ())), n=2, m=4)
  return common.nm_config(c, ",".join(f"{k}={v}" if v else k for k, v in args.items()))


SGD = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1, "optimizer.weight_decay": 1e-4,  # Momentum 0.9, and
       "optimizer.grad_clip": 0.0}  # no clipping, which would also clip coupled SR-STE's term (SR-STE clips none).
# λ_w of SR-STE. Its term decays a pruned weight by λ_w·Σlr e-folds over a run (decoupled; coupled under SGD with
# momentum 0.9, 10x that). SR-STE on ImageNet (SGD, lr 0.1 cosine, 120 epochs: Σlr ≈ 3e4) makes 2e-4·3e4·10 ≈ 60.
# Here Σlr is 0.859 with AdamW (decoupled 0.3 ... 10: 0.26 ... 8.6 e-folds; at 30 and more, measured, the mask
# freezes: a pruned weight decays by lr·λ_w a step and never beats its group's kept one again) and 42.9 with SGD
# (coupled 2e-4: 0.09; 0.13: 56, ImageNet's strength).
SRSTE_DECOUPLED = (0.3, 1.0, 3.0, 10.0)
SRSTE_DECOUPLED_WARMUP = (1.0, 3.0)  # ... also after a dense tenth of the run (nm.dense_warmup), masks from trained
                                     # weights.
SRSTE_SGD = (2e-4, 0.13)
DECAY_KT = (2, 5, 10, 20, 50)  # MDGF's k·T over the T updates of the sparse phase (the defaults: exp 5, linear 2).
# Equal training FLOPs at 1:16 (measured: 6.89e9 FLOPs per update for every method here; N:M hardware saves 2.01e9
# of them on a binary-mask forward, none on MDGF's soft one): STE and SR-STE in 1213 updates cost what MDGF's 859 do.
EQUAL_FLOPS_STEPS = 1213


def get_sweep(name: str = "methods"):
  """methods: dense, and STE, SR-STE, MDGF-linear, MDGF-exp, SDGF-stepwise, SDGF-geometric at 2:4, 1:4, 1:8, 1:16.
  srste: SR-STE controlled at 1:16 — STE and SR-STE with AdamW (coupled, the paper's rule; decoupled at each λ_w of
  SRSTE_DECOUPLED, and of SRSTE_DECOUPLED_WARMUP after a dense tenth) and with SGD, unclipped (STE; SR-STE at each
  λ_w of SRSTE_SGD): a first look at seed 0 (--seeds=0), then seeds 1 and 2 of each group's choice (--only). mdgf_decay: MDGF at each k·T of
  DECAY_KT, exp and linear, at 1:16 and 1:8 (each schedule and level a group: k·T chosen on validation), and STE
  at each level (the reference).
  equal_flops: STE and SR-STE at 1:16 for EQUAL_FLOPS_STEPS updates, the training FLOPs of MDGF's 859.
  layers: MDGF-exp and SR-STE at 1:8 and 1:16 with only the MLP layers N:M (the PGF recipe's choice) against all
  block projections. Seeds 0-2 (a first look: sweep.py --seeds=0; λ_w and k·T chosen on validation)."""
  if name == "methods":
    return common.nm_sweep(levels=((2, 4), (1, 4), (1, 8), (1, 16)))
  level = {"layers.n": 1, "layers.m": 16}
  runs = {
      "srste": [dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
                dict(name="ste_adamw", group="STE", overrides={**level, "nm.method": "ste"}),
                dict(name="srste_coupled_adamw", group="SR-STE coupled",
                     overrides={**level, "nm.method": "srste"}),
                *(dict(name=f"srste_decoupled_{lam:g}_adamw", group="SR-STE decoupled",
                       overrides={**level, "nm.method": "srste", "nm.srste_mode": "decoupled", "nm.srste_decay": lam})
                  for lam in SRSTE_DECOUPLED),
                *(dict(name=f"srste_decoupled_{lam:g}_warmup_adamw", group="SR-STE decoupled",
                       overrides={**level, "nm.method": "srste", "nm.srste_mode": "decoupled", "nm.srste_decay": lam,
                                  "nm.dense_warmup": 0.1})
                  for lam in SRSTE_DECOUPLED_WARMUP),
                dict(name="ste_sgd", group="STE (SGD)", overrides={**level, **SGD, "nm.method": "ste"}),
                *(dict(name=f"srste_{lam:g}_sgd", group="SR-STE (SGD)",
                       overrides={**level, **SGD, "nm.method": "srste", "nm.srste_decay": lam}) for lam in SRSTE_SGD)],
      "mdgf_decay": [dict(name=f"mdgf_{decay}_kt{kt}_{n}of{m}", group=f"MDGF-{decay} {n}:{m}",
                          overrides={"layers.n": n, "layers.m": m, "nm.method": "mdgf", "nm.decay": decay,
                                     "nm.decay_coef": kt / get_config().num_steps})
                     for decay in ("exp", "linear") for n, m in ((1, 16), (1, 8)) for kt in DECAY_KT]
                    + [dict(name=f"ste_{n}of{m}", group=f"STE {n}:{m}",
                            overrides={"layers.n": n, "layers.m": m, "nm.method": "ste"}) for n, m in ((1, 16), (1, 8))],
      "equal_flops": [dict(name=f"{method}_1of16_equal_flops", group=f"{group} (equal FLOPs)",
                           overrides={**level, **common.NM_METHODS[method][1], "num_steps": EQUAL_FLOPS_STEPS})
                      for method, group in (("ste", "STE"), ("sr-ste", "SR-STE"))],
      "layers": [dict(name=f"{method}_{n}of{m}{suffix}", group=f"{group}{', MLP only' if suffix else ''}",
                      arg="ffn_only=true" if suffix else "",
                      overrides={"layers.n": n, "layers.m": m, **common.NM_METHODS[method][1],
                                 **({"nm.decay_coef": 5 / get_config().num_steps} if method == "mdgf-exp" else {})})
                 for method, group in (("mdgf-exp", "MDGF-exp"), ("sr-ste", "SR-STE")) for suffix in ("", "_ffn")
                 for n, m in ((1, 8), (1, 16))],
  }
  if name not in runs:
    raise ValueError(f"no sweep named {name!r}; this config's sweeps: methods, {', '.join(runs)}")
  return dict(seeds=(0, 1, 2), runs=runs[name])
