"""Defaults every experiment config starts from, and the `:smoke` shrink."""

import ml_collections

TRAIN_EXAMPLES = 60_000  # Fashion-MNIST train split.


def epochs(n: float, batch_size: int) -> int:
  """Optimizer steps in `n` epochs of the Fashion-MNIST train split."""
  return int(n * TRAIN_EXAMPLES // batch_size)


def base(model: dict, *, num_epochs: float, batch_size: int = 256, learning_rate: float = 1e-3) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = dict(name="fashion_mnist", data_dir="", idx_dir="", eval_limit=0)  # "" / 0: defaults, the whole split.
  c.model = model
  c.layers = dict(type="dense", keep_dense=())
  c.batch_size = batch_size
  c.num_steps = epochs(num_epochs, batch_size)
  c.optimizer = dict(name="adamw", learning_rate=learning_rate, weight_decay=1e-4, warmup_steps=c.num_steps // 20,
                     schedule="cosine", grad_clip=1.0)
  c.log_every = 50
  c.eval_every = c.num_steps // 5
  c.eval_batch_size = 1000
  c.checkpoint_every = c.num_steps // 5
  c.keep_checkpoints = 2
  c.wandb = dict(mode="offline", project="lowrank-nm", name="")
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same experiment at a tiny size: seconds on a laptop CPU, for debugging and tests."""
  c.batch_size = 32
  c.num_steps = 20
  c.optimizer.warmup_steps = 2
  c.log_every = 5
  c.eval_every = 10
  c.checkpoint_every = 10
  c.eval_batch_size = 200
  c.dataset.eval_limit = 400
  c.wandb.mode = "disabled"
  return c
