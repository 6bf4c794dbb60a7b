"""A small CNN with GroupNorm (no BatchNorm: ranks and masks change during
training, and BatchNorm statistics would then be stale). It computes in
`layers.dtype`; GroupNorm statistics and the logits are float32."""

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerFactory


class CNN(nnx.Module):
  """conv1..convK (3x3, GroupNorm, ReLU, 2x2 max-pool), then `fc` and `head`."""

  def __init__(self, layers: LayerFactory, *, input_shape: tuple[int, ...], num_classes: int,
               channels: tuple[int, ...] = (32, 64), hidden: int = 256, groups: int = 8, rngs: nnx.Rngs):
    h, w, c = input_shape
    sizes = [c, *channels]
    self.convs = nnx.List([layers.conv(f"conv{i + 1}", a, b, 3, rngs=rngs) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))])
    self.norms = nnx.List([nnx.GroupNorm(b, num_groups=groups, dtype=layers.dtype, rngs=rngs) for b in channels])
    flat = (h >> len(channels)) * (w >> len(channels)) * channels[-1]
    self.fc = layers.linear("fc", flat, hidden, rngs=rngs)
    self.head = layers.linear("head", hidden, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, c) -> (b, classes)
    for conv, norm in zip(self.convs, self.norms):
      x = jax.nn.relu(norm(conv(x)))
      x = nnx.max_pool(x, (2, 2), strides=(2, 2))
    x = jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))
    return self.head(x).astype(jnp.float32)
