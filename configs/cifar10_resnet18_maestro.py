"""Maestro on ResNet-18 / CIFAR-10 (Maestro, ICML 2024, its CIFAR experiment): the CIFAR ResNet-18 (3x3 stem, no
max-pool; 11.2M parameters dense) with every convolution and the classifier an LoD layer, as in Maestro-LoD's
cifar script; single-layer ordered dropout with the full-pass distillation, the hierarchical group lasso, a shrink
every epoch, BatchNorm statistics recomputed after each shrink. Recipe: configs/common.py cifar_sgd (SGD 0.1, x0.1
at 50% and 75% of 300 epochs, batch 128, weight decay 1e-4, pad-crop-flip).

  python train.py --config configs/cifar10_resnet18_maestro.py --workdir runs/cifar10_resnet18_maestro \\
      --config.dataset.data_dir=/data/tfds
  python train.py --config configs/cifar10_resnet18_maestro.py:method=dense --workdir runs/cifar10_resnet18_dense
  python train.py --config configs/cifar10_resnet18_maestro.py:method=pufferfish --workdir runs/cifar10_resnet18_pf
  python train.py --config configs/cifar10_resnet18_maestro.py:smoke --workdir /tmp/smoke   # seconds, on a CPU
  python eval.py --workdir runs/cifar10_resnet18_maestro --rank_fractions=1,0.5,0.25 \\
      --svd_of=runs/cifar10_resnet18_dense

Data: CIFAR-10 prepared for TFDS as array_record (`tfds build cifar10 --file_format=array_record`, once, needs
TensorFlow and the internet); train.py says so if it is missing. Hardware: one GPU; 300 epochs of 352 steps are
about 1.0e5 steps, on the order of an hour on an H100 (an estimate from the step's FLOPs, not measured here).

Paper: Maestro 94.19 ± 0.39% top-1 at 4.08M parameters, Pufferfish 94.17% at 3.3M (Maestro's CIFAR-10
ResNet-18 table, as quoted in two reviews of the paper; the paper's table could not be read here). λ: the reference scripts use 1e-6
and a shrink threshold of 1e-5 (its code's default; the paper is quoted as 1e-7): used here. Not measured here.
"""

from configs import common


def get_config(arg: str | None = None):
  c = common.cifar_sgd(dict(name="resnet", depth=18, stem="cifar", width=64), epochs=300)
  c = common.maestro(c, keep_dense=(), group_lasso=1e-6, shrink_eps=1e-5)
  c.lowrank.distill = True  # The reference's default: the full pass's prediction teaches the sampled one.
  return common.maestro_variants(c, arg, pufferfish_ratio=0.25)
