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


def _save(fig, workdir: pathlib.Path, name: str) -> pathlib.Path:
  path = workdir / "plots" / name
  path.parent.mkdir(exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
