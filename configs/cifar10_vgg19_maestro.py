"""Maestro on VGG-19 / CIFAR-10 (Maestro, ICML 2024): the CIFAR VGG-19 with BatchNorm (20.6M parameters dense)
with every convolution and linear layer an LoD layer; the same recipe and Maestro settings as
configs/cifar10_resnet18_maestro.py (SGD 0.1, x0.1 at 50% and 75% of 300 epochs, batch 128, weight decay 1e-4,
pad-crop-flip; a shrink every epoch, BatchNorm recomputed after each).

  python train.py --config configs/cifar10_vgg19_maestro.py --workdir runs/cifar10_vgg19_maestro \\
      --config.dataset.data_dir=/data/tfds
  python train.py --config configs/cifar10_vgg19_maestro.py:method=dense --workdir runs/cifar10_vgg19_dense
  python train.py --config configs/cifar10_vgg19_maestro.py:method=pufferfish --workdir runs/cifar10_vgg19_pf
  python train.py --config configs/cifar10_vgg19_maestro.py:smoke --workdir /tmp/smoke   # seconds, on a CPU

Data: CIFAR-10 for TFDS as array_record (see configs/cifar10_resnet18_maestro.py). Hardware: one GPU; about 1.0e5
steps, on the order of an hour on an H100 (an estimate, not measured here).

Paper: Maestro 93.10% top-1 at 2.20M parameters, dense VGG-19 92.94% (the ICLR 2024 submission's numbers, as
quoted in its reviews and rebuttal; the ICML paper's table could not be read here).
Not measured here.
"""

from configs import common


def get_config(arg: str | None = None):
  c = common.cifar_sgd(dict(name="vgg", width=64), epochs=300)
  c = common.maestro(c, keep_dense=(), group_lasso=1e-6, shrink_eps=1e-5)
  c.lowrank.distill = True
  return common.maestro_variants(c, arg, pufferfish_ratio=0.25)
