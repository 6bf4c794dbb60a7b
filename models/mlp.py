"""A multi-layer perceptron on flattened images."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerFactory


class MLP(nnx.Module):
  """Layers are named `fc1`, `fc2`, ... and `head`."""

  def __init__(self, layers: LayerFactory, *, input_shape: tuple[int, ...], num_classes: int,
               hidden: tuple[int, ...] = (1024, 1024), rngs: nnx.Rngs):
    sizes = [math.prod(input_shape), *hidden]
    self.hidden = nnx.List([layers.linear(f"fc{i + 1}", a, b, rngs=rngs) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))])
    self.head = layers.linear("head", sizes[-1], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, c) -> (b, classes)
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return self.head(x).astype(jnp.float32)
