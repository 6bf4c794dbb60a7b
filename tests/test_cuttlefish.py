"""Cuttlefish: its stable-rank arithmetic and switch rule (lowrank/cuttlefish.py), and the method through train.py
and eval.py on the tiny data."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import train
from configs import fmnist_mlp_cuttlefish
from experiment import build, metrics
from experiment.config import ConfigError
from lowrank import cuttlefish
from lowrank.layers import LowRankLinear
from tests.conftest import main_here, train_here


class TwoLayers(nnx.Module):
  def __init__(self):
    rngs = nnx.Rngs(0)
    self.a = cuttlefish.linear(16, 32, rngs=rngs, name="a")
    self.b = cuttlefish.linear(32, 8, rngs=rngs, name="b")


def set_stable_rank(layer, k: int) -> None:
  """A kernel of k unit singular values: stable rank exactly k."""
  kernel = np.zeros(layer.kernel.shape, np.float32)
  kernel[np.arange(k), np.arange(k)] = 1
  layer.kernel[...] = jnp.asarray(kernel)


def test_stable_rank_is_squared_frobenius_over_squared_spectral_norm_rounded_down():
  layer = cuttlefish.conv(2, 4, 3, rngs=nnx.Rngs(0), name="c")  # (3, 3, 2, 4) as an (18, 4) matrix.
  u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(18, 4)))
  v, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))
  layer.kernel[...] = jnp.asarray((u * [2, 2, 2, 1] @ v.T).reshape(3, 3, 2, 4), jnp.float32)
  assert cuttlefish.stable_rank(layer) == 3  # (4 + 4 + 4 + 1) / 4 = 3.25.
  assert cuttlefish.full_rank(layer) == 4


def test_settled_is_the_references_ema_gradient_rule():
  assert not cuttlefish.settled([5, 5, 5], window=3, recent=2, tolerance=0.0)  # Needs window + 1 measurements.
  assert cuttlefish.settled([5, 5, 5, 5], window=3, recent=2, tolerance=0.0)
  # window=1: α = 1, the EMA is the history; np.gradient of [4, 0] is [-4, -4].
  assert cuttlefish.settled([4, 0], window=1, recent=2, tolerance=4.0)
  assert not cuttlefish.settled([4, 0], window=1, recent=2, tolerance=3.99)
  # window=3: α = 2/4, EMA [8, 4, 2, 1]; gradients [-4, -3, -1.5, -1]; the last two average 1.25.
  assert cuttlefish.settled([8, 0, 0, 0], window=3, recent=2, tolerance=1.25)
  assert not cuttlefish.settled([8, 0, 0, 0], window=3, recent=2, tolerance=1.24)


def test_ranks_are_stable_ranks_scaled_by_the_initial_one_at_most_full():
  model = TwoLayers()
  set_stable_rank(model.a, 4)
  hooks = cuttlefish.Cuttlefish(model, track_every=1)
  assert hooks.initial["a"] == 4 and hooks.full == {"a": 16, "b": 8}
  assert hooks.rank_of("a", 3) == 12  # ceil(3 · 16 / 4)
  assert hooks.rank_of("a", 5) == 16  # 20 > 16: the full rank.
  hooks.initial["a"] = 3
  assert hooks.rank_of("a", 1) == 6  # ceil(16 / 3 = 5.33)


def test_the_switch_waits_for_every_layer_then_chooses_at_the_next_measurement():
  model = TwoLayers()
  set_stable_rank(model.a, 8)
  set_stable_rank(model.b, 2)
  hooks = cuttlefish.Cuttlefish(model, track_every=3, window=2, recent=2, tolerance=0.1)
  assert [s for s in range(1, 10) if hooks.host_update_due(s)] == [3, 6, 9]
  for k in (7, 6, 5, 4, 3):  # `a` keeps changing (its EMA gradient stays near 1), `b` does not.
    set_stable_rank(model.a, k)
    assert hooks.host_update(0, model) is False
  assert hooks.stable == {"a": False, "b": True} and hooks.ranks is None
  for _ in range(3):  # Then `a` settles too (one layer left: the tolerance doubles, 0.2).
    if hooks.switch_next:
      break
    hooks.host_update(0, model)
  assert hooks.switch_next and hooks.ranks is None
  set_stable_rank(model.a, 2)
  assert hooks.host_update(0, model) is True
  assert hooks.ranks == {"a": 4, "b": 8}  # a: ceil(2 · 16 / 8); b: ceil(2 · 8 / 2).
  assert not hooks.host_update_due(3)
  # `relax` widens the tolerance when one or two layers are left: with it, `a` counts as stable at once.
  relaxed = cuttlefish.Cuttlefish(model, track_every=1, window=2, recent=2, tolerance=0.1, relax=10.0)
  for k in (7, 6, 5):
    set_stable_rank(model.a, k)
    relaxed.host_update(0, model)
  assert relaxed.stable == {"a": True, "b": True}


def test_state_round_trips_through_json_and_the_switched_model_gets_frobenius_decay():
  model = TwoLayers()
  hooks = cuttlefish.Cuttlefish(model, track_every=1, window=2, recent=1)
  hooks.host_update(1, model)
  restored = cuttlefish.Cuttlefish(TwoLayers(), track_every=1, window=2, recent=1)
  restored.restore(model, None, json.loads(json.dumps(hooks.state(1, model))))
  assert restored.state(1, model) == hooks.state(1, model)

  lod = LowRankLinear(16, 32, rank=4, rngs=nnx.Rngs(1), name="a")
  expected = float(jnp.sum((lod.down[...] @ lod.up[...]) ** 2))
  assert float(cuttlefish.frobenius_squared(lod)) == pytest.approx(expected, rel=1e-5)
  after = cuttlefish.Cuttlefish(lod, track_every=1, frobenius_decay=0.5)
  assert not after.host_update_due(1) and after.state(1, lod) == {"ranks": {"a": 4}}
  forward = lambda m, _: (jnp.float32(1.0), jnp.zeros((1, 32)))
  loss, _, logged = after.loss(lod, 1, None, forward)
  assert float(loss) == pytest.approx(1.0 + 0.5 * expected / 2, rel=1e-5)
  assert float(logged["lowrank/frobenius"]) == pytest.approx(expected / 2, rel=1e-5)


SMOKE = "configs/fmnist_mlp_cuttlefish.py:smoke"


def test_cuttlefish_trains_full_rank_switches_to_the_chosen_ranks_and_exports(tmp_path, tiny_data):
  workdir, folder = tmp_path / "run", tmp_path / "export"
  train_here(SMOKE, workdir, {**tiny_data, "model.hidden": (64, 64)})  # 784-64-64-10.
  by_step = {r["step"]: r for r in metrics.read(workdir / "metrics.jsonl")}
  chosen = json.loads((workdir / "checkpoints" / "20" / "method" / "metadata").read_text())["ranks"]
  assert (by_step[5]["rank/fc1"], by_step[5]["rank/fc2"]) == (64, 64)  # Full rank, tracked ...
  assert "cuttlefish/rank/fc1" in by_step[5] and "lowrank/frobenius" not in by_step[5]
  assert {k: by_step[10][f"rank/{k}"] for k in ("fc1", "fc2")} == chosen  # ... switched at step 8 (smoke).
  assert by_step[10]["params/effective"] == chosen["fc1"] * (784 + 64) + chosen["fc2"] * 128 + 128 + 650
  assert by_step[20]["compiles/train_step"] == 2 and "lowrank/frobenius" in by_step[20]
  schedule = build.learning_rate(fmnist_mlp_cuttlefish.get_config("smoke"))  # Without a restart.
  assert by_step[5]["train/learning_rate"] == pytest.approx(float(schedule(4)))
  # Restarted after the switch at step 8, re-warming over 4 updates (smoke), then the schedule again.
  assert by_step[10]["train/learning_rate"] == pytest.approx(float(schedule(9)) * 2 / 4)
  assert by_step[15]["train/learning_rate"] == pytest.approx(float(schedule(14)))

  main_here("eval.py", "--workdir", str(workdir), f"--export={folder}")
  main_here("eval.py", f"--exported={folder}")
  exported = json.loads((folder / "eval.json").read_text())
  assert exported["eval/accuracy"] == pytest.approx(by_step[20]["eval/accuracy"], abs=1e-6)
  kernels = min(chosen["fc1"] * (784 + 64), 784 * 64) + min(chosen["fc2"] * 128, 64 * 64)
  assert exported["params/total"] == kernels + 128 + 650  # Each layer factorized or dense, the smaller.


def test_a_bad_cuttlefish_field_is_one_error_naming_it(tmp_path, tiny_data):
  config = fmnist_mlp_cuttlefish.get_config("smoke")
  config.update_from_flattened_dict({**tiny_data, "cuttlefish.track_every": 0})
  with pytest.raises(ConfigError, match=r"config\.cuttlefish\.track_every=0 must be an integer >= 1"):
    train.train(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_after_the_switch_the_factors_get_frobenius_decay_instead_of_weight_decay():
  """The reference's parameter groups: with Frobenius decay on, the factors (a switched model's) leave the
  optimizer's weight decay; other kernels keep it, and without Frobenius decay the factors keep it too."""
  config = fmnist_mlp_cuttlefish.get_config()
  config.optimizer.update(weight_decay=0.5, warmup_steps=0, schedule="constant", grad_clip=0.0)
  params = {"kernel": jnp.ones((3, 2)), "down": jnp.ones((3, 1)), "up": jnp.ones((1, 2)), "bias": jnp.ones((2,))}
  zero = {k: jnp.zeros_like(v) for k, v in params.items()}
  for frobenius, state, decayed in ((1e-4, {"ranks": {"fc1": 1}}, {"kernel"}),
                                    (0.0, {"ranks": {"fc1": 1}}, {"kernel", "down", "up"})):
    config.cuttlefish.frobenius_decay = frobenius
    tx = build.optimizer(config, state)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert {k for k, u in updates.items() if np.any(u != 0)} == decayed, (frobenius, state)


@pytest.mark.parametrize("value", [-1, 10**6])
def test_a_rewarm_before_the_start_or_past_the_run_is_one_error_naming_it(tmp_path, tiny_data, value):
  config = fmnist_mlp_cuttlefish.get_config("smoke")
  config.update_from_flattened_dict({**tiny_data, "cuttlefish.rewarm_steps": value})
  with pytest.raises(ConfigError, match=rf"config\.cuttlefish\.rewarm_steps={value} must be an integer from 0 to"):
    train.train(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()
