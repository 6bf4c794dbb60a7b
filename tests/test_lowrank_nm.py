"""Low rank + N:M in one layer (sparsity/lowrank.py): its factors' masks, Maestro's shrink on them, and the
composed method through train.py and eval.py on the tiny data."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lowrank
import sparsity
from experiment import metrics
from sparsity import lowrank as nm_lowrank
from tests.conftest import main_here, train_here


def groups_keep(w: np.ndarray, n: int, m: int, axis: int) -> bool:
  """Every group of `m` consecutive entries along `axis` has at most `n` nonzeros."""
  moved = np.moveaxis(w, axis, -1)
  return bool((np.count_nonzero(moved.reshape(*moved.shape[:-1], -1, m), axis=-1) <= n).all())


def test_factors_are_nm_along_the_reduction_axis_of_their_product():
  layer = nm_lowrank.linear(32, 24, rngs=nnx.Rngs(0), name="fc", n=1, m=4)
  assert layer.rank == 24 and layer.rank_multiple == 4
  down, up = np.asarray(layer.down[...]), np.asarray(layer.up[...])  # The effective (masked) factors.
  assert groups_keep(down, 1, 4, axis=0) and groups_keep(up, 1, 4, axis=0)
  assert np.count_nonzero(down) == down.size // 4 and np.count_nonzero(up) == up.size // 4
  x = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
  np.testing.assert_allclose(layer(x), x @ down @ up, rtol=1e-5, atol=1e-5)  # The bias starts at 0.
  conv = nm_lowrank.conv(8, 16, 3, rngs=nnx.Rngs(1), name="c", n=2, m=4)
  assert groups_keep(np.asarray(conv.down[...]), 2, 4, axis=2) and groups_keep(np.asarray(conv.up[...]), 2, 4, axis=0)
  assert conv.rank == 16 and conv(jnp.ones((1, 6, 6, 8))).shape == (1, 6, 6, 16)


def test_a_shrink_keeps_the_rank_a_multiple_of_every_m_and_slices_what_mirrors_the_factors():
  model = nm_lowrank.linear(32, 32, rngs=nnx.Rngs(0), name="fc", n=1, m=4)
  training = sparsity.NMTraining(model, num_steps=12, method="sdgf", structure="densify")  # Ms 32, 16, 8, 4.
  assert model.rank_multiple == 32  # Every frame's groups must stay whole.
  model = nm_lowrank.linear(32, 32, rngs=nnx.Rngs(0), name="fc", n=1, m=4)
  sparsity.NMTraining(model, num_steps=12, method="ste")
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  model.up.kernel[...] = model.up.kernel[...].at[5:].set(0.0)  # Components 5.. unimportant: keep 5, rounded to 8.
  assert lowrank.kept_ranks(model, 1e-6) == {"fc": 8}
  lowrank.slice_to(model, {"fc": 8}, optimizer)
  assert model.down.shape == (32, 8) and model.up.shape == (8, 32) and model.down.logged_mask.shape == (32, 8)
  moments = {p[-2:]: v.shape for p, v in nnx.to_flat_state(nnx.state(optimizer)) if p[-1] == "kernel"}
  assert moments == {("down", "kernel"): (32, 8), ("up", "kernel"): (8, 32)}
  assert training.frames  # (the first model's: unused)


def test_composed_losses_pass_each_parts_soft_targets_down_to_the_forward_pass():
  """Maestro distils (its forward passes get soft targets) through the N:M rule's forward pass; the inner part's
  penalty counts once however many passes the outer part makes."""
  from experiment.methods import Composed, Method

  class Distils(Method):
    def loss(self, model, step, key, forward):
      full, logits = forward(model, None)
      sampled, _ = forward(model, "soft targets")
      return full + sampled + 1.0, logits, {"distils/extra": 1.0}

  class Masks(Method):  # Like NMTraining: a rule around each forward pass, and a penalty.
    def forward_pass(self, model, step, key, forward):
      loss, logits = forward(model)
      return loss + 1000.0, logits

    def penalty(self, model, step):
      return 10.0

  seen = []
  base = lambda model, soft: (seen.append(soft) or 100.0, "logits")
  loss, logits, extra = Composed({"lowrank": Distils(), "nm": Masks()}).loss(None, 1, jax.random.key(0), base)
  assert seen == [None, "soft targets"] and logits == "logits" and extra == {"distils/extra": 1.0}
  assert loss == (100.0 + 1000.0) * 2 + 1.0 + 10.0  # The rule in each forward pass, each penalty once.


def test_with_distillation_the_srste_term_of_both_factors_is_added_once_per_step():
  """Maestro's distillation makes two forward passes through low-rank N:M factors; coupled SR-STE's
  λ_w/2·‖(1 − m)⊙W‖² over both factors is in the loss once (a hand computation from the factors' kernels)."""
  from experiment.methods import Composed
  lam = 0.3
  layer = nm_lowrank.linear(16, 16, rngs=nnx.Rngs(0), name="fc", n=1, m=4)
  parts = {"lowrank": lowrank.Maestro(distill=True, sampler="none"),
           "nm": sparsity.NMTraining(layer, num_steps=10, method="srste", srste_decay=lam)}
  parts["nm"].restore(layer, None, {})
  x = jnp.ones((2, 16))
  forward = lambda model, soft: (0.0 * jnp.sum(model(x)), model(x))  # The cross-entropy left out: 0.
  loss, _, _ = Composed(parts).loss(layer, jnp.int32(1), jax.random.key(0), forward)
  expected = 0.0
  for factor in (layer.down, layer.up):
    w = np.asarray(factor.kernel[...])
    expected += lam / 2 * np.sum(np.where(np.asarray(sparsity.nm_mask(w, 1, 4, 0)), 0.0, w) ** 2)
  assert float(loss) == pytest.approx(expected, rel=1e-5) and expected > 0


def test_the_group_lasso_of_low_rank_nm_reads_the_masked_factors():
  """Maestro's penalty on N:M factors is the hierarchical group lasso of the masked (effective) factors, by hand in
  NumPy, not of the dense kernels behind them."""
  layer = nm_lowrank.linear(16, 12, rngs=nnx.Rngs(0), name="fc", n=1, m=4)
  masked = []
  for factor in (layer.down, layer.up):
    w = np.asarray(factor.kernel[...], np.float64)
    masked.append(np.where(np.asarray(sparsity.nm_mask(w, 1, 4, 0)), w, 0.0))
  down, up = masked  # (16, r), (r, 12)
  tail = lambda norms: np.sqrt(np.cumsum(norms[::-1])[::-1])  # sqrt(Σ_{j≥i} ·), for each i.
  expected = np.sum(tail(np.sum(down ** 2, axis=0)) + tail(np.sum(up ** 2, axis=1)))
  assert float(lowrank.penalty(layer)) == pytest.approx(expected, rel=1e-5)
  raw_down, raw_up = np.asarray(layer.down.kernel[...]), np.asarray(layer.up.kernel[...])
  unmasked = np.sum(tail(np.sum(raw_down ** 2, axis=0)) + tail(np.sum(raw_up ** 2, axis=1)))
  assert abs(unmasked - expected) > 0.1 * expected


SMOKE = "configs/fmnist_mlp_maestro.py:smoke"
COMPOSED = {"layers.type": "lowrank+nm", "lowrank.shrink_every": 5, "lowrank.shrink_eps": 0.5,
            "model.hidden": (64, 64)}  # 784-64-64-10: full ranks 64 and 64.


def test_lowrank_nm_trains_logs_ranks_and_sparsity_and_exports_packed_factors(tmp_path, tiny_data):
  workdir, folder = tmp_path / "run", tmp_path / "export"
  train_here(SMOKE, workdir, {**tiny_data, **COMPOSED})
  rows = [r for r in metrics.read(workdir / "metrics.jsonl") if "rank/fc1" in r]
  ranks = [(r["rank/fc1"], r["rank/fc2"]) for r in rows]
  assert ranks[0] == (64, 64) and ranks[-1][1] < 64 and all(r % 8 == 0 for pair in ranks for r in pair)
  assert all(r["sparsity/fc1.down"] == r["sparsity/fc2.up"] == 0.75 for r in rows)  # 2:8 on every factor.
  assert rows[-1]["nm/n"] == 2 and rows[-1]["nm/m"] == 8 and "lowrank/group_lasso" in rows[-1]

  main_here("eval.py", "--workdir", str(workdir), f"--export={folder}")
  report = json.loads((workdir / "eval.json").read_text())
  sizes = report["export"]["bytes"]
  assert sizes["nm_kernels_packed"] == pytest.approx(sizes["nm_kernels_dense"] * (2 * 4 + 2) / (8 * 4))  # Values
  # (float32) and uint8 indices of 2 of every 8.
  main_here("eval.py", f"--exported={folder}")
  exported = json.loads((folder / "eval.json").read_text())
  assert exported["eval/accuracy"] == pytest.approx(report["eval/accuracy"], abs=1e-6)
  assert json.loads((folder / "config.json").read_text())["layers"]["ranks"] == {"fc1": ranks[-1][0],
                                                                                  "fc2": ranks[-1][1]}
