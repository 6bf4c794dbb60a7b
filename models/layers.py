"""The layer factory: the one place a model's layers get their type.

Models ask for `layers.linear(name, ...)` / `layers.conv(name, ...)`; the config
decides what comes back (`config.layers.type`), and which named layers stay
dense whatever the type (`config.layers.keep_dense`, fnmatch patterns on the
names the model gives, e.g. `("fc1", "head")`). So every model runs every
method, a method never reaches into a model, and a model never branches on the
method.

`dtype` is the compute dtype of every layer (and of the model's own norms and
embeddings, which read `layers.dtype`); parameters stay float32 whatever it is.
"""

import fnmatch
from typing import Callable

import jax.numpy as jnp
from flax import nnx

import lowrank
import sparsity


def dense_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs, use_bias: bool = True,
                 dtype: jnp.dtype = jnp.float32, **_) -> nnx.Module:
  return nnx.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, rngs=rngs)


def dense_conv(in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs, strides: int = 1,
               padding: str = "SAME", use_bias: bool = True, dtype: jnp.dtype = jnp.float32, **_) -> nnx.Module:
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=strides, padding=padding,
                  use_bias=use_bias, dtype=dtype, rngs=rngs)


# layer type -> (linear builder, conv builder); each method adds its pair here.
LAYER_TYPES: dict[str, tuple[Callable[..., nnx.Module], Callable[..., nnx.Module]]] = {
    "dense": (dense_linear, dense_conv),
    "lowrank": (lowrank.linear, lowrank.conv),
    "nm": (sparsity.linear, sparsity.conv),
}


class LayerFactory:
  """Builds each named layer with the configured type (or dense if kept dense)."""

  def __init__(self, type: str = "dense", keep_dense: tuple[str, ...] = (), dtype: jnp.dtype = jnp.float32, **options):
    if type not in LAYER_TYPES:
      raise ValueError(f"config.layers.type={type!r} is unknown; choose one of {sorted(LAYER_TYPES)}")
    self.type, self.keep_dense, self.dtype, self.options = type, tuple(keep_dense), jnp.dtype(dtype), options

  def type_of(self, name: str) -> str:
    return "dense" if any(fnmatch.fnmatchcase(name, p) for p in self.keep_dense) else self.type

  def linear(self, name: str, in_features: int, out_features: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    make_linear, _ = LAYER_TYPES[self.type_of(name)]
    return make_linear(in_features, out_features, rngs=rngs, name=name, dtype=self.dtype, **self.options, **kwargs)

  def conv(self, name: str, in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs,
           **kwargs) -> nnx.Module:
    _, make_conv = LAYER_TYPES[self.type_of(name)]
    return make_conv(in_features, out_features, kernel_size, rngs=rngs, name=name, dtype=self.dtype, **self.options,
                     **kwargs)
