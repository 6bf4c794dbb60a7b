"""Bad input: one line naming the field and the fix, a non-zero exit, before
anything is compiled, and an existing workdir left exactly as it was."""

import pytest

import train
from configs import fmnist_mlp_dense
from data import DataError
from experiment.config import ConfigError
from tests.conftest import assert_one_line_error, host_devices, run, snapshot

SMOKE = "configs/fmnist_mlp_dense.py:smoke"

CASES = {
    "unknown dataset": ({"dataset.name": "cifar_ten"}, "config.dataset.name"),
    "dataset not prepared": ({"dataset.name": "cifar10", "dataset.idx_dir": ""}, "tfds build cifar10 --data_dir="),
    "field of another dataset": ({"dataset.name": "cifar10"}, "config.dataset.idx_dir"),
    "unknown preprocessing": ({"dataset.name": "cifar10", "dataset.preprocess": "jpeg"}, "config.dataset.preprocess"),
    "preprocessing of a builder of this project": ({"dataset.preprocess": "cifar"}, "config.dataset.preprocess"),
    "split that does not exist": ({"dataset.validation_split": "valid"}, "config.dataset.validation_split"),
    "split without examples": ({"dataset.test_split": "test[500:]"}, "config.dataset.test_split"),
    "unknown model": ({"model.name": "alexnet"}, "config.model.name"),
    "unknown layer type": ({"layers.type": "sparse"}, "config.layers.type"),
    "zero batch size": ({"batch_size": 0}, "config.batch_size"),
    "negative steps": ({"num_steps": -3}, "config.num_steps"),
    "steps and epochs both": ({"num_epochs": 2.0}, "--config.num_epochs=0"),
    "negative epochs": ({"num_steps": 0, "num_epochs": -1.0}, "config.num_epochs"),
    "zero learning rate": ({"optimizer.learning_rate": 0.0}, "config.optimizer.learning_rate"),
    "unknown optimizer": ({"optimizer.name": "lion"}, "config.optimizer.name"),
    "unknown wandb mode": ({"wandb.mode": "cloud"}, "config.wandb.mode"),
    "unknown field": ({"batch_sise": 32}, "batch_sise"),
    "wrong value type": ({"batch_size": "many"}, "batch_size"),
    "unknown compute dtype": ({"compute_dtype": "float16"}, "config.compute_dtype"),
    "unknown schedule": ({"optimizer.schedule": "exponential"}, "config.optimizer.schedule"),
    "unknown weight decay choice": ({"optimizer.decay": "biases"}, "config.optimizer.decay"),
    "no accumulation steps": ({"optimizer.accumulate_steps": 0}, "config.optimizer.accumulate_steps"),
    "batch not divisible by accumulation": ({"optimizer.accumulate_steps": 3}, "config.batch_size"),
    "EMA decay of 1": ({"optimizer.ema_decay": 1.0}, "config.optimizer.ema_decay"),
    "profile beyond the run": ({"profile_steps": "15:30"}, "config.profile_steps"),
}


# Through the command line (flag parsing, and the printing of a config and a data error); the others call
# train.train in this process, whose error the command line prints as its one line.
COMMAND_LINE = {"unknown field", "wrong value type", "zero batch size", "dataset not prepared"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_value(case, tiny_data, existing_workdir):
  overrides, field = CASES[case]
  before = snapshot(existing_workdir)
  if case in COMMAND_LINE:
    result = run("train.py", "--config", SMOKE, "--workdir", str(existing_workdir),
                 overrides={**tiny_data, **overrides}, check=False)
    assert_one_line_error(result, field)
  else:
    config = fmnist_mlp_dense.get_config("smoke")
    config.update_from_flattened_dict({**tiny_data, **overrides})
    with pytest.raises((ConfigError, DataError)) as error:
      train.train(config, existing_workdir)
    assert field in str(error.value) and "\n" not in str(error.value), str(error.value)
  assert snapshot(existing_workdir) == before


def test_batch_not_divisible_by_devices(tiny_data, existing_workdir):
  result = run("train.py", "--config", SMOKE, "--workdir", str(existing_workdir),
               overrides={**tiny_data, "batch_size": 33},
               env=host_devices(2), check=False)
  assert_one_line_error(result, "config.batch_size")
  assert "2 devices" in result.stderr


def test_missing_data(tmp_path, existing_workdir):
  (tmp_path / "empty").mkdir()
  result = run("train.py", "--config", SMOKE, "--workdir", str(existing_workdir),
               overrides={"dataset.idx_dir": str(tmp_path / "empty"), "dataset.data_dir": str(tmp_path / "tfds")},
               check=False)
  assert_one_line_error(result, "config.dataset.idx_dir")
  assert "scripts/setup.sh" in result.stderr


def test_missing_config_file(existing_workdir):
  result = run("train.py", "--config", "configs/nope.py", "--workdir", str(existing_workdir), check=False)
  assert_one_line_error(result, "configs/nope.py")


def test_eval_of_a_folder_without_a_run(tmp_path):
  result = run("eval.py", "--workdir", str(tmp_path), check=False)
  assert_one_line_error(result, "config.json")


def test_a_workdir_that_is_a_file_is_told_to_pass_a_folder_not_that_it_resumes(tiny_data, tmp_path):
  workdir = tmp_path / "notes.txt"
  workdir.write_text("a file, not a run's folder")
  config = fmnist_mlp_dense.get_config("smoke")
  config.update_from_flattened_dict(tiny_data)
  with pytest.raises(ConfigError) as error:
    train.train(config, workdir)
  assert str(error.value) == f"--workdir {workdir} is a file; pass a folder (a new one, or a run's to resume it)"
  assert workdir.read_text() == "a file, not a run's folder"
