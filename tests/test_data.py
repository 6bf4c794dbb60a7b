import subprocess
import sys
import time

import numpy as np
import pytest

from data import fashion_mnist, idx, pipeline
from tests.conftest import ROOT, make_images, write_idx_set


def test_idx_round_trip(tmp_path):
  images, labels = make_images(7, seed=3)
  idx.write_idx(tmp_path / "i.gz", images)
  idx.write_idx(tmp_path / "l.gz", labels)
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "i.gz", ndim=3), images)
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "l.gz", ndim=1), labels)


def test_damaged_idx_files_name_the_file(tmp_path):
  images, _ = make_images(5, seed=0)
  idx.write_idx(tmp_path / "ok.gz", images)
  raw = (tmp_path / "ok.gz").read_bytes()
  (tmp_path / "truncated.gz").write_bytes(raw[: len(raw) // 2])
  with pytest.raises(idx.DataError, match="truncated.gz"):
    idx.read_idx(tmp_path / "truncated.gz", ndim=3)
  with pytest.raises(idx.DataError, match="magic"):
    idx.read_idx(tmp_path / "ok.gz", ndim=1)  # An image file read as a label file.


def test_builder_stores_the_idx_content(tmp_path):
  folder = write_idx_set(tmp_path / "idx", num_train=40, num_test=12)
  train = fashion_mnist.load("train", data_dir=str(tmp_path / "tfds"), idx_dir=str(folder))
  test = fashion_mnist.load("test", data_dir=str(tmp_path / "tfds"), idx_dir=str(folder))
  assert (len(train), len(test)) == (40, 12)
  images, labels = make_images(12, seed=1)
  for i in (0, 5, 11):
    np.testing.assert_array_equal(test[i]["image"][..., 0], images[i])
    assert test[i]["label"] == labels[i]


def test_processes_starting_together_prepare_the_dataset_once(tmp_path):
  """A sweep's workers on a fresh machine: each loads the not-yet-prepared dataset at the same moment."""
  folder, go = write_idx_set(tmp_path / "idx", num_train=3000, num_test=12), tmp_path / "go"
  load = ("import pathlib, sys, time; from data import fashion_mnist; pathlib.Path(sys.argv[1]).touch()\n"
          f"t = time.monotonic()\nwhile not pathlib.Path({str(go)!r}).exists() and time.monotonic() - t < 600: "
          "time.sleep(0.01)\n"
          f"print(len(fashion_mnist.load('train', data_dir={str(tmp_path / 'tfds')!r}, idx_dir={str(folder)!r})))")
  ready = [tmp_path / f"ready{i}" for i in range(3)]
  procs = [subprocess.Popen([sys.executable, "-c", load, str(r)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for r in ready]
  try:
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready):  # All imported: then they start loading together.
      assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
      assert time.monotonic() < deadline, "the loaders did not start within 300 s"
      time.sleep(0.01)
  finally:
    go.touch()  # Even when one died: the others load and end.
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0, 0], outs[0][1][-2000:]
  assert [o.split()[-1] for o, _ in outs] == ["3000"] * 3
  assert len(list((tmp_path / "tfds" / "fashion_mnist_idx").iterdir())) == 1  # One version folder, no leftovers.


def test_missing_configured_folder_is_a_clear_error(tmp_path):
  with pytest.raises(idx.DataError, match="idx_dir"):
    fashion_mnist.load("train", data_dir=str(tmp_path / "tfds"), idx_dir=str(tmp_path / "empty"))


class _Source:
  """A stand-in random-access source whose records are their own index."""

  in_memory = True

  def __len__(self):
    return 50

  def batch(self, ix, noise=None):
    return {"inputs": np.full((len(ix), 2, 2, 1), 0.5, np.float32), "targets": np.asarray(ix, np.int32)}


def _labels(iterator, n):
  return np.concatenate([next(iterator)["targets"] for _ in range(n)])


def test_train_iterator_is_a_fresh_permutation_every_epoch():
  seen = _labels(pipeline.train_iterator(_Source(), 10, seed=0), 10)  # Two epochs of 50.
  first, second = seen[:50], seen[50:]
  assert sorted(first) == list(range(50)) and sorted(second) == list(range(50))
  assert not np.array_equal(first, second)
  np.testing.assert_array_equal(seen, _labels(pipeline.train_iterator(_Source(), 10, seed=0), 10))
  assert not np.array_equal(seen, _labels(pipeline.train_iterator(_Source(), 10, seed=1), 10))


def test_train_iterator_resumes_from_its_state():
  it = pipeline.train_iterator(_Source(), 8, seed=4)
  _labels(it, 9)
  state = it.get_state()
  expected = _labels(it, 5)
  resumed = pipeline.train_iterator(_Source(), 8, seed=4)
  resumed.set_state(state)
  np.testing.assert_array_equal(_labels(resumed, 5), expected)


def test_process_shards_partition_each_global_batch():
  whole = _labels(pipeline.train_iterator(_Source(), 10, seed=0), 3).reshape(3, 10)
  halves = [_labels(pipeline.train_iterator(_Source(), 10, seed=0, process_index=p, process_count=2), 3).reshape(3, 5)
            for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves, axis=1), whole)


def test_eval_batches_count_every_example_once():
  batches = list(pipeline.eval_batches(_Source(), 16, limit=45))
  assert all(b["targets"].shape == (16,) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["targets"] for b in batches])
  np.testing.assert_array_equal(labels[mask == 1], np.arange(45))
