"""`lowrank` and `sparsity` are libraries: they import nothing of the trainer, and a loop of one's own trains with
them (examples/custom_loop.py); the hooks they make satisfy the trainer's typed contract (`methods.Hooks`). The
project's packages import only downwards (`LAYERS`), so none is in a circle."""

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

from experiment import build, methods
from tests.conftest import ROOT, SUBPROCESS_TIMEOUT

# Each package may import the packages below it, never one beside or above it.
LAYERS = [{"lowrank"}, {"sparsity"}, {"models", "data"}, {"experiment"}, {"configs"},  # sparsity/lowrank.py: N:M LoD.
          {"train", "eval", "sweep", "benchmarks", "examples"}]
LEVEL = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def test_the_libraries_import_nothing_of_the_trainer():
  loaded = subprocess.run([sys.executable, "-c", "import sys, lowrank, sparsity; print(' '.join(sys.modules))"],
                          cwd=ROOT, capture_output=True, text=True, check=True, timeout=SUBPROCESS_TIMEOUT).stdout.split()
  trainer = {"experiment", "data", "models", "configs", "ml_collections", "tensorflow_datasets", "grain", "orbax"}
  assert not {m.split(".")[0] for m in loaded} & trainer
  assert {"lowrank.maestro", "sparsity.training", "flax", "optax"} <= set(loaded)


def project_imports(path: pathlib.Path) -> set[str]:
  """The project's packages (and top-level modules) that the file imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] \
        if isinstance(node, ast.ImportFrom) and not node.level else []
    found |= {n.split(".")[0] for n in names if n.split(".")[0] in LEVEL}
  return found


def test_packages_import_only_downwards():
  wrong = []
  for path in sorted(ROOT.glob("*.py")) + sorted(p for package in LEVEL for p in (ROOT / package).glob("**/*.py")):
    package = path.relative_to(ROOT).parts[0].removesuffix(".py")
    if package not in LEVEL:
      continue
    wrong += [f"{path.relative_to(ROOT)} imports {other}" for other in project_imports(path)
              if other != package and LEVEL[other] >= LEVEL[package]]
  assert not wrong


def test_a_custom_loop_trains_maestro_with_shrinking_and_nm_with_mdgf():
  sys.path.insert(0, str(ROOT / "examples"))
  try:
    import custom_loop
  finally:
    sys.path.pop(0)
  result = custom_loop.main(steps=300)
  assert result["maestro"] > 0.6 and result["nm"] > 0.4  # Ten classes: chance is 0.1.
  assert result["ranks"]["fc1"] < 64  # Shrunk: components really removed.
  assert result["kept"] == {"fc1": 1 / 8, "fc2": 1 / 8}  # Hard 1:8 masks at the end.


@pytest.mark.parametrize("config", ["fmnist_mlp_dense", "fmnist_mlp_maestro", "fmnist_mlp_nm", "fmnist_mlp_cuttlefish",
                                    "fmnist_mlp_lowrank_nm"])
def test_every_methods_hooks_satisfy_the_typed_contract(config):
  """The hooks each registered method makes satisfy `methods.Hooks` (the libraries' classes structurally, without
  importing it); the N:M rule, which runs inside Maestro's passes, `InnerHooks` too."""
  loaded = importlib.import_module(f"configs.{config}").get_config("smoke")
  hooks = methods.build(loaded, build.model(loaded, {}))
  assert isinstance(hooks, methods.Hooks), type(hooks)
  parts = hooks.parts if isinstance(hooks, methods.Composed) else {"": hooks}
  assert all(isinstance(part, methods.Hooks) for part in parts.values())
  if loaded.layers.type == "nm":  # Inside Maestro's passes in low rank + N:M.
    assert isinstance(hooks, methods.InnerHooks)
  assert set(methods.REGISTRY) == {"dense", "lowrank", "nm", "cuttlefish", "lowrank+nm"}  # Each one above.


def test_a_part_that_cannot_run_inside_another_is_refused():
  assert isinstance(methods.Method(), methods.InnerHooks)  # Plain training runs anywhere.
  with pytest.raises(TypeError, match=r"\['inner'\] cannot run inside another method's passes"):
    methods.Composed({"outer": methods.Method(), "inner": _OuterOnly()})


class _OuterOnly:
  """The hooks of a method that only runs on its own (lowrank.Maestro's kind): no forward_pass or penalty."""
  observes = updates_after = False
  loss = observe = after_update = host_update_due = host_update = state = restore = metrics = None
