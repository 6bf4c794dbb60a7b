"""A Vision Transformer (pre-LayerNorm; the head reads the mean of the tokens, or a class token as in ViT and DeiT).

Every projection comes from the layer factory and has its own name:
`patch_embed`, `block{i}/attn/{query,key,value,out}`, `block{i}/mlp/{fc1,fc2}`
and `head`, so low-rank or N:M applies per projection. It computes in
`layers.dtype`; LayerNorm statistics, the attention softmax (float32 in
jax.nn.dot_product_attention) and the returned logits are float32.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerFactory


class Attention(nnx.Module):

  def __init__(self, layers: LayerFactory, name: str, dim: int, num_heads: int, *, causal: bool = False,
               rngs: nnx.Rngs):
    self.num_heads, self.causal = num_heads, causal
    self.query = layers.linear(f"{name}/query", dim, dim, rngs=rngs)
    self.key = layers.linear(f"{name}/key", dim, dim, rngs=rngs)
    self.value = layers.linear(f"{name}/value", dim, dim, rngs=rngs)
    self.out = layers.linear(f"{name}/out", dim, dim, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, t, d) -> (b, t, d)
    b, t, d = x.shape
    heads = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)  # (b, t, h, d/h)
    y = jax.nn.dot_product_attention(heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                                     is_causal=self.causal)
    return self.out(y.reshape(b, t, d))


class MlpBlock(nnx.Module):

  def __init__(self, layers: LayerFactory, name: str, dim: int, hidden: int, *, use_bias: bool = True,
               rngs: nnx.Rngs):
    self.fc1 = layers.linear(f"{name}/fc1", dim, hidden, use_bias=use_bias, rngs=rngs)
    self.fc2 = layers.linear(f"{name}/fc2", hidden, dim, use_bias=use_bias, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x)))


class Block(nnx.Module):

  def __init__(self, layers: LayerFactory, name: str, dim: int, num_heads: int, mlp_dim: int, *,
               causal: bool = False, mlp_bias: bool = True, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, dtype=layers.dtype, rngs=rngs)
    self.attn = Attention(layers, f"{name}/attn", dim, num_heads, causal=causal, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, dtype=layers.dtype, rngs=rngs)
    self.mlp = MlpBlock(layers, f"{name}/mlp", dim, mlp_dim, use_bias=mlp_bias, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):

  def __init__(self, layers: LayerFactory, *, input_shape: tuple[int, ...], num_classes: int, patch: int = 7,
               dim: int = 64, depth: int = 4, num_heads: int = 4, mlp_dim: int = 128, pool: str = "mean",
               mlp_bias: bool = True, rngs: nnx.Rngs):
    """`pool`: mean (of the tokens) | cls (a learned class token before the patches; the head reads it);
    `mlp_bias=False`: the MLP layers without a bias (as PGF's reference computes its sparse ones)."""
    h, w, c = input_shape
    if h % patch or w % patch:
      raise ValueError(f"config.model.patch={patch} must divide the image size {h}x{w}")
    if pool not in ("mean", "cls"):
      raise ValueError(f"config.model.pool={pool!r} is unknown; choose mean or cls")
    self.patch, self.dtype, self.pool = patch, layers.dtype, pool
    self.patch_embed = layers.linear("patch_embed", patch * patch * c, dim, rngs=rngs)
    tokens = (h // patch) * (w // patch) + (pool == "cls")
    self.cls_token = nnx.Param(jnp.zeros((dim,))) if pool == "cls" else None  # 1-d: not weight-decayed.
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (tokens, dim)))
    self.blocks = nnx.List([Block(layers, f"block{i}", dim, num_heads, mlp_dim, mlp_bias=mlp_bias, rngs=rngs)
                            for i in range(depth)])
    self.norm = nnx.LayerNorm(dim, dtype=layers.dtype, rngs=rngs)
    self.head = layers.linear("head", dim, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, c) -> (b, classes)
    b, h, w, c = x.shape
    p = self.patch
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
    x = self.patch_embed(x)
    if self.cls_token is not None:
      x = jnp.concatenate([jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, x.shape[-1])), x], axis=1)
    x = x + self.pos_embed[...].astype(self.dtype)
    for block in self.blocks:
      x = block(x)
    x = self.norm(x)
    return self.head(x[:, 0] if self.cls_token is not None else jnp.mean(x, axis=1)).astype(jnp.float32)
