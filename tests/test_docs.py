"""The docs say what the code does: every config field the field tables of docs/ name exists in a config of its
method, the choices docs/training.md lists are the ones the config checks accept, and the run counts the configs'
docstrings give are those of their sweeps."""

import importlib
import pathlib
import re

import pytest

from configs import fmnist_mlp_cuttlefish, fmnist_mlp_maestro, fmnist_mlp_nm
from experiment import build, sweeps
from tests.conftest import ROOT

# A config that has every field of each method's docs page.
CONFIGS = {"maestro.md": [fmnist_mlp_maestro, fmnist_mlp_cuttlefish], "nm_sparsity.md": [fmnist_mlp_nm]}


def table_fields(page: str) -> list[str]:
  """The fields named in the first column of the page's `| field | meaning |` tables (`a.b` or `a.b`, `a.c`)."""
  text = (ROOT / "docs" / page).read_text()
  tables = re.findall(r"^\| field \| meaning \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", text, re.M)
  assert tables, f"no field table in docs/{page}"
  return [field for table in tables for row in table.splitlines()
          for field in re.findall(r"`([a-z_]+\.[a-z_.]+)`", row.split("|")[1])]


@pytest.mark.parametrize("page", sorted(CONFIGS))
def test_every_field_in_a_docs_table_exists(page):
  configs = [module.get_config() for module in CONFIGS[page]]
  fields = table_fields(page)
  assert len(fields) > 5
  missing = [f for f in fields if not any(_has(config, f) for config in configs)]
  assert not missing, f"docs/{page} names fields no config has: {missing}"


def _has(config, field: str) -> bool:
  node = config
  for key in field.split("."):
    if key not in node:
      return False
    node = node[key]
  return True


def test_the_optimizer_choices_in_training_md_are_the_accepted_ones():
  text = (ROOT / "docs" / "training.md").read_text()
  schedules = re.search(r"`schedule` after a\s+linear warm-up of `warmup_steps`: (.*?)\(constant, then", text, re.S)
  listed = {s.strip() for s in schedules.group(1).split("|")} | {"step"}
  assert listed == build.SCHEDULES
  assert re.search(r"\| step \(×0\.1 at each fraction `step_at`", text)
  assert {"adamw", "sgd"} == build.OPTIMIZERS and "`name` adamw | sgd" in text


def _docstring(config_file: pathlib.Path) -> str:
  return importlib.import_module(f"configs.{config_file.stem}").__doc__ or ""


# The sweep configs whose docstrings say how many runs their sweep has.
COUNTED = sorted(p.name for p in (ROOT / "configs").glob("*.py")
                 if "def get_sweep" in p.read_text() and re.search(r"\d+ runs", _docstring(p)))


@pytest.mark.parametrize("name", COUNTED)
def test_the_run_count_a_config_docstring_gives_is_its_sweeps(name, tmp_path):
  counts = [int(n) for n in re.findall(r"(\d+) runs", _docstring(ROOT / "configs" / name))]
  runs = sweeps.expand(f"configs/{name}", tmp_path)
  assert len(runs) in counts, f"configs/{name}: its sweep has {len(runs)} runs; its docstring says {counts}"
