"""Models built from the layer factory."""

from flax import nnx

from models.cnn import CNN
from models.layers import LayerFactory
from models.lm import LM
from models.mlp import MLP
from models.resnet import ResNet
from models.vgg import VGG
from models.vit import ViT

MODELS = {"mlp": MLP, "cnn": CNN, "vit": ViT, "lm": LM, "resnet": ResNet, "vgg": VGG}


def build(model_config, layers: LayerFactory, *, input_shape: tuple[int, ...], num_classes: int,
          seed: int) -> nnx.Module:
  """Model from `config.model` (`name` + its keyword arguments), its layers from `layers` (computing in
  `layers.dtype`; parameters float32, logits float32)."""
  kwargs = dict(model_config)
  name = kwargs.pop("name")
  return MODELS[name](layers, input_shape=input_shape, num_classes=num_classes, rngs=nnx.Rngs(seed), **kwargs)
