"""Runs an entry point with TFDS's own mock data in place of every TFDS dataset (no network, no files):

  python tests/mock_tfds.py <examples per split> train.py --config ... --config.dataset.name=cifar10

`tfds.testing.mock_data` patches TFDS in this process only, so the tests run train.py through this script.
"""

import runpy
import sys

import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

# TFDS 4.9's mock binds `__getitems__` on a mock without `self`; here each record key list is passed through.
_getitems = mocking._getitems
mocking._getitems = lambda *args, **kw: _getitems(None, *args, **kw) if len(args) == 1 else _getitems(*args, **kw)

if __name__ == "__main__":
  examples, script, *argv = sys.argv[1:]
  sys.argv = [script, *argv]
  with tfds.testing.mock_data(num_examples=int(examples), policy=tfds.testing.MockPolicy.USE_CODE):
    runpy.run_path(script, run_name="__main__")
