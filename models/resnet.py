"""ResNet-18/34/50 (He et al., 2016) with BatchNorm; every convolution and the
classifier come from the layer factory, so low rank and N:M apply without edits.

`stem="cifar"`: a 3x3 stride-1 convolution and no max-pool (32x32 inputs; the
CIFAR ResNets of Maestro's and Pufferfish's code); `"imagenet"`: a 7x7 stride-2
convolution and a 3x3 stride-2 max-pool. Layer names: `stem`,
`stage<s>/block<b>/conv<i>` (and `/shortcut`), `head`. BatchNorm follows
PyTorch's defaults (momentum 0.1 there, 0.9 here; epsilon 1e-5); it computes
in `layers.dtype`, its statistics in float32. `norm="group"`: GroupNorm instead, with Maestro-LoD's group counts
(`GROUPS`: 8 channels a group up to 64 channels, 16 up to 512, 32 at 1024, 64 at 2048; its CIFAR script's default
norm), and gcd(channels, 8) groups at other widths.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerFactory

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}


GROUPS = {16: 2, 32: 4, 64: 8, 128: 8, 256: 16, 512: 32, 1024: 32, 2048: 32}  # GroupNorm: channels -> groups.
NORMS = ("batch", "group")


def normalization(layers: LayerFactory, features: int, kind: str, rngs: nnx.Rngs) -> nnx.BatchNorm | nnx.GroupNorm:
  if kind == "group":
    return nnx.GroupNorm(features, num_groups=GROUPS.get(features, math.gcd(features, 8)), epsilon=1e-5, dtype=layers.dtype, rngs=rngs)
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=layers.dtype, rngs=rngs)


class ConvNorm(nnx.Module):
  """A convolution (no bias) and its BatchNorm (or GroupNorm)."""

  def __init__(self, layers: LayerFactory, name: str, cin: int, cout: int, kernel: int, stride: int = 1, *,
               norm: str = "batch", rngs: nnx.Rngs):
    self.conv = layers.conv(name, cin, cout, kernel, strides=stride, use_bias=False, rngs=rngs)
    self.norm = normalization(layers, cout, norm, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class Block(nnx.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 to 4x the width) residual block; a 1x1 projection shortcut where
  the shape changes."""

  def __init__(self, layers: LayerFactory, name: str, kind: str, cin: int, width: int, stride: int, *,
               norm: str, rngs: nnx.Rngs):
    cout = width * (4 if kind == "bottleneck" else 1)
    if kind == "basic":
      shapes = [(cin, width, 3, stride), (width, width, 3, 1)]
    else:
      shapes = [(cin, width, 1, 1), (width, width, 3, stride), (width, cout, 1, 1)]
    self.convs = nnx.List([ConvNorm(layers, f"{name}/conv{i + 1}", *s, norm=norm, rngs=rngs)
                           for i, s in enumerate(shapes)])
    self.shortcut = (ConvNorm(layers, f"{name}/shortcut", cin, cout, 1, stride, norm=norm, rngs=rngs)
                     if stride != 1 or cin != cout else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = x
    for i, conv in enumerate(self.convs):
      y = conv(y)
      if i < len(self.convs) - 1:
        y = jax.nn.relu(y)
    return jax.nn.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nnx.Module):

  def __init__(self, layers: LayerFactory, *, input_shape: tuple[int, ...], num_classes: int, depth: int = 18,
               stem: str = "cifar", width: int = 64, norm: str = "batch", rngs: nnx.Rngs):
    if depth not in DEPTHS or stem not in ("cifar", "imagenet") or norm not in NORMS:
      raise ValueError(f"config.model: depth={depth} / stem={stem!r} / norm={norm!r}: depth is one of "
                       f"{sorted(DEPTHS)}, stem cifar or imagenet, norm one of {list(NORMS)}")
    kind, blocks = DEPTHS[depth]
    self.imagenet_stem = stem == "imagenet"
    self.stem = ConvNorm(layers, "stem", input_shape[-1], width, 7 if self.imagenet_stem else 3,
                         2 if self.imagenet_stem else 1, norm=norm, rngs=rngs)
    stages, cin = [], width
    for s, count in enumerate(blocks):
      for b in range(count):
        stages.append(Block(layers, f"stage{s + 1}/block{b + 1}", kind, cin, width << s,
                            2 if b == 0 and s > 0 else 1, norm=norm, rngs=rngs))
        cin = (width << s) * (4 if kind == "bottleneck" else 1)
    self.blocks = nnx.List(stages)
    self.head = layers.linear("head", cin, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, c) -> (b, classes)
    x = jax.nn.relu(self.stem(x))
    if self.imagenet_stem:
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for block in self.blocks:
      x = block(x)
    return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)
