"""Image preprocessing by dataset family, on the host in NumPy (and Pillow for
resizing), a batch at a time.

A training batch is augmented from `noise`: NOISE uniforms per example, drawn
by the input pipeline from (seed, batch number) for the global batch, so the
augmentation is deterministic, resumes exactly with the iterator's state, and
does not depend on how many processes share the batch. Evaluation (`noise`
None) is deterministic.

- `scale`: pixels to [0, 1], no augmentation (MNIST-like sets, any fixed size).
- `cifar`: a 4-pixel zero pad and a random 32x32 crop, a horizontal flip with
  probability 1/2; per-channel normalization (the CIFAR-10 training set's).
- `imagenet`: training: a random resized crop (area 8-100%, aspect ratio
  3/4-4/3) resized to 224x224, a horizontal flip; evaluation: the shorter side
  resized to 256, the central 224x224; per-channel normalization (ImageNet's).
"""

import dataclasses
from typing import Callable

import numpy as np
from PIL import Image

NOISE = 6  # Uniforms per example of a training batch.
CIFAR_MEAN, CIFAR_STD = np.array([0.4914, 0.4822, 0.4465]), np.array([0.2470, 0.2435, 0.2616])
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
IMAGENET_SIZE, IMAGENET_RESIZE = 224, 256


@dataclasses.dataclass(frozen=True)
class Family:
  """`shape(stored)`: a preprocessed image's shape given the stored one (None: varying sizes);
  `apply(images, noise)`: uint8 images (an array, or a list of different sizes) -> float32 (b, *shape)."""
  shape: Callable[[tuple], tuple]
  apply: Callable[[object, np.ndarray | None], np.ndarray]


def _fixed(shape: tuple, family: str) -> tuple:
  if None in shape:
    raise ValueError(f"preprocess={family} needs images of one size; this dataset's are {shape}: use imagenet")
  return tuple(shape)


def scale(images, noise: np.ndarray | None) -> np.ndarray:
  del noise
  return np.asarray(images, np.float32) / 255.0


def cifar(images, noise: np.ndarray | None) -> np.ndarray:
  images = np.asarray(images)
  if noise is not None:
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    top, left = (noise[:, 0] * 9).astype(int), (noise[:, 1] * 9).astype(int)  # Offsets 0..8.
    rows, cols = top[:, None] + np.arange(h), left[:, None] + np.arange(w)
    images = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    flip = noise[:, 2] < 0.5
    images[flip] = images[flip, :, ::-1]
  return ((images / 255.0 - CIFAR_MEAN) / CIFAR_STD).astype(np.float32)


def imagenet(images, noise: np.ndarray | None) -> np.ndarray:
  out = np.empty((len(images), IMAGENET_SIZE, IMAGENET_SIZE, 3), np.float32)
  for i, image in enumerate(images):
    picture = Image.fromarray(np.asarray(image))
    if noise is None:
      out[i] = _center_crop(picture)
    else:
      out[i] = _random_resized_crop(picture, noise[i])
  return ((out / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _center_crop(picture: Image.Image) -> np.ndarray:
  w, h = picture.size
  s = IMAGENET_RESIZE / min(w, h)
  w, h = max(IMAGENET_SIZE, round(w * s)), max(IMAGENET_SIZE, round(h * s))
  left, top = (w - IMAGENET_SIZE) // 2, (h - IMAGENET_SIZE) // 2
  resized = picture.resize((w, h), Image.BILINEAR)
  return np.asarray(resized.crop((left, top, left + IMAGENET_SIZE, top + IMAGENET_SIZE)))


def _random_resized_crop(picture: Image.Image, u: np.ndarray) -> np.ndarray:
  """The crop of area fraction in [0.08, 1] and log-uniform aspect ratio in [3/4, 4/3] that `u` picks (clipped to
  the image), resized to 224x224, flipped if u[4] < 1/2."""
  w, h = picture.size
  area = w * h * (0.08 + 0.92 * u[0])
  ratio = np.exp(np.log(3 / 4) + (np.log(4 / 3) - np.log(3 / 4)) * u[1])
  cw, ch = min(w, max(1, round(np.sqrt(area * ratio)))), min(h, max(1, round(np.sqrt(area / ratio))))
  left, top = int(u[2] * (w - cw + 1)), int(u[3] * (h - ch + 1))
  crop = picture.resize((IMAGENET_SIZE, IMAGENET_SIZE), Image.BILINEAR, box=(left, top, left + cw, top + ch))
  if u[4] < 0.5:
    crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
  return np.asarray(crop)


FAMILIES = {
    "scale": Family(lambda s: _fixed(s, "scale"), scale),
    "cifar": Family(lambda s: _fixed(s, "cifar"), cifar),
    "imagenet": Family(lambda s: (IMAGENET_SIZE, IMAGENET_SIZE, 3), imagenet),
}


def family_of(name: str) -> str:
  """The default preprocessing of TFDS dataset `name`."""
  if name.startswith("cifar"):
    return "cifar"
  if name.startswith(("imagenet", "imagenette")):
    return "imagenet"
  return "scale"
