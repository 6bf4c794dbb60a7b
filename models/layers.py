"""The layer factory: the one place a model's layers get their type.

Models ask for `layers.linear(name, ...)` / `layers.conv(name, ...)`; the
factory's builders (a method's, chosen by config.layers.type in
experiment/methods) decide what comes back, and which named layers stay dense
whatever the method (`keep_dense`, fnmatch patterns on the names the model
gives, e.g. `("fc1", "head")`). So every model runs every method, a method
never reaches into a model, and a model never names a method.

`dtype` is the compute dtype of every layer (and of the model's own norms and
embeddings, which read `layers.dtype`); parameters stay float32 whatever it is.
"""

import fnmatch
from typing import Callable

import jax.numpy as jnp
from flax import nnx


def dense_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, name: str = "", use_bias: bool = True,
                 dtype: jnp.dtype = jnp.float32) -> nnx.Module:
  del name
  return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, rngs=rngs)


def dense_conv(in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs, name: str = "",
               strides: int = 1, padding: str = "SAME", use_bias: bool = True,
               dtype: jnp.dtype = jnp.float32) -> nnx.Module:
  del name
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=strides, padding=padding,
                  use_bias=use_bias, dtype=dtype, rngs=rngs)


class LayerFactory:
  """Builds each named layer with `linear` / `conv` (given `options` too), or dense where `keep_dense` matches."""

  def __init__(self, linear: Callable[..., nnx.Module] = dense_linear, conv: Callable[..., nnx.Module] = dense_conv,
               *, keep_dense: tuple[str, ...] = (), dtype: jnp.dtype = jnp.float32, **options):
    self.builders, self.keep_dense, self.dtype, self.options = (linear, conv), tuple(keep_dense), jnp.dtype(dtype), options

  def is_dense(self, name: str) -> bool:
    return self.builders == (dense_linear, dense_conv) or any(fnmatch.fnmatchcase(name, p) for p in self.keep_dense)

  def linear(self, name: str, in_features: int, out_features: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    if self.is_dense(name):
      return dense_linear(in_features, out_features, rngs=rngs, name=name, dtype=self.dtype, **kwargs)
    return self.builders[0](in_features, out_features, rngs=rngs, name=name, dtype=self.dtype, **self.options, **kwargs)

  def conv(self, name: str, in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs,
           **kwargs) -> nnx.Module:
    if self.is_dense(name):
      return dense_conv(in_features, out_features, kernel_size, rngs=rngs, name=name, dtype=self.dtype, **kwargs)
    return self.builders[1](in_features, out_features, kernel_size, rngs=rngs, name=name, dtype=self.dtype,
                            **self.options, **kwargs)
