"""A small decoder-only transformer language model (pre-LayerNorm, learned
positions, causal attention): tokens `(b, t)` -> next-token logits `(b, t, vocab)`.

Its projections come from the layer factory with the ViT's names
(`block{i}/attn/{query,key,value,out}`, `block{i}/mlp/{fc1,fc2}`, `head`), so
low rank and N:M apply per projection; the token embedding is a plain table.
It computes in `layers.dtype` like the ViT; the logits are float32.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LayerFactory
from models.vit import Block


class LM(nnx.Module):

  def __init__(self, layers: LayerFactory, *, input_shape: tuple[int, ...], num_classes: int, dim: int = 256,
               depth: int = 4, num_heads: int = 4, mlp_dim: int = 1024, rngs: nnx.Rngs):
    (length,) = input_shape
    if dim % num_heads:
      raise ValueError(f"config.model.num_heads={num_heads} must divide config.model.dim={dim}")
    self.dtype = layers.dtype
    self.embed = nnx.Embed(num_classes, dim, dtype=layers.dtype, rngs=rngs)
    self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (length, dim)))
    self.blocks = nnx.List([Block(layers, f"block{i}", dim, num_heads, mlp_dim, causal=True, rngs=rngs)
                            for i in range(depth)])
    self.norm = nnx.LayerNorm(dim, dtype=layers.dtype, rngs=rngs)
    self.head = layers.linear("head", dim, num_classes, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:  # (b, t) int -> (b, t, vocab); t <= the input length
    x = self.embed(tokens) + self.pos_embed[...][:tokens.shape[1]].astype(self.dtype)
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)).astype(jnp.float32)


def sample(model: LM, prompt: list[int], length: int, key: jax.Array, temperature: float = 1.0) -> list[int]:
  """`length` tokens after `prompt`, each drawn from the model's next-token distribution (logits / temperature)
  given the last context-length tokens. The window has a fixed size, so it compiles once."""
  window = model.pos_embed.shape[0]
  graphdef, state = nnx.split(model)

  @jax.jit
  def next_token(state, tokens, last, key):  # tokens (1, window): causal, so what follows `last` is ignored.
    logits = nnx.merge(graphdef, state)(tokens)[0, last]
    return jax.random.categorical(key, logits / temperature)

  tokens = list(prompt)
  for i in range(length):
    context = tokens[-window:]
    padded = jnp.zeros((1, window), jnp.int32).at[0, :len(context)].set(jnp.asarray(context, jnp.int32))
    tokens.append(int(next_token(state, padded, len(context) - 1, jax.random.fold_in(key, i))))
  return tokens[len(prompt):]
