"""Maestro and N:M training (MDGF) in a plain Flax NNX loop of your own: nothing of this project but its two
libraries, `lowrank` and `sparsity` (JAX, Flax, optax, NumPy).

  python examples/custom_loop.py

A method is a handful of hooks around the loop's own forward pass: `loss` inside the jitted step, `host_update`
between steps (Maestro's shrinks, the N:M phase changes; `nnx.jit` compiles once more for the new shapes), and
`restore` before the first step. The data: 64 random features, the class the argmax of a fixed linear map.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import lowrank
import sparsity


class MLP(nnx.Module):
  def __init__(self, layer, rngs: nnx.Rngs):  # layer(name, in, out, rngs) -> an NNX layer
    self.fc1, self.fc2 = layer("fc1", 64, 256, rngs), layer("fc2", 256, 10, rngs)

  def __call__(self, x):
    return self.fc2(jax.nn.relu(self.fc1(x)))


def batch(i: int, size: int = 256):
  x = jax.random.normal(jax.random.key(i), (size, 64))
  return x, jnp.argmax(x @ jax.random.normal(jax.random.key(-1), (64, 10)), -1)


def train(model: nnx.Module, method, steps: int) -> float:
  """Trains `model` with `method`'s hooks; returns its accuracy on held-out examples."""
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y, t):
    def forward(m, soft_targets):  # The loop's own loss: hard labels, or the soft ones Maestro's distillation passes.
      logits = m(x)
      if soft_targets is None:
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits
      return optax.softmax_cross_entropy(logits, soft_targets).mean(), logits

    loss_fn = lambda m: method.loss(m, t, jax.random.fold_in(jax.random.key(0), t), forward)[0]
    optimizer.update(model, nnx.grad(loss_fn)(model))

  method.restore(model, optimizer, {})
  for t in range(1, steps + 1):
    step(model, optimizer, *batch(t), jnp.int32(t))
    if method.host_update_due(t):
      method.host_update(t, model, optimizer)
  x, y = batch(0, 4096)
  return float(jnp.mean(jnp.argmax(model(x), -1) == y))


def main(steps: int = 600) -> dict:
  lod = lambda name, i, o, rngs: lowrank.LowRankLinear(i, o, rank=min(i, o), rngs=rngs, name=name)
  model = MLP(lod, nnx.Rngs(0))
  maestro = lowrank.Maestro(group_lasso=1e-3, shrink_every=steps // 4, shrink_eps=0.05)
  maestro_accuracy = train(model, maestro, steps)
  ranks = lowrank.ranks(model)

  nm = lambda name, i, o, rngs: sparsity.NMLinear(i, o, n=1, m=8, rngs=rngs, name=name)
  model = MLP(nm, nnx.Rngs(0))
  mdgf = sparsity.NMTraining(model, num_steps=steps, method="mdgf", decay="exp")
  nm_accuracy = train(model, mdgf, steps)
  kept = {layer.name: float(layer.hard_mask(layer.kernel[...]).mean()) for _, layer in sparsity.nm_layers(model)}

  print(f"Maestro: accuracy {maestro_accuracy:.3f}, ranks {ranks} (of 64 and 10)")
  print(f"N:M 1:8 with MDGF: accuracy {nm_accuracy:.3f}, kept fraction of each kernel {kept}")
  return {"maestro": maestro_accuracy, "ranks": ranks, "nm": nm_accuracy, "kept": kept}


if __name__ == "__main__":
  main()
