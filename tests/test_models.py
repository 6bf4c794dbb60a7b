import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

import models
from models.layers import LayerFactory


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_maps_images_to_logits(name):
  model = models.build(ml_collections.ConfigDict({"name": name}), ml_collections.ConfigDict({"type": "dense"}),
                       input_shape=(28, 28, 1), num_classes=10, seed=0)
  assert model(jnp.ones((3, 28, 28, 1))).shape == (3, 10)


def test_keep_dense_patterns_select_layers_by_name():
  factory = LayerFactory("dense", keep_dense=("fc1", "block*/attn/*"))
  assert factory.type_of("fc1") == factory.type_of("block3/attn/query") == "dense"
  assert factory.type_of("fc2") == factory.type_of("block3/mlp/fc1") == "dense"  # Only dense exists here.


def test_unknown_layer_type_is_rejected():
  with pytest.raises(ValueError, match="config.layers.type"):
    LayerFactory("sparse")


def test_vit_rejects_a_patch_that_does_not_divide_the_image():
  with pytest.raises(ValueError, match="config.model.patch"):
    models.ViT(LayerFactory(), input_shape=(28, 28, 1), num_classes=10, patch=5, rngs=nnx.Rngs(0))
