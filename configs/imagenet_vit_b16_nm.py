"""N:M ViT-B/16 on ImageNet (Progressive Gradient Flow, CPAL 2025, its ViT-B experiment): ViT-B/16 sizes (dim
768, depth 12, 12 heads, MLP 3072, 224x224 images in 16x16 patches; mean-pooled tokens, no class token) with both
MLP layers of every block N:M and the attention, patch embedding and head dense, as the reference recipe
(vit_base_training.yaml: sparsity location FF) sets them. Default: MDGF-exp at 1:32 with k = 1e-4 per update (the
yaml's), from the first update (no dense warm-up, no fine-tune). Recipe from the same yaml: AdamW, weight decay
0.01, cosine decay after 15 warm-up epochs, 350 epochs, learning rate 1e-3·sqrt(batch / 4096), gradient clip 1.0,
batch 1024 here; its RandAugment, mixup 0.5, dropout and drop path 0.1 are not implemented here (random resized
crop + flip only).

  python train.py --config configs/imagenet_vit_b16_nm.py --workdir runs/imagenet_vit_b16_mdgf_1_32 \\
      --config.dataset.data_dir=gs://my-bucket/tfds --config.dataset.workers=16 --config.compute_dtype=bfloat16
  python train.py --config configs/imagenet_vit_b16_nm.py:method=srste --workdir runs/imagenet_vit_b16_srste_1_32
  python train.py --config configs/imagenet_vit_b16_nm.py:method=mdgf,decay=linear,k=8e-4,n=1,m=8 --workdir ...
  python train.py --config configs/imagenet_vit_b16_nm.py:method=dense --workdir runs/imagenet_vit_b16_dense
  python train.py --config configs/imagenet_vit_b16_nm.py:smoke --workdir /tmp/smoke   # seconds, on a CPU

`:arg` names as configs/fmnist_vit_nm.py: method (ste | srste | mdgf | sdgf | unstructured | dense), decay, k,
structure, n, m, warmup, finetune.

Data: ImageNet for TFDS as array_record (see configs/imagenet_resnet50_maestro.py). Hardware: 350 epochs of 1,238
steps of batch 1024 (4.3e5 steps): a pod slice for days (an estimate, not measured here).

Paper: up to +2% top-1 from MDGF at high sparsity on ImageNet (its abstract); its per-method ViT-B table was not
found here. Not measured here.
"""

import math

from configs import common

TRAIN_EXAMPLES = 1_268_355  # train[:99%] of 1,281,167.


def get_config(arg: str | None = None):
  batch = 1024
  epoch = TRAIN_EXAMPLES // batch
  c = common.base(dict(name="vit", patch=16, dim=768, depth=12, num_heads=12, mlp_dim=3072), num_steps=350 * epoch,
                  batch_size=batch, learning_rate=1e-3 * math.sqrt(batch / 4096),
                  dataset=dict(name="imagenet2012", data_dir="", eval_limit=0, workers=8))
  c.optimizer.update(weight_decay=0.01, warmup_steps=15 * epoch, grad_clip=1.0)
  c.eval_every = c.checkpoint_every = 5 * epoch
  c.eval_batch_size = 500
  c = common.nm(c, keep_dense=("patch_embed", "head", "block*/attn/*"), n=1, m=32, method="mdgf")
  c.nm.update(decay="exp", decay_coef=1e-4)
  return common.nm_config(c, arg)
