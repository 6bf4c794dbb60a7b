"""The character-level language model: the Austen TFDS builder (from R
lazy-load files the test writes), bits per character, sampling, and dense,
Maestro and N:M training of the LM through train.py."""

import json
import math

import numpy as np
import pytest

from data import austen
from experiment import metrics
from tests import rdata_files
from tests.conftest import assert_one_line_error, main_here, run, train_here

WORDS = ("the", "miss", "bennet", "said", "of", "and", "a", "very", "good", "humour", "Emma", "Darcy", "was", "not")


def _novels(seed: int = 0, lines: int = 250) -> dict[str, list[str]]:
  """Six short "novels" of random sentences (ASCII and a £)."""
  rng = np.random.default_rng(seed)
  sentence = lambda: " ".join(rng.choice(WORDS, rng.integers(3, 9))).capitalize() + rng.choice([".", ",", "!", " £5."])
  return {name: [sentence() if rng.random() > 0.1 else "" for _ in range(lines)] for name in austen.NOVELS}


@pytest.fixture(scope="module")
def tiny_austen(tmp_path_factory):
  """Config overrides that point the LM configs at a tiny Austen, prepared once, and the novels' text."""
  root = tmp_path_factory.mktemp("tiny_austen")
  novels = _novels()
  rdata_files.write(root / "rdata", novels)
  overrides = {"dataset.rdata_dir": str(root / "rdata"), "dataset.data_dir": str(root / "tfds")}
  austen.load("train", data_dir=overrides["dataset.data_dir"], rdata_dir=overrides["dataset.rdata_dir"])
  return overrides, "\n".join("\n".join(novels[name]) for name in austen.NOVELS)


def test_builder_splits_the_text_90_5_5_into_windows(tiny_austen):
  overrides, text = tiny_austen
  ids = austen.encode(text)
  assert austen.decode(ids) == text
  for split, (a, b) in austen.SPLITS.items():
    source = austen.load(split, data_dir=overrides["dataset.data_dir"], rdata_dir=overrides["dataset.rdata_dir"])
    part = ids[int(a * len(ids)):int(b * len(ids))]
    assert len(source) == (len(part) - 1) // austen.WINDOW > 0
    for i in (0, len(source) - 1):
      np.testing.assert_array_equal(source[i]["text"], part[i * austen.WINDOW:(i + 1) * austen.WINDOW + 1])


def test_builder_errors_name_the_folder_or_the_character(tmp_path):
  with pytest.raises(austen.DataError, match="rdata_dir"):
    austen.load("train", data_dir=str(tmp_path / "tfds"), rdata_dir=str(tmp_path / "missing"))
  with pytest.raises(austen.DataError, match="'é'"):
    austen.encode("café")


def test_lm_smoke_learns_and_logs_bits_per_char(tiny_austen, tmp_path):
  overrides, _ = tiny_austen
  final = train_here("configs/austen_lm_dense.py:smoke", tmp_path / "lm", overrides)
  rows = metrics.read(tmp_path / "lm" / "metrics.jsonl")
  assert final["eval/bits_per_char"] == pytest.approx(final["eval/loss"] / math.log(2))
  evals = {r["step"]: r["eval/bits_per_char"] for r in rows if "eval/bits_per_char" in r}
  assert list(evals) == [10, 20] and evals[20] < evals[10]  # It learns.
  assert final["eval/bits_per_char"] < math.log2(len(austen.VOCAB))  # Better than uniform over the vocabulary.


@pytest.mark.slow  # The smoke above trains it in this process; this one runs the command lines and samples.
def test_dense_lm_trains_reports_bits_per_char_and_samples(tiny_austen, tmp_path):
  overrides, _ = tiny_austen
  workdir = tmp_path / "lm"
  out = run("train.py", "--config", "configs/austen_lm_dense.py:smoke", "--workdir", str(workdir),
            overrides={**overrides, "log_every": 3})  # Evaluations (every 10 steps) are logged off the log grid too.
  final = metrics.read(workdir / "metrics.jsonl")[-1]
  assert "test bits/char" in out.stdout
  evaluated = main_here("eval.py", "--workdir", str(workdir))  # The restored checkpoint: the same number, by its name.
  assert json.loads((workdir / "eval.json").read_text())["eval/bits_per_char"] == pytest.approx(
      final["eval/bits_per_char"], rel=1e-5)
  assert "test bits/char" in evaluated.stdout and "test accuracy" not in evaluated.stdout
  sample = main_here("eval.py", "--workdir", str(workdir), "--sample=Miss Bennet", "--sample_length=60")
  text = sample.stdout.removesuffix("\n")
  assert text.startswith("Miss Bennet") and len(text) == len("Miss Bennet") + 60
  again = main_here("eval.py", "--workdir", str(workdir), "--sample=Miss Bennet", "--sample_length=60")
  assert again.stdout == sample.stdout  # The same seed gives the same text.
  assert_one_line_error(main_here("eval.py", "--workdir", str(workdir), "--sample=café", check=False), "'é'")


@pytest.mark.slow  # A plain error path; it needs a whole (image) run to restore.
def test_sampling_needs_a_language_model(tiny_data, tmp_path):
  run("train.py", "--config", "configs/fmnist_mlp_dense.py:smoke", "--workdir", str(tmp_path / "mlp"),
      overrides={**tiny_data, "num_steps": 2})
  assert_one_line_error(main_here("eval.py", "--workdir", str(tmp_path / "mlp"), "--sample=Hi", check=False), "--sample")


@pytest.mark.slow  # The layer factory's types on the LM are also checked in test_models (without training).
@pytest.mark.parametrize("config,extra", [
    ("configs/austen_lm_maestro.py:smoke", {"lowrank.shrink_every": 5, "lowrank.shrink_eps": 0.5}),
    ("configs/austen_lm_nm.py:smoke,method=mdgf,decay=exp,n=1,m=8", {}),
])
def test_maestro_and_nm_apply_to_the_lm(config, extra, tiny_austen, tmp_path):
  overrides, _ = tiny_austen
  workdir = tmp_path / "run"
  run("train.py", "--config", config, "--workdir", str(workdir), overrides={**overrides, "log_every": 1, **extra})
  rows = metrics.read(workdir / "metrics.jsonl")
  saved = json.loads((workdir / "config.json").read_text())
  if saved["layers"]["type"] == "lowrank":
    ranks = [r["rank/block0/attn/query"] for r in rows if "rank/block0/attn/query" in r]
    assert ranks[-1] < ranks[0] == 64  # Shrunk from full rank (the smoke model's width), during training.
    out = main_here("eval.py", "--workdir", str(workdir), "--rank_fractions=1,0.5")  # Cut in bits/char, the LM's metric.
    cuts = json.loads((workdir / "eval.json").read_text())["rank_sweep"]
    assert cuts[0]["bits_per_char"] == pytest.approx(rows[-1]["eval/bits_per_char"], rel=1e-5)
    assert cuts[1]["bits_per_char"] == pytest.approx(cuts[1]["loss"] / math.log(2)) and "test bits/char" in out.stdout
  else:
    assert rows[-1]["sparsity/block0/mlp/fc2"] == pytest.approx(7 / 8) and rows[-1]["nm/alpha"] < 0.1
  assert math.isfinite(rows[-1]["eval/bits_per_char"])
