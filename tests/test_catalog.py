"""TFDS datasets by name (data/catalog.py) and their preprocessing (data/preprocess.py), on TFDS's own mock data
(`tfds.testing.mock_data`: random examples of the real dataset's features, nothing downloaded): cifar10 and
imagenet2012 (images of random sizes) through train.py with validation and test metrics and an exact resume
across epoch boundaries; the augmentation deterministic, resumable, and the same whatever the process count."""

import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

import data
import tests.mock_tfds  # noqa: F401 - its patch of TFDS's mock, for the in-process mocks here.
from data import pipeline, preprocess
from experiment import metrics
from tests.conftest import assert_same_run, run

RUN = {"model.hidden": "(32,)", "batch_size": 16, "eval_batch_size": 16, "num_steps": 12, "log_every": 3,
       "eval_every": 6, "checkpoint_every": 3, "keep_checkpoints": 5, "dataset.eval_limit": 32}


def mock_train(name: str, workdir, examples: int = 40):
  """train.py on mock `name`, `examples` per split: an epoch of the train split is 2.5 batches of 16."""
  return run("tests/mock_tfds.py", str(examples), "train.py", "--config", "configs/fmnist_mlp_dense.py:smoke",
      "--workdir", str(workdir), overrides={**RUN, "dataset.name": name})


@pytest.mark.parametrize("name", ["cifar10", pytest.param("imagenet2012", marks=pytest.mark.slow)])  # ImageNet's
# training on mock data by name is also test_paper_configs' ViT-B/16 smoke; resuming with augmentation, cifar10's.
def test_a_tfds_dataset_by_name_trains_with_validation_and_test_metrics_and_resumes_exactly(name, tmp_path):
  straight = tmp_path / "straight"
  mock_train(name, straight)
  rows = metrics.read(straight / "metrics.jsonl")
  evaluated = [r for r in rows if "eval/accuracy" in r]
  assert [r["step"] for r in evaluated] == [6, 12] and all("val/accuracy" in r and "val/loss" in r for r in evaluated)
  assert rows[0]["params/total"] == (224 * 224 * 3 if name == "imagenet2012" else 32 * 32 * 3) * 32 + 32 + 33 * (
      1000 if name == "imagenet2012" else 10)
  resumed = tmp_path / "resumed"
  shutil.copytree(straight, resumed)
  for step in (9, 12):  # As if killed after the step-6 checkpoint: steps 7-12 cross two epoch boundaries again.
    shutil.rmtree(resumed / "checkpoints" / str(step))
  assert "Resumed from step 6" in mock_train(name, resumed).stderr
  assert_same_run(straight, resumed, 12)


def cifar_split(examples: int = 40) -> data.Split:
  with tfds.testing.mock_data(num_examples=examples, policy=tfds.testing.MockPolicy.USE_CODE):
    spec = data.dataset("cifar10")
    return data.Split(spec.load("train"), spec.collate, spec.fixed_shapes)


def test_augmentation_is_deterministic_resumable_and_independent_of_the_process_count():
  split = cifar_split()
  augmented = lambda: pipeline.train_iterator(split, 16, seed=5, augment=True)
  first, again = augmented(), augmented()
  batches = [next(first) for _ in range(4)]  # Past an epoch of 40.
  for b in batches:
    np.testing.assert_array_equal(b["inputs"], next(again)["inputs"])
  plain = next(pipeline.train_iterator(split, 16, seed=5))
  assert np.array_equal(plain["targets"], batches[0]["targets"])  # The same examples, augmented differently.
  assert not np.allclose(plain["inputs"], batches[0]["inputs"])
  state = first.get_state()
  later = [next(first) for _ in range(3)]
  resumed = augmented()
  resumed.set_state(state)
  for b in later:
    np.testing.assert_array_equal(b["inputs"], next(resumed)["inputs"])
  shares = [pipeline.train_iterator(split, 16, seed=5, augment=True, process_index=i, process_count=2)
            for i in range(2)]
  for b in batches:
    np.testing.assert_array_equal(b["inputs"], np.concatenate([next(s)["inputs"] for s in shares]))


def test_cifar_augmentation_pads_crops_and_flips():
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  noise = np.zeros((3, preprocess.NOISE))
  noise[0, :3] = [4 / 9 + 0.01, 4 / 9 + 0.01, 0.9]  # Offset 4 of 0..8: the image itself.
  noise[1, :3] = [0.0, 8 / 9 + 0.01, 0.9]  # 4 rows down (zeros above), 4 columns left.
  noise[2, :3] = [4 / 9 + 0.01, 4 / 9 + 0.01, 0.1]  # Flipped.
  normalize = lambda x: ((x / 255.0 - preprocess.CIFAR_MEAN) / preprocess.CIFAR_STD).astype(np.float32)
  out = preprocess.cifar(images, noise)
  np.testing.assert_allclose(out[0], normalize(images[0]), atol=1e-6)
  np.testing.assert_allclose(out[1, 4:, :28], normalize(images[1, :28, 4:]), atol=1e-6)
  np.testing.assert_allclose(out[1, :4], normalize(np.zeros((4, 32, 3))), atol=1e-6)
  np.testing.assert_allclose(out[2], normalize(images[2, :, ::-1]), atol=1e-6)
  np.testing.assert_allclose(preprocess.cifar(images, None), normalize(images), atol=1e-6)


def test_imagenet_preprocessing_makes_224_squares_of_any_size():
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for h, w in ((17, 300), (500, 375), (224, 224))]
  evaluated = preprocess.imagenet(images, None)
  trained = preprocess.imagenet(images, rng.random((3, preprocess.NOISE)))
  assert evaluated.shape == trained.shape == (3, 224, 224, 3) and evaluated.dtype == np.float32
  flat = np.full((256, 512, 3), 100, np.uint8)  # Evaluation: resize the shorter side to 256, keep the centre.
  flat[:, 256 - 112:256 + 112] = 200
  center = preprocess.imagenet([flat], None)[0]
  np.testing.assert_allclose(center, preprocess.imagenet([np.full((224, 224, 3), 200, np.uint8)], None)[0])


def test_by_name_specs_come_from_the_builder_info():
  with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
    cifar, imagenet, mnist = (data.dataset(n) for n in ("cifar10", "imagenet2012", "mnist"))
  assert (cifar.input_shape, cifar.num_classes, cifar.augments) == ((32, 32, 3), 10, True)
  assert (imagenet.input_shape, imagenet.num_classes, imagenet.fixed_shapes) == ((224, 224, 3), 1000, False)
  assert (mnist.input_shape, mnist.num_classes, mnist.augments) == ((28, 28, 1), 10, False)
  assert imagenet.splits == ("train[:99%]", "train[99%:]", "validation")
