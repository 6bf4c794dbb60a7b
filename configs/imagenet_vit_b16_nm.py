"""N:M ViT-B/16 on ImageNet (Progressive Gradient Flow, CPAL 2025, its ViT-B experiment): ViT-B/16 sizes (dim
768, depth 12, 12 heads, MLP 3072, 224x224 images in 16x16 patches, a class token; `:vit=s16`: ViT-S/16, DeiT-S's
dim 384, 6 heads, MLP 1536) with both MLP layers of every block N:M and the attention, patch embedding and head
dense, as the paper's Table 2 rows "(FF)" and the reference recipe (vit_base_training.yaml: sparsity location FF)
set them. Default: MDGF-exp at 1:32 with k = 1e-4 per update (the yaml's), from the first update (no dense
warm-up, no fine-tune). Recipe: the paper's Table 13 (AdamW, learning rate 1e-3 at batch 256, 15 warm-up epochs,
then cosine decay, 350 epochs) with the yaml's weight decay 0.01 and gradient clip 1.0; the yaml's RandAugment,
mixup, dropout and drop path are not implemented here (random resized crop + flip only).

  python train.py --config configs/imagenet_vit_b16_nm.py --workdir runs/imagenet_vit_b16_mdgf_1_32 \\
      --config.dataset.data_dir=gs://my-bucket/tfds --config.dataset.workers=16 --config.compute_dtype=bfloat16
  python train.py --config configs/imagenet_vit_b16_nm.py:method=srste --workdir runs/imagenet_vit_b16_srste_1_32
  python train.py --config configs/imagenet_vit_b16_nm.py:method=mdgf,decay=linear,k=8e-4,n=1,m=8 --workdir ...
  python train.py --config configs/imagenet_vit_b16_nm.py:method=dense --workdir runs/imagenet_vit_b16_dense
  python train.py --config configs/imagenet_vit_b16_nm.py:vit=s16 --workdir runs/imagenet_vit_s16_mdgf_1_32
  python train.py --config configs/imagenet_vit_b16_nm.py:smoke --workdir /tmp/smoke   # seconds, on a CPU

`:arg` names as configs/fmnist_vit_nm.py: method (ste | srste | mdgf | sdgf | unstructured | dense), decay, k,
structure, n, m, warmup, finetune; and vit (b16 | s16).

Data: ImageNet for TFDS as array_record (see configs/imagenet_resnet50_maestro.py). Hardware: 350 epochs of 4,954
steps of batch 256 (1.7e6 steps): a pod slice for days (an estimate, not measured here).

Paper (PMLR v280, Table 2, ViT-B/16 ImageNet-1K top-1, FF layers N:M; dense 76.389): at 1:32 SR-STE 73.056,
MDGF-linear 75.807, MDGF-exp 76.068, SDGF-stepwise 74.394, SDGF-geometric 74.910; at 1:8 SR-STE 77.869, MDGF-exp
78.009; at 2:4 SR-STE 77.761, MDGF-exp 76.381. Not measured here.
"""

from configs import common

SIZES = {"b16": dict(dim=768, num_heads=12, mlp_dim=3072), "s16": dict(dim=384, num_heads=6, mlp_dim=1536)}


def get_config(arg: str | None = None):
  args = common.parse_arg(arg)
  size = args.pop("vit", "b16")
  if size not in SIZES:
    raise ValueError(f"config argument vit={size}: must be one of {sorted(SIZES)}")
  c = common.paper_base(dict(name="vit", patch=16, depth=12, pool="cls", **SIZES[size]), num_epochs=350,
                       eval_every_epochs=5, batch_size=256, learning_rate=1e-3,
                       dataset=dict(name="imagenet2012", data_dir="", eval_limit=0, workers=8))
  c.optimizer.update(weight_decay=0.01, warmup_epochs=15.0, grad_clip=1.0)
  c.eval_batch_size = 500
  c = common.nm(c, keep_dense=("patch_embed", "head", "block*/attn/*"), n=1, m=32, method="mdgf")
  c.nm.update(decay="exp", decay_coef=1e-4)
  return common.apply_args(c, common.nm_args(c, args))
