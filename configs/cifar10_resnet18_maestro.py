"""Maestro on ResNet-18 / CIFAR-10 (Maestro, ICML 2024, its CIFAR experiment): the CIFAR ResNet-18 (3x3 stem, no
max-pool; 11.2M parameters dense) with GroupNorm (Maestro-LoD's default norm, its group counts) and every
convolution and the classifier an LoD layer, as in Maestro-LoD's cifar script; single-layer ordered dropout with
the full-pass distillation, the hierarchical group lasso, a shrink every epoch. Recipe: configs/common.py
cifar_sgd (SGD 0.1, x0.1 at 50% and 75% of 300 epochs, batch 128, pad-crop-flip), weight decay 1e-4 on every
parameter (the reference's `model.parameters()`).

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

Where this differs from Maestro-LoD (cifar_mnist_main.py, maestro_opts.py), and why:
- its ResNet-18 is torchvision's, with the ImageNet stem (7x7 stride 2, max-pool) and a 1000-way head on CIFAR: a
  defect for 32x32 images; here the CIFAR stem and a 10-way head.
- `--config.model.norm=batch`: BatchNorm (the reference's `--batch-norm`); its statistics are then recomputed
  after each shrink on a full epoch of training batches (`recalibrate_batches`, as the reference's full pass).
- it trains on all 50,000 images and picks its best checkpoint on test; here 45,000 train and 5,000 validation
  (choices on validation, test untouched); `--config.dataset.train_split=train` trains on 50,000.
- λ 1e-6 and shrink threshold 1e-5: its one shipped script's λ (its code's default is 5e-3) and its code's
  threshold (the paper is quoted as 1e-7). Its one shipped script (LeNet on MNIST) passes `--no-full-pass`; a
  ResNet-18 run without that flag gets the full pass, as here (`--config.lowrank.distill=false`: the script's).
- it recalibrates BatchNorm at evaluation epochs only; here after every shrink (a shrink changes the model).

Paper: Maestro 94.19 ± 0.39% top-1 at 4.08M parameters, Pufferfish 94.17% at 3.3M (Maestro's CIFAR-10
ResNet-18 table, as quoted in two reviews of the paper; the paper's table could not be read here). Not measured
here.
"""

from configs import common


def get_config(arg: str | None = None):
  c = common.cifar_sgd(dict(name="resnet", depth=18, stem="cifar", width=64, norm="group"), epochs=300)
  c.optimizer.decay = "all"
  c.recalibrate_batches = 45_000 // c.batch_size  # With --config.model.norm=batch: a full epoch.
  c = common.maestro(c, keep_dense=(), group_lasso=1e-6, shrink_eps=1e-5)
  c.lowrank.distill = True  # The reference's default: the full pass's prediction teaches the sampled one.
  return common.maestro_variants(c, arg, pufferfish_ratio=0.25)
