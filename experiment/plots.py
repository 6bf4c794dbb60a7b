"""Plots of a run's metrics, written to `<workdir>/plots/`."""

import pathlib

import matplotlib
import matplotlib.ticker

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
  return save(fig, workdir, "training.png")


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
  return save(fig, workdir, "ranks.png")


def sparsity(workdir: pathlib.Path) -> pathlib.Path | None:
  """N:M runs: sparsity per layer and in total, α, N and M, the mask flip rate and the
  gradient norms of pruned vs kept weights, against the step."""
  rows = metrics.read(workdir / "metrics.jsonl")
  layers = sorted({k for r in rows for k in r if k.startswith("sparsity/") and k != "sparsity/total"})
  if not layers:
    return None
  fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
  ax = axes[0, 0]
  for key in layers:
    ax.plot(*series(rows, key), lw=0.8, alpha=0.6)
  ax.plot(*series(rows, "sparsity/total"), color="black", lw=2, label="total (all parameters)")
  ax.set(title="sparsity (thin: each layer)", ylim=(-0.02, 1.02))
  ax.legend(fontsize=8)
  axes[0, 1].plot(*series(rows, "nm/alpha"))
  axes[0, 1].set(title="α (mask decay)", ylim=(-0.02, 1.02))
  for key in ("nm/n", "nm/m"):
    axes[0, 2].step(*series(rows, key), where="post", label=key)
  axes[0, 2].set_yscale("log", base=2)
  axes[0, 2].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  axes[0, 2].set(title="N:M (first N:M layer)")
  axes[0, 2].legend(fontsize=8)
  axes[1, 0].plot(*series(rows, "nm/flip_rate"))
  axes[1, 0].set(title="mask flip rate since the previous log step", ylim=(0, None))
  for key in ("nm/grad_norm_kept", "nm/grad_norm_pruned"):
    axes[1, 1].plot(*series(rows, key), label=key.removeprefix("nm/grad_norm_") + " weights")
  axes[1, 1].set(title="gradient norm", yscale="log")
  axes[1, 1].legend(fontsize=8)
  axes[1, 2].plot(*series(rows, "eval/accuracy"), marker="o")
  axes[1, 2].set(title="test accuracy")
  for ax in axes.flat:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  return save(fig, workdir, "sparsity.png")


def rank_sweep(workdir: pathlib.Path, sweep: list[dict], key: str = "accuracy") -> pathlib.Path:
  """A test metric (`key`: accuracy, bits_per_char) against parameters and MACs of the model cut to each rank
  fraction."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, x in zip(axes, ("params", "macs")):
    ax.plot([r[x] for r in sweep], [r[key] for r in sweep], marker="o", label="this run")
    if f"svd_{key}" in sweep[0]:
      ax.plot([r[x] for r in sweep], [r[f"svd_{key}"] for r in sweep], marker="s", label="SVD of the dense run")
    ax.set(xlabel=x, ylabel=f"test {key.replace('_', ' ')}", xscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
  return save(fig, workdir, "rank_sweep.png")


def save(fig, workdir: pathlib.Path, name: str) -> pathlib.Path:
  path = workdir / "plots" / name
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
