"""What the plots of a run (experiment/plots.py) and of a sweep report (experiment/report.py) draw, on
made-up metrics: which curve is on which panel, its label, error bars where there are seeds, steps for
ranks and sparsity, and titles that name the data, the model and the seeds."""

import json
import pathlib

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from experiment import methods, plots, report
from experiment.plots import pyplot

MLP = {"dataset": {"name": "fashion_mnist"}, "model": {"name": "mlp"}}
MAESTRO = {**MLP, "layers": {"type": "lowrank"}, "lowrank": {"distill": True, "group_lasso": 1e-4}}
NM = {**MLP, "layers": {"type": "nm", "n": 1, "m": 8}}


@pytest.fixture
def figures(monkeypatch) -> list:
  """The figures the plotting functions save, kept open to inspect."""
  saved = []

  def save(fig, workdir, name):
    fig.tight_layout()  # What plots.save does before writing: labels must still fit.
    saved.append(fig)
    return pathlib.Path(workdir) / "plots" / name

  monkeypatch.setattr(plots, "save", save)
  yield saved
  pyplot().close("all")


def workdir(tmp_path: pathlib.Path, config: dict, rows: list[dict]) -> pathlib.Path:
  (tmp_path / "config.json").write_text(json.dumps(config))
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return tmp_path


def lines(ax) -> dict[str, object]:
  return {line.get_label(): line for line in ax.get_lines()}


def assert_labelled(fig) -> None:
  for ax in fig.axes:
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), ax


def error_bars(ax) -> list[int]:
  """The number of error bars of each errorbar call on `ax`."""
  return [len(c.lines[2][0].get_segments()) for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_training_objective_and_test_cross_entropy_are_on_separate_labelled_panels(tmp_path, figures):
  rows = [{"step": s, "train/loss": 6.3 - s / 10, "train/accuracy": 0.5 + s / 100} for s in (10, 20, 30)]
  for r, (test, ema) in zip(rows[1:], ((1.0, 0.9), (0.8, 0.7))):
    r |= {"eval/loss": test, "eval/accuracy": 0.8, "eval_ema/loss": ema, "eval_ema/accuracy": 0.81,
          "val/loss": test + 0.05, "val/accuracy": 0.79}
  plots.training_curves(workdir(tmp_path, MAESTRO, rows), MAESTRO, methods.objective(MAESTRO))
  (fig,) = figures
  objective, test_loss, accuracy = fig.axes
  assert_labelled(fig)
  assert fig.get_suptitle() == f"Fashion-MNIST · MLP · {tmp_path.name}"
  assert "cross-entropy + distillation + penalty" in objective.get_ylabel()
  assert list(objective.get_lines()[0].get_ydata()) == [r["train/loss"] for r in rows]
  assert test_loss.get_ylabel() == "cross-entropy (nats)"
  curves = lines(test_loss)
  assert set(curves) == {"validation", "test", "test, EMA of parameters"}
  assert list(curves["test"].get_ydata()) == [1.0, 0.8]
  np.testing.assert_allclose(curves["validation"].get_ydata(), [1.05, 0.85])
  assert list(curves["test, EMA of parameters"].get_ydata()) == [0.9, 0.7]
  assert set(lines(accuracy)) == {"training batches", "validation", "test", "test, EMA of parameters"}
  assert list(lines(accuracy)["test"].get_ydata()) == [80, 80]  # In %.

  dense = {**MLP, "layers": {"type": "dense"}}
  plots.training_curves(workdir(tmp_path, dense, [{k: v for k, v in r.items() if "ema" not in k} for r in rows]), dense, [])
  assert figures[1].axes[0].get_ylabel().endswith("(cross-entropy)")
  assert set(lines(figures[1].axes[1])) == {"validation", "test"}  # No EMA kept, none drawn.


def test_rank_and_sparsity_trajectories_of_a_run_are_steps(tmp_path, figures):
  rows = [{"step": s, "rank/fc1": r, "rank/fc2": 2 * r, "params/effective": 1000 * r} for s, r in ((5, 8), (10, 6))]
  plots.ranks(workdir(tmp_path, MAESTRO, rows), MAESTRO)
  nm = [{"step": s, "sparsity/fc1": 1 - n / 8, "sparsity/total": 0.9 * (1 - n / 8), "nm/alpha": 0.5, "nm/n": n,
         "nm/m": 8, "nm/flip_rate": 0.1, "nm/grad_norm_kept": 1.0, "nm/grad_norm_pruned": 0.5, "eval/accuracy": 0.7}
        for s, n in ((5, 4), (10, 1))]
  plots.sparsity(workdir(tmp_path, NM, nm), NM)
  ranks, sparsity = figures
  for fig in figures:
    assert_labelled(fig)
    assert all(ax.get_xlabel() == "step (optimizer updates)" for ax in fig.axes)
  assert ranks.axes[0].get_ylabel() == "kept rank (components)"
  assert all(line.get_drawstyle() == "steps-post" for ax in ranks.axes for line in ax.get_lines())
  assert sparsity.axes[0].get_ylabel() == "sparsity (fraction of weights pruned)"
  assert all(line.get_drawstyle() == "steps-post" for i in (0, 2) for line in sparsity.axes[i].get_lines())


def test_rank_sweep_curves_are_sorted_by_size(tmp_path, figures):
  sweep = [{"params": p, "macs": 2 * p, "accuracy": a, "svd_accuracy": a - 0.1} for p, a in ((300, 0.9), (100, 0.7),
                                                                                              (200, 0.8))]
  plots.rank_sweep(workdir(tmp_path, MLP, []), MLP, sweep)
  (fig,) = figures
  for ax in fig.axes:
    assert ax.get_xlabel() and ax.get_ylabel() == "test accuracy (%)"
    for line in ax.get_lines():
      assert list(line.get_xdata()) == sorted(line.get_xdata())


def logged_by(config: dict) -> dict:
  """What a run of `config` logs that tells the report its kind: ranks, or an N:M pattern."""
  layers = config["layers"]
  return {"lowrank": {"rank/fc1": 8}, "nm": {"nm/n": layers.get("n"), "nm/m": layers.get("m")}}.get(layers["type"], {})


def result(name: str, group: str, seed: int, config: dict, accuracy: float, params: float = 1000.0) -> report.Result:
  return report.Result(name, group, seed, pathlib.Path(name), config,
                       [{"step": 10, "eval/accuracy": accuracy, "params/effective": params, **logged_by(config)}])


def lowrank_sweep(seeds: tuple[int, ...], dense_seeds: tuple[int, ...]) -> list[report.Result]:
  runs = [result("dense", "dense", s, {**MLP, "layers": {"type": "dense"}}, 0.9 + s / 100, 5000) for s in dense_seeds]
  for name, params in (("maestro_a", 3000), ("maestro_b", 1000)):
    runs += [result(name, "Maestro", s, MAESTRO, 0.8 + s / 100, params) for s in seeds]
  return runs


def test_report_params_plot_has_one_sorted_svd_curve_and_error_bars_only_over_seeds(tmp_path, figures):
  svd = {"SVD of dense (dense s0)": [(3000, 0.85), (1000, 0.6), (2000, 0.8)]}  # In the low-rank runs' order.
  report.plot_params(lowrank_sweep((0, 1, 2), (0, 1, 2)), tmp_path, svd)
  report.plot_params(lowrank_sweep((0,), (0,)), tmp_path, svd)
  three, one = (fig.axes[0] for fig in figures)
  (curve,) = [line for label, line in lines(three).items() if label.startswith("SVD of dense (dense s0)")]
  assert list(curve.get_xdata()) == [1000, 2000, 3000] and curve.get_marker() == "D"
  assert error_bars(three) == [2, 1]  # Maestro's two points, and the dense star.
  assert three.get_title() == "Fashion-MNIST · MLP\nlow rank: accuracy (%) against size (mean ± std over 3 seeds)"
  assert error_bars(one) == [] and one.get_title().endswith("(one seed)")
  assert one.get_xlabel() and one.get_ylabel() == "test accuracy (%)"


def test_report_nm_plot_says_how_many_seeds_and_bands_the_dense_line(tmp_path, figures):
  dense = {**MLP, "layers": {"type": "dense"}}
  two = [result("ste_1of8", "STE", s, NM, 0.8) for s in (0, 1)] + [result("dense", "dense", s, dense, 0.9 + s / 100)
                                                                      for s in (0, 1)]
  report.plot_nm(two, tmp_path)
  mixed = two[:1] + [result("ste_2of4", "STE", 0, {**MLP, "layers": {"type": "nm", "n": 2, "m": 4}}, 0.85)]
  report.plot_nm(mixed, tmp_path)
  ax, mixed_ax = (fig.axes[0] for fig in figures)
  assert ax.get_title().endswith("(mean ± std over 2 seeds)") and ax.get_title().startswith("Fashion-MNIST · MLP")
  assert error_bars(ax) == [1] and len(ax.patches) == 1  # The dense mean ± std: a band.
  assert any(label.startswith("dense (90.50 ± 0.71, 2 seeds)") for label in lines(ax))
  assert mixed_ax.get_title().endswith("(one seed)") and error_bars(mixed_ax) == [] and not mixed_ax.patches
  assert report.seeds_note([1, 3, 3]) == "mean over 1–3 seeds, ± std where ≥ 2"


def test_report_trajectories_are_labelled_steps(tmp_path, figures):
  rows = [{"step": s, "rank/fc1": r, "rank/fc2": r, "sparsity/total": 0.1 * s} for s, r in ((5, 8), (10, 6), (15, 6))]
  runs = [report.Result("maestro", "Maestro", 0, tmp_path, MAESTRO, rows),
          report.Result("sdgf", "SDGF", 0, tmp_path, NM, [{"step": r["step"], "sparsity/total": r["sparsity/total"],
                                                           "nm/n": 1, "nm/m": 8} for r in rows])]
  report.plot_trajectories(runs, tmp_path)
  (fig,) = figures
  assert_labelled(fig)
  assert [ax.get_ylabel() for ax in fig.axes] == ["rank (components)", "sparsity (fraction of weights pruned)"]
  assert fig.get_suptitle() == "Fashion-MNIST · MLP"
  for ax in fig.axes:
    (line,) = ax.get_lines()
    assert line.get_drawstyle() == "steps-post" and list(line.get_xdata()) == [5, 10, 15]
  assert list(fig.axes[0].get_lines()[0].get_ydata()) == [16, 12, 12]  # Summed over layers.
