"""Plots of a run's metrics, written to `<workdir>/plots/`."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiment import metrics  # noqa: E402


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
  pairs = [(r["step"], r[key]) for r in rows if key in r]
  return [s for s, _ in pairs], [v for _, v in pairs]


def training_curves(workdir: pathlib.Path) -> pathlib.Path:
  """Loss and accuracy, train and eval, against the step."""
  rows = metrics.read(workdir / "metrics.jsonl")
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for ax, what in zip(axes, ("loss", "accuracy")):
    for split in ("train", "eval"):
      ax.plot(*series(rows, f"{split}/{what}"), label=split, marker="o" if split == "eval" else None)
    ax.set(xlabel="step", ylabel=what, title=what)
    ax.grid(alpha=0.3)
    ax.legend()
  return _save(fig, workdir, "training.png")


def ranks(workdir: pathlib.Path) -> pathlib.Path | None:
  """Kept rank of every low-rank layer, and the parameters in use, against the step."""
  rows = metrics.read(workdir / "metrics.jsonl")
  keys = sorted({k for r in rows for k in r if k.startswith("rank/")})
  if not keys:
    return None
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for key in keys:
    axes[0].plot(*series(rows, key), label=key.removeprefix("rank/"))
  axes[0].set(xlabel="step", ylabel="kept rank", title="ranks")
  axes[0].legend(fontsize=7, ncol=2)
  axes[1].plot(*series(rows, "params/effective"))
  axes[1].set(xlabel="step", ylabel="parameters", title="parameters in use")
  for ax in axes:
    ax.grid(alpha=0.3)
  return _save(fig, workdir, "ranks.png")


def rank_sweep(workdir: pathlib.Path, sweep: list[dict]) -> pathlib.Path:
  """Test accuracy against parameters and MACs of the model cut to each rank fraction."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, x in zip(axes, ("params", "macs")):
    ax.plot([r[x] for r in sweep], [r["accuracy"] for r in sweep], marker="o", label="this run")
    if "svd_accuracy" in sweep[0]:
      ax.plot([r[x] for r in sweep], [r["svd_accuracy"] for r in sweep], marker="s", label="SVD of the dense run")
    ax.set(xlabel=x, ylabel="test accuracy", xscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
  return _save(fig, workdir, "rank_sweep.png")


def _save(fig, workdir: pathlib.Path, name: str) -> pathlib.Path:
  path = workdir / "plots" / name
  path.parent.mkdir(exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
