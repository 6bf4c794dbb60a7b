"""VGG-19 with BatchNorm for 32x32 inputs (the CIFAR VGG of Maestro's and
Pufferfish's code): sixteen 3x3 convolutions, each with BatchNorm and ReLU, in
five stages closed by 2x2 max-pools (32x32 -> 1x1; other sizes are averaged
over what is left), then `fc1`, `fc2` (512 each, ReLU) and `head`, all from
the layer factory; `width` scales the channels (64: VGG-19's). Layer names:
`conv<i>`, `fc1`, `fc2`, `head`. (No dropout in the classifier.)"""

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerFactory
from models.resnet import ConvNorm

STAGES = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


class VGG(nnx.Module):

  def __init__(self, layers: LayerFactory, *, input_shape: tuple[int, ...], num_classes: int, width: int = 64,
               hidden: int = 512, rngs: nnx.Rngs):
    cin = input_shape[-1]
    convs, i = [], 0
    for stage in STAGES:
      for cout in stage:
        i, cout = i + 1, cout * width // 64
        convs.append(ConvNorm(layers, f"conv{i}", cin, cout, 3, rngs=rngs))
        cin = cout
    self.stage_ends = tuple(sum(len(s) for s in STAGES[:k + 1]) for k in range(len(STAGES)))
    self.convs = nnx.List(convs)
    self.fc1 = layers.linear("fc1", cin, hidden, rngs=rngs)
    self.fc2 = layers.linear("fc2", hidden, hidden, rngs=rngs)
    self.head = layers.linear("head", hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, c) -> (b, classes)
    for i, conv in enumerate(self.convs, start=1):
      x = jax.nn.relu(conv(x))
      if i in self.stage_ends:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = jax.nn.relu(self.fc1(x.mean(axis=(1, 2))))
    return self.head(jax.nn.relu(self.fc2(x))).astype(jnp.float32)
