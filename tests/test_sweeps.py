"""Sweeps (sweep.py) and their reports (eval.py report): tiny N:M and Maestro
sweeps on the tiny data, run with 2 workers, restarted (finished runs skipped,
an interrupted one resumed, a finished sweep trains nothing), and reported."""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess

import pytest
from scipy import stats as scipy_stats

from experiment import metrics, report, sweeps
from experiment import workdir as workdir_lib
from tests.conftest import SUBPROCESS_TIMEOUT, assert_one_line_error, main_here, run, snapshot

SWEEP_CONFIG = """
from configs import common, {module}

def get_config(arg=None):
  c = {module}.get_config("smoke")
  c.dataset.idx_dir, c.dataset.data_dir = {idx_dir!r}, {data_dir!r}
  c.dataset.train_split, c.dataset.validation_split = "train[:224]", "train[224:]"
  c.log_every = 1
  return c

def get_sweep():
  return dict(seeds={seeds}, runs={runs})
"""
NM_RUNS = [dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
           dict(name="sdgf-stepwise_1of8", group="SDGF-stepwise",
                overrides={"nm.method": "sdgf", "nm.structure": "stepwise", "layers.n": 1, "layers.m": 8})]
MAESTRO_RUNS = [dict(name="dense", group="dense", overrides={"layers.type": "dense"}),
                dict(name="maestro", group="Maestro", overrides={"layers.rank_ratio": 0.25, "lowrank.shrink_every": 5,
                                                                    "lowrank.shrink_eps": 5.0})]


def _sweep_config(folder: pathlib.Path, tiny_data: dict, module: str, runs: list, seeds: tuple) -> str:
  path = folder / f"sweep_{module}.py"
  path.write_text(SWEEP_CONFIG.format(module=module, idx_dir=tiny_data["dataset.idx_dir"],
                                      data_dir=tiny_data["dataset.data_dir"], seeds=seeds, runs=runs))
  return str(path)


@pytest.fixture(scope="module")
def nm_sweep(tiny_data, tmp_path_factory):
  """A finished 2-run x 2-seed N:M sweep, run with 2 workers."""
  root = tmp_path_factory.mktemp("sweeps")
  config = _sweep_config(root, tiny_data, "fmnist_mlp_nm", NM_RUNS, (0, 1))
  folder = root / "nm"
  out = run("sweep.py", "--config", config, "--folder", str(folder), "--workers", "2")
  assert "0 of 4 runs finished; 4 to run with 2 worker(s)" in out.stdout
  return config, folder


def test_a_sweep_runs_every_run_as_a_plain_train_py_command(nm_sweep):
  config, folder = nm_sweep
  record = json.loads((folder / "sweep.json").read_text())
  assert [r["workdir"] for r in record["runs"]] == ["dense_s0", "dense_s1", "sdgf-stepwise_1of8_s0",
                                                    "sdgf-stepwise_1of8_s1"]
  for r in record["runs"]:
    assert sweeps.finished(folder / r["workdir"])
    saved = json.loads((folder / r["workdir"] / "config.json").read_text())
    assert saved["seed"] == r["seed"] and saved["layers"]["type"] == ("dense" if r["name"] == "dense" else "nm")
  sdgf = record["runs"][3]["command"]
  assert sdgf == (f"python train.py --config {config} --workdir {folder}/sdgf-stepwise_1of8_s1 "
                  f"--config.nm.method=sdgf --config.nm.structure=stepwise --config.layers.n=1 --config.layers.m=8 "
                  f"--config.seed=1")
  rows = metrics.read(folder / "sdgf-stepwise_1of8_s1" / "metrics.jsonl")
  assert {(r["nm/n"], r["nm/m"]) for r in rows if "nm/n" in r} >= {(7, 8), (1, 8)}  # It ran SDGF's frames.


def test_set_adds_a_field_to_every_run(nm_sweep):
  config, folder = nm_sweep
  out = run("sweep.py", "--config", config, "--folder", str(folder), "--list", "--set", "wandb.mode=online")
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 4 and all(l.startswith("finished") and "--config.wandb.mode=online --config.seed=" in l
                                 for l in lines)


def test_restarting_skips_finished_runs_and_resumes_an_interrupted_one(nm_sweep, tmp_path):
  config, original = nm_sweep
  folder = tmp_path / "nm"
  shutil.copytree(original, folder)
  before = snapshot(folder)
  out = main_here("sweep.py", "--config", config, "--folder", str(folder))
  assert "4 of 4 runs finished; 0 to run" in out.stdout
  after = snapshot(folder)
  record = pathlib.Path("sweep.json")  # Rewritten: it names this folder.
  assert {k: v for k, v in after.items() if k != record} == {k: v for k, v in before.items() if k != record}
  # Interrupted after its checkpoint at step 10: the last checkpoint and the rows after step 10 are gone.
  workdir = folder / "dense_s1"
  shutil.rmtree(workdir / "checkpoints" / "20")
  (workdir / "checkpoint_manifests" / "20.json").unlink()
  rows = metrics.read(workdir / "metrics.jsonl")
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 12))
  # As many workers as the first time, so the resumed run is single-threaded like the original (a run's float sums
  # depend on its thread count).
  out = run("sweep.py", "--config", config, "--folder", str(folder), "--workers", "2")
  assert "3 of 4 runs finished; 1 to run with 2 worker(s)" in out.stdout
  assert "Resumed from step 10" in (folder / "dense_s1.log").read_text()
  ours, theirs = metrics.read(workdir / "metrics.jsonl"), metrics.read(original / "dense_s1" / "metrics.jsonl")
  same = lambda r: {k: v for k, v in r.items() if not k.startswith(("compiles/", "memory/", "time/"))}
  assert list(map(same, ours)) == list(map(same, theirs))
  launches = workdir_lib.launches(workdir)  # The first start and the resume, each with its command and machine.
  assert [l["step"] for l in launches] == [0, 10]
  assert all(f"--workdir {folder}/dense_s1 " in l["command"] and "JAX" in l["machine"] for l in launches[1:])


def test_seeds_runs_only_the_chosen_seeds(nm_sweep, tmp_path):
  config, original = nm_sweep
  folder = tmp_path / "nm"
  shutil.copytree(original, folder)
  shutil.rmtree(folder / "dense_s1")  # Not run yet; --seeds=0 leaves it so.
  out = main_here("sweep.py", "--config", config, "--folder", str(folder), "--seeds", "0")
  assert "2 of 2 runs finished; 0 to run" in out.stdout and "3 of 4 runs finished (1 not chosen)" in out.stdout
  assert not (folder / "dense_s1").exists()


def test_emit_slurm_writes_an_array_job_of_the_unfinished_runs(nm_sweep, tmp_path):
  config, original = nm_sweep
  folder = tmp_path / "nm"
  shutil.copytree(original, folder)
  unfinished = ("dense_s1", "sdgf-stepwise_1of8_s0")
  for name in unfinished:
    shutil.rmtree(folder / name)
  unchanged = lambda: {k: v for k, v in snapshot(folder).items() if k.name not in ("sweep.json", "sweep.slurm")}
  before = unchanged()
  args = ("--config", config, "--folder", str(folder), "--set", "wandb.mode=disabled")
  out = main_here("sweep.py", *args, "--emit=slurm", "--slurm_args=--gres=gpu:1 --time=4:00:00")
  script = folder / "sweep.slurm"
  assert "a SLURM array job of 2 task(s)" in out.stdout and f"sbatch {script}" in out.stdout
  assert unchanged() == before  # Nothing trained. The script runs each unfinished run's command as sweep.json has it:
  text = script.read_text()
  commands = {r["workdir"]: r["command"] for r in json.loads((folder / "sweep.json").read_text())["runs"]}
  listed = [l.split(maxsplit=2)[-1] for l in main_here("sweep.py", *args, "--list").stdout.splitlines() if "to run" in l]
  tasks = re.findall(r"^  (\d+)\) exec (.*) >> (\S+)\.log 2>&1 ;;$", text, re.M)
  assert tasks == [(str(i), commands[name], f"{folder}/{name}") for i, name in enumerate(unfinished)]
  assert [c for _, c, _ in tasks] == listed and "--config.wandb.mode=disabled" in listed[0]
  assert re.search(r"#SBATCH --array=0-1\n.*#SBATCH --gres=gpu:1\n#SBATCH --time=4:00:00\n", text, re.S)
  subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "0"}, check=True, timeout=300)
  assert sweeps.finished(folder / "dense_s1") and "test accuracy" in (folder / "dense_s1.log").read_text()
  out = main_here("sweep.py", *args, "--emit=slurm")  # Again: the one run left.
  text = script.read_text()
  assert "a SLURM array job of 1 task(s)" in out.stdout and "#SBATCH --array=0-0\n" in text
  assert f"  0) exec {commands['sdgf-stepwise_1of8_s0']} >> " in text
  outside = {k: v for k, v in os.environ.items() if k != "SLURM_ARRAY_TASK_ID"}
  bad = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=outside, timeout=SUBPROCESS_TIMEOUT)
  assert bad.returncode == 2 and "error: SLURM_ARRAY_TASK_ID=: expected 0-0" in bad.stderr


def test_report_tables_and_plots_an_nm_sweep(nm_sweep, tmp_path):
  _, original = nm_sweep
  folder = tmp_path / "nm"
  shutil.copytree(original, folder)
  out = main_here("eval.py", "report", str(folder))
  text = (folder / "report.md").read_text()
  for name in ("dense", "sdgf-stepwise_1of8"):
    finals = [metrics.read(folder / f"{name}_s{s}" / "metrics.jsonl")[-1]["eval/accuracy"] for s in (0, 1)]
    expected = f"{100 * statistics.mean(finals):.2f} ± {100 * statistics.stdev(finals):.2f}"
    assert re.search(rf"\| {re.escape(name)} +\| [^|]+\| 2 +\| {re.escape(expected)}", text), (expected, text)
    assert expected in out.stdout
    method = "dense" if name == "dense" else "SDGF-stepwise"  # The table by N:M level: one column, 1:8.
    assert re.search(rf"\| {method} +\| {re.escape(expected)} \(2\) +\|\n", text), (expected, text)
  assert re.search(r"Machines \(each run.s launches.jsonl\): 4 runs on [^;]*JAX", text)
  assert "code " in text and "python sweep.py --config" in text and "python eval.py report" in text
  assert f"--workdir {original}/sdgf-stepwise_1of8_s0" in text  # Every run's command.
  finals = {name: [metrics.read(folder / f"{name}_s{s}" / "metrics.jsonl")[-1] for s in (0, 1)]
            for name in ("dense", "sdgf-stepwise_1of8")}
  diff, lo, hi = report.welch(*([100 * f["eval/accuracy"] for f in finals[name]] for name in ("sdgf-stepwise_1of8",
                                                                                             "dense")))
  assert re.search(r"\| SDGF-stepwise +\| sdgf-stepwise_1of8 +\| 2 +\|[^|]+\|[^|]+\|[^|]+\|[^|]+\| "  # val, test,
                   # held-out test, flip rate, FLOPs, Δ.
                   + re.escape(f"{statistics.mean(f['flops/total'] - f['nm/forward_flops_saved'] for f in finals['sdgf-stepwise_1of8']):.3g}") + r" +\| "
                   + re.escape(f"{diff:+.2f} ({lo:+.2f} to {hi:+.2f})"), text), text  # Chosen on validation.
  for plot in ("nm_levels.png", "flops.png", "flip_rates.png", "trajectories.png"):
    assert (folder / "plots" / plot).stat().st_size > 10_000
    assert f"(plots/{plot})" in text


@pytest.mark.slow  # Two more runs; eval.py's SVD baseline itself is tested in test_lowrank_train.
def test_report_of_a_low_rank_sweep_has_the_svd_baseline(tiny_data, tmp_path):
  config = _sweep_config(tmp_path, tiny_data, "fmnist_mlp_maestro", MAESTRO_RUNS, (0,))
  folder = tmp_path / "maestro"
  run("sweep.py", "--config", config, "--folder", str(folder), "--workers", "2")
  out = main_here("eval.py", "report", str(folder))
  text = (folder / "report.md").read_text()
  final = metrics.read(folder / "maestro_s0" / "metrics.jsonl")[-1]
  assert final["rank/fc1"] < 196  # It shrank (from a quarter of full rank), below where a dense kernel is cheaper.
  baseline = re.search(r"SVD of dense \(dense s0\), at each low-rank run's final ranks: ([\d,]+) params ([\d.]+)%", text)
  assert baseline, text
  assert int(baseline[1].replace(",", "")) == int(final["params/effective"])  # The same size as the Maestro run.
  assert 0 < float(baseline[2]) <= 100
  assert (folder / "plots" / "params.png").stat().st_size > 10_000 and "Wrote" in out.stdout
  shutil.rmtree(folder / "dense_s0" / "checkpoints")  # E.g. a sweep copied without its checkpoints.
  out = main_here("eval.py", "report", str(folder))
  text = (folder / "report.md").read_text()
  assert f"No SVD baseline: {folder}/dense_s0 has no whole checkpoint" in text and "SVD of dense" not in text
  assert re.search(r"\| maestro +\| Maestro", text)  # The rest of the report is there.


def test_bad_sweep_input_is_one_line(nm_sweep, tmp_path):
  config, _ = nm_sweep
  for args, needle in ((["--config", "configs/fmnist_mlp_dense.py"], "declares no sweep"),
                       (["--config", config, "--only", "nope"], "no runs named ['nope']"),
                       (["--config", config, "--seeds", "0,5"], "--seeds: 5 is not one of the sweep's seeds [0, 1]"),
                       (["--config", config, "--workers", "0"], "--workers=0"),
                       (["--config", config, "--set", "wandb.mode"], "--set=wandb.mode: expected FIELD=VALUE"),
                       (["--config", config, "--emit=pbs"], "--emit=pbs: expected slurm"),
                       (["--config", config, "--slurm_args=--gres=gpu:1"], "--slurm_args: only with --emit=slurm"),
                       (["--config", config, "--emit=slurm", "--slurm_args=-t 4:00:00"], "'4:00:00' is not an sbatch")):
    # The first through the command line (how its line is printed), the others in this process.
    command = ("sweep.py", *args, "--folder", str(tmp_path / "x"))
    out = run(*command, check=False) if "declares no sweep" in needle else main_here(*command, check=False)
    assert_one_line_error(out, needle)
    assert not (tmp_path / "x").exists()
  assert_one_line_error(main_here("eval.py", "report", str(tmp_path / "none"), check=False), "has no sweep.json")


def test_text_sweeps_are_plotted_in_bits_per_char(tmp_path):
  config = {"dataset": {"name": "austen"}, "model": {"name": "lm"}, "layers": {"type": "nm", "n": 1, "m": 8}}
  results = [report.Result("ste_1of8", "STE", seed, tmp_path, config,
                           [{"step": 10, "eval/accuracy": 0.5, "eval/bits_per_char": 2.0 + seed, "nm/n": 1, "nm/m": 8}])
             for seed in (0, 1)]
  key = report.metric(results)
  assert key == "eval/bits_per_char" and report.metric([]) == "eval/accuracy"
  assert report.plot_nm(results, tmp_path, key).stat().st_size > 10_000
  assert report.table(results)[0]["bits_per_char"] == "2.5000 ± 0.7071"


def test_a_sweep_without_nm_runs_has_no_nm_level_table(tmp_path):
  dense = report.Result("dense", "dense", 0, tmp_path, {"layers": {"type": "dense"}}, [{"step": 1, "eval/accuracy": 0.9}])
  lowrank = dataclasses.replace(dense, name="maestro", group="Maestro", config={"layers": {"type": "lowrank"}},
                                rows=[{"step": 1, "eval/accuracy": 0.9, "rank/fc1": 8}])
  assert report.nm_table([dense, lowrank], "eval/accuracy") == []
  nm = dataclasses.replace(dense, name="ste_1of8", group="STE", config={"layers": {"type": "nm", "n": 1, "m": 8}},
                           rows=[{"step": 1, "eval/accuracy": 0.9, "nm/n": 1, "nm/m": 8}])
  assert [r["method"] for r in report.nm_table([dense, nm], "eval/accuracy")] == ["dense", "STE"]


def test_welch_interval_matches_scipy():
  a, b = [86.1, 86.5, 85.9], [85.2, 85.6, 85.1, 85.9]
  diff, lo, hi = report.welch(a, b)
  expected = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert diff == pytest.approx(statistics.mean(a) - statistics.mean(b))
  assert (lo, hi) == pytest.approx((expected.low, expected.high))
  assert report.welch([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.5, 0.5)  # No spread: no width.
  diff, lo, hi = report.welch([1.0], [0.5, 0.7])
  assert diff == pytest.approx(0.4) and lo != lo and hi != hi  # One seed: no interval (nan).


def test_each_group_is_chosen_on_seed_0s_validation_and_compared_on_the_seeds_held_out(tmp_path):
  def result(name, group, seed, val, test, key="accuracy"):
    return report.Result(name, group, seed, tmp_path, {"layers": {"type": "nm"}},
                         [{"step": 1, f"val/{key}": val, f"eval/{key}": test}])
  results = [result("lam_1", "SR-STE", 0, 0.80, 0.90), result("lam_1", "SR-STE", 1, 0.99, 0.90),  # Best on test
             # and on seed 1's validation, not on seed 0's: seed 0 chooses.
             result("lam_6", "SR-STE", 0, 0.85, 0.95), result("lam_6", "SR-STE", 1, 0.70, 0.83),
             result("lam_6", "SR-STE", 2, 0.70, 0.85),
             *(result("ste", "STE", seed, 0.82, test) for seed, test in ((0, 0.82), (1, 0.80), (2, 0.81)))]
  chosen = report.chosen_on_validation(results, "eval/accuracy")
  assert {g: ([r.seed for r in c.runs], c.runs[0].name, sorted(c.by)) for g, c in chosen.items()} == {
      "SR-STE": ([0, 1, 2], "lam_6", [0]), "STE": ([0, 1, 2], "ste", [])}  # STE: nothing to choose.
  rows = {row["group"]: row for row in report.chosen_table(results, "eval/accuracy", "STE")}
  assert rows["SR-STE"]["test"] == "87.67 ± 6.43" and rows["SR-STE"]["test, held out"] == "84.00 ± 1.41 (2)"
  diff, lo, hi = report.welch([83.0, 85.0], [82.0, 80.0, 81.0])  # Seed 0's 95%, which chose, is left out.
  assert rows["SR-STE"]["Δ held-out test vs STE (95% CI)"] == f"{diff:+.2f} ({lo:+.2f} to {hi:+.2f})"
  assert rows["STE"]["Δ held-out test vs STE (95% CI)"] == "—" and rows["STE"]["test, held out"] == "81.00 ± 1.00"
  text = [result("a", "g", 0, 1.7, 1.6, "bits_per_char"), result("b", "g", 0, 1.5, 1.9, "bits_per_char")]
  assert report.chosen_on_validation(text, "eval/bits_per_char")["g"].runs[0].name == "b"  # Lower is better.
  apart = [result("a", "g", 0, 0.1, 0.9), result("b", "g", 1, 0.9, 0.1), result("b", "g", 2, 0.8, 0.1)]
  assert report.chosen_on_validation(apart, "eval/accuracy")["g"].runs[0].name == "b"  # No shared seed: their own.


def test_a_frozen_mask_is_reported_and_never_chosen_while_another_moves(tmp_path):
  def result(name, val, flips):
    rows = [{"step": step, "nm/n": 1, "nm/flip_rate": f} for step, f in zip((25, 50, 75, 100), flips)]
    config = {"layers": {"type": "nm", "n": 1, "m": 16}, "dataset": {"name": "fashion_mnist"}, "model": {"name": "vit"}}
    return report.Result(name, "SR-STE", 0, tmp_path, config,
                         rows + [{"step": 100, "nm/n": 1, "val/accuracy": val, "eval/accuracy": val}])
  frozen, moving = result("lam_100", 0.9, (1e-2, 0.0, 0.0, 0.0)), result("lam_1", 0.8, (1e-2, 1e-3, 1e-4, 0.0))
  assert frozen.frozen and not moving.frozen and frozen.flip_rate == pytest.approx(2.5e-3)
  assert report.chosen_on_validation([frozen, moving], "eval/accuracy")["SR-STE"].runs[0].name == "lam_1"
  assert report.chosen_on_validation([frozen], "eval/accuracy")["SR-STE"].runs[0].name == "lam_100"  # All frozen.
  assert report.table([frozen])[0]["flip rate"] == "2.50e-03 (frozen)"
  assert report.table([moving])[0]["flip rate"] == "2.78e-03"
  assert report.plot_flip_rates([frozen, moving], tmp_path).stat().st_size > 10_000


def test_a_group_at_several_nm_levels_is_chosen_and_compared_at_each(tmp_path):
  def result(name, group, seed, m, val, test, sparsity=0.9):
    return report.Result(name, group, seed, tmp_path, {"layers": {"type": "nm", "n": 1, "m": m}},
                         [{"step": 1, "nm/n": 1, "val/accuracy": val, "eval/accuracy": test,
                           "sparsity/total": sparsity}])
  better = {(20, 8): 0.06, (5, 16): 0.05}  # Validation prefers k·T 20 at 1:8, 5 at 1:16; test is val − 0.01.
  results = [result(f"mdgf_kt{kt}_1of{m}", "MDGF", seed, m, val + better.get((kt, m), 0), val - 0.01)
             for kt in (5, 20) for m in (8, 16) for seed, val in ((0, 0.80), (1, 0.82), (2, 0.83))]
  results += [result(f"srste_1of{m}", "SR-STE", seed, m, 0.79, test - 0.03 * (m == 16)) for m in (8, 16)
              for seed, test in ((0, 0.80), (1, 0.81), (2, 0.79))]
  chosen = report.chosen_on_validation(results, "eval/accuracy")  # One choice per level, not 1:8 for the group.
  assert {g: c.runs[0].name for g, c in chosen.items()} == {
      "MDGF 1:8": "mdgf_kt20_1of8", "MDGF 1:16": "mdgf_kt5_1of16", "SR-STE 1:8": "srste_1of8",
      "SR-STE 1:16": "srste_1of16"}
  column = "Δ held-out test vs SR-STE (95% CI)"
  rows = {row["group"]: row for row in report.chosen_table(results, "eval/accuracy", "SR-STE")}
  diff, lo, hi = report.welch([81.0, 82.0], [77.0, 78.0, 76.0])  # MDGF 1:16 against SR-STE at 1:16, not 1:8.
  assert rows["MDGF 1:16"][column] == f"{diff:+.2f} ({lo:+.2f} to {hi:+.2f})"
  assert rows["SR-STE 1:8"][column] == "—"
  named = [dataclasses.replace(r, group=f"{r.group} 1:{r.config['layers']['m']}") for r in results]  # "SR-STE 1:8".
  assert {"SR-STE", "SR-STE 1:8", "MDGF 1:16"} <= report.reference_names(named, "eval/accuracy")
  rows = {row["group"]: row for row in report.chosen_table(named, "eval/accuracy", "SR-STE")}
  assert rows["MDGF 1:16"][column] == f"{diff:+.2f} ({lo:+.2f} to {hi:+.2f})"
  only_8 = [r for r in results if r.group == "MDGF" or r.config["layers"]["m"] == 8]  # No SR-STE at 1:16.
  rows = {row["group"]: row for row in report.chosen_table(only_8, "eval/accuracy", "SR-STE")}
  assert rows["MDGF 1:16"][column] == "no reference at its level"
  fewer = [dataclasses.replace(r, group="SR-STE, MLP only", rows=[{**r.final, "sparsity/total": 0.5}])
           for r in results if r.group == "SR-STE" and r.config["layers"]["m"] == 16]  # Same N:M, fewer layers.
  rows = {row["group"]: row for row in report.chosen_table(results + fewer, "eval/accuracy", "SR-STE")}
  assert rows["SR-STE, MLP only"][column] == "no reference at its level"
  dense = [report.Result("dense", "dense", seed, tmp_path, {"layers": {"type": "dense"}},
                         [{"step": 1, "val/accuracy": 0.9, "eval/accuracy": test}]) for seed, test in ((0, .9), (1, .91))]
  rows = {row["group"]: row for row in report.chosen_table(results + dense, "eval/accuracy", "dense")}
  diff, lo, hi = report.welch([81.0, 82.0], [90.0, 91.0])  # Dense is every N:M row's reference, at any level.
  assert rows["MDGF 1:16"]["Δ held-out test vs dense (95% CI)"] == f"{diff:+.2f} ({lo:+.2f} to {hi:+.2f})"
  with pytest.raises(sweeps.ConfigError, match="'MDGF 1:8'"):  # A group of that name beside the split one.
    report.chosen_on_validation(results + [dataclasses.replace(results[0], group="MDGF 1:8")], "eval/accuracy")


def test_a_config_may_declare_several_named_sweeps(tmp_path):
  path = tmp_path / "named.py"
  path.write_text("def get_config(arg=None):\n  from configs import fmnist_mlp_nm\n  return fmnist_mlp_nm.get_config(arg)\n"
                  "def get_sweep(name='small'):\n  arg = {'small': '', 'smoke': 'smoke', 'bad': 'nope=1'}[name]\n"
                  "  return dict(seeds=(0,), runs=[dict(name=name, arg=arg, overrides={'batch_size': 8})])\n")
  assert [r.name for r in sweeps.expand(str(path), tmp_path)] == ["small"]
  runs = sweeps.expand(f"{path}:smoke", tmp_path)  # Its one run has a config argument.
  assert [r.name for r in runs] == ["smoke"] and runs[0].command[3] == f"{path}:smoke"
  with pytest.raises(sweeps.ConfigError, match="run bad's arg='nope=1'"):
    sweeps.expand(f"{path}:bad", tmp_path)


NAMED_SWEEPS = {"fmnist_vit_nm.py": ("srste", "mdgf_decay", "equal_flops", "layers"),
                "fmnist_mlp_maestro.py": ("controlled",), "fmnist_cnn_maestro.py": ("controlled",)}
DECLARING = sorted(p.name for p in (sweeps.ROOT / "configs").glob("*.py") if "def get_sweep" in p.read_text())


@pytest.mark.parametrize("config", [*DECLARING, *(f"{f}:{n}" for f, names in NAMED_SWEEPS.items() for n in names)])
def test_every_sweep_the_configs_declare_names_real_fields(config, tmp_path):
  """Every run of every declared sweep (the default and the named ones) sets fields its config has, with values
  of their types (expand checks them), so a sweep run later does not stop at a misspelt override."""
  runs = sweeps.expand(f"configs/{config}", tmp_path)
  assert runs and len({r.workdir for r in runs}) == len(runs)
