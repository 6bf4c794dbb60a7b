import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest
from flax import nnx

import models
from experiment import methods
from experiment.config import ConfigError
from models.layers import LayerFactory
import sparsity
from sparsity import NMLinear


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - {"lm"}))
def test_every_image_model_maps_images_to_logits(name):
  logits = nnx.eval_shape(lambda: models.build(ml_collections.ConfigDict({"name": name}), LayerFactory(),
                                               input_shape=(28, 28, 1), num_classes=10, seed=0)(jnp.ones((3, 28, 28, 1))))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32


@pytest.mark.parametrize("layers", [{"type": "dense"}, {"type": "nm", "n": 1, "m": 4}])
def test_the_language_model_is_causal(layers):
  model = models.build(ml_collections.ConfigDict({"name": "lm", "dim": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64}),
                       methods.layer_factory(layers, jnp.float32), input_shape=(16,), num_classes=11, seed=0)
  tokens = jnp.arange(32).reshape(2, 16) % 11
  logits = model(tokens)
  assert logits.shape == (2, 16, 11)
  changed = model(tokens.at[:, 9].set(3))  # A later token changes no earlier prediction.
  np.testing.assert_allclose(changed[:, :9], logits[:, :9], atol=1e-6)
  assert not np.allclose(changed[:, 9:], logits[:, 9:])
  np.testing.assert_allclose(model(tokens[:, :5]), logits[:, :5], atol=1e-5)  # Shorter windows: the same.


def test_the_paper_configs_options_group_norm_resnet_and_bias_free_vit_mlp():
  """model.norm=group: every BatchNorm a GroupNorm with Maestro-LoD's group counts (no running statistics to
  recalibrate); model.mlp_bias=False: the ViT's MLP layers without a bias (PGF's FF layers), attention unchanged."""
  build = lambda **model: models.build(ml_collections.ConfigDict(model), LayerFactory(), input_shape=(16, 16, 3),
                                       num_classes=10, seed=0)
  resnet = build(name="resnet", depth=18, width=16, norm="group")
  norms = [m for _, m in nnx.iter_graph(resnet) if isinstance(m, (nnx.GroupNorm, nnx.BatchNorm))]
  assert norms and all(isinstance(m, nnx.GroupNorm) for m in norms)
  assert {(m.scale.shape[0], m.num_groups) for m in norms} == {(16, 2), (32, 4), (64, 8), (128, 8)}
  assert resnet(jnp.ones((2, 16, 16, 3))).shape == (2, 10)
  with pytest.raises(ValueError, match="norm='layer'"):
    build(name="resnet", depth=18, width=16, norm="layer")
  vit = build(name="vit", patch=4, dim=32, depth=1, num_heads=2, mlp_dim=64, mlp_bias=False)
  mlp, attn = vit.blocks[0].mlp, vit.blocks[0].attn
  assert mlp.fc1.bias is None and mlp.fc2.bias is None and attn.query.bias is not None
  assert vit(jnp.ones((2, 16, 16, 3))).shape == (2, 10)


def test_keep_dense_patterns_select_layers_by_name():
  factory = methods.layer_factory({"type": "nm", "keep_dense": ("fc1", "block*/attn/*")}, jnp.float32)
  assert factory.is_dense("fc1") and factory.is_dense("block3/attn/query")
  assert not factory.is_dense("fc2") and not factory.is_dense("block3/mlp/fc1")
  assert isinstance(factory.linear("fc1", 8, 8, rngs=nnx.Rngs(0)), nnx.Linear)
  assert isinstance(factory.linear("fc2", 8, 8, rngs=nnx.Rngs(0)), NMLinear)


@pytest.mark.parametrize("layers, field", [({"type": "sparse"}, "config.layers.type"),
                                           ({"type": "lowrank", "rank_ration": 0.5}, "config.layers.rank_ration")])
def test_unknown_layer_types_and_options_are_one_line_naming_the_field(layers, field):
  config = ml_collections.ConfigDict({"layers": {"keep_dense": (), **layers}})
  with pytest.raises(ConfigError, match=field):
    methods.check(config)


def test_a_field_a_method_does_not_have_is_refused_naming_it():
  config = ml_collections.ConfigDict({"layers": {"type": "lowrank", "keep_dense": ()},
                                      "lowrank": {**methods.REGISTRY["lowrank"].sections["lowrank"], "shrink_evry": 5}})
  with pytest.raises(ConfigError, match="config.lowrank.shrink_evry"):
    methods.check(config)
  del config.lowrank["shrink_evry"]
  methods.check(config)


def test_vit_rejects_a_patch_that_does_not_divide_the_image():
  with pytest.raises(ValueError, match="config.model.patch"):
    models.ViT(LayerFactory(), input_shape=(28, 28, 1), num_classes=10, patch=5, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("model, input_shape, classes, params", [
    ({"name": "resnet", "depth": 18}, (32, 32, 3), 10, 11_173_962),  # torchvision-style CIFAR ResNet-18.
    ({"name": "resnet", "depth": 34}, (32, 32, 3), 10, 21_282_122),
    ({"name": "resnet", "depth": 50, "stem": "imagenet"}, (224, 224, 3), 1000, 25_557_032),  # torchvision's.
    ({"name": "vgg"}, (32, 32, 3), 10, 20_560_330),  # Pufferfish's CIFAR VGG-19-BN.
])
def test_resnets_and_vgg_have_the_reference_models_parameters(model, input_shape, classes, params):
  built = nnx.eval_shape(lambda: models.build(ml_collections.ConfigDict(model), LayerFactory(),
                                              input_shape=input_shape, num_classes=classes, seed=0))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(built, nnx.Param))) == params
  statistics = nnx.state(built, nnx.BatchStat)
  assert len(jax.tree.leaves(statistics)) == 2 * (20 if model.get("depth") == 18 else 36 if model.get("depth") == 34
                                                  else 53 if model.get("depth") == 50 else 16)


@pytest.mark.parametrize("layers", [{"type": "lowrank", "rank_ratio": 0.5}, {"type": "nm", "n": 1, "m": 4}])
def test_low_rank_and_nm_reach_every_convolution_of_a_resnet(layers):
  model = models.build(ml_collections.ConfigDict({"name": "resnet", "depth": 18, "width": 8}),
                       methods.layer_factory({**layers, "keep_dense": ("stem",)}, jnp.float32), input_shape=(32, 32, 3),
                       num_classes=10, seed=0)
  kinds = {type(m).__name__ for _, m in nnx.iter_graph(model) if type(m).__name__.endswith(("Conv", "Linear"))}
  expected = {"lowrank": {"Conv", "LowRankConv", "LowRankLinear"}, "nm": {"Conv", "NMConv", "NMLinear"}}
  assert kinds == expected[layers["type"]]
  assert nnx.eval_shape(lambda m: m(jnp.ones((2, 32, 32, 3))), model).shape == (2, 10)
  if layers["type"] == "nm":  # Counting its N:M multiply-accumulates traces a copy: BatchNorm's statistics stay.
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    macs = sparsity.layers.forward_macs(model, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    assert len(macs) == len(sparsity.nm_layers(model)) and all(v > 0 for v in macs.values())
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat)))


@pytest.mark.slow  # ResNet-50's 53 convolutions: the MLP's switch is in tests/test_lowrank_train.py.
def test_a_dense_resnet_switches_to_its_full_rank_svd_with_the_same_outputs():
  """The switch after a dense warm-up on a bottleneck ResNet with BatchNorm and bias-free convolutions: the SVD
  factors at full rank, and every BatchNorm's parameters and statistics, carried over."""
  from experiment import export
  config = ml_collections.ConfigDict({
      "model": {"name": "resnet", "depth": 50, "stem": "imagenet", "width": 4}, "seed": 0, "compute_dtype": "float32",
      "dataset": {"name": "fashion_mnist"},
      "layers": {"type": "lowrank", "keep_dense": ("stem",), "rank_ratio": 1.0, "ranks": {}, "init": "spectral"}})
  dense = models.build(config.model, LayerFactory(), input_shape=(28, 28, 1),
                       num_classes=10, seed=1)
  x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
  dense(x)  # Training mode: the running statistics move off their initial values.
  switched = export.from_dense(dense, config)
  evaluate = lambda m: nnx.view(m, use_running_average=True)(x)
  np.testing.assert_allclose(evaluate(switched), evaluate(dense), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, params", [
    (dict(dim=384, num_heads=6, mlp_dim=1536), 22_050_664),  # timm's deit_small_patch16_224.
    (dict(dim=768, num_heads=12, mlp_dim=3072), 86_567_656),  # timm's deit_base_patch16_224 (ViT-B/16).
])
def test_vits_with_a_class_token_have_the_reference_models_parameters(size, params):
  built = nnx.eval_shape(lambda: models.build(ml_collections.ConfigDict(dict(name="vit", patch=16, depth=12, pool="cls",
                                                                               **size)),
                                              LayerFactory(), input_shape=(224, 224, 3), num_classes=1000, seed=0))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(built, nnx.Param))) == params
