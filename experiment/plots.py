"""Plots of a run's metrics, written to `<workdir>/plots/`. Every title names the dataset and model, every axis
what it measures and in which unit; ranks and N:M sparsity, which change in jumps, are drawn as steps."""

import pathlib

from experiment import metrics

STEP = "step (optimizer updates)"
DATASETS = {"fashion_mnist": "Fashion-MNIST", "austen": "Jane Austen (characters)", "cifar10": "CIFAR-10",
            "cifar100": "CIFAR-100", "imagenet2012": "ImageNet"}
MODELS = {"mlp": "MLP", "cnn": "CNN", "vit": "ViT", "lm": "transformer LM"}
TRAIN_COLOR = "tab:blue"
# Held-out metrics: prefix, legend label, color, line style.
HELD_OUT = (("val", "validation", "tab:purple", "--"), ("eval", "test", "tab:orange", "-"),
            ("val_ema", "validation, EMA of parameters", "tab:olive", "--"),
            ("eval_ema", "test, EMA of parameters", "tab:green", "-"))


def series(rows: list[dict], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
  pairs = [(r["step"], scale * r[key]) for r in rows if key in r]
  return [s for s, _ in pairs], [v for _, v in pairs]


def experiment_name(config: dict) -> str:
  """"Fashion-MNIST · MLP": the dataset and model of a run's config.json."""
  dataset, model = config["dataset"]["name"], config["model"]["name"]
  return f"{DATASETS.get(dataset, dataset)} · {MODELS.get(model, model)}"


def objective(terms: list[str]) -> str:
  """What `train/loss` sums: the cross-entropy, and the terms the run's method adds (e.g. Maestro's distillation
  and group-lasso penalty, where they are on: `methods.objective`)."""
  return f"training objective\n({' + '.join(['cross-entropy', *terms])})"


def label(key: str) -> str:
  """The axis label of a test metric `eval/<name>`."""
  return {"eval/accuracy": "test accuracy (%)", "eval/bits_per_char": "test bits per character (lower: better)"}.get(
      key, f"test {key.removeprefix('eval/')}")


def training_curves(workdir: pathlib.Path, config, terms: list[str]) -> pathlib.Path:
  """The training objective (the cross-entropy and the method's `terms`), the held-out cross-entropy, and the
  accuracy on training batches and the validation and test splits, against the step; the metrics of the EMA of the
  parameters beside the others where the run keeps one."""
  rows = metrics.read(workdir / "metrics.jsonl")
  tests = [test for test in HELD_OUT if any(f"{test[0]}/loss" in r for r in rows)]
  fig, axes = pyplot().subplots(1, 3, figsize=(15, 4.5))
  axes[0].plot(*series(rows, "train/loss"), color=TRAIN_COLOR)
  axes[0].set(ylabel=objective(terms), title="training objective (training batches)")
  for prefix, name, color, style in tests:
    axes[1].plot(*series(rows, f"{prefix}/loss"), marker="o", color=color, ls=style, label=name)
  axes[1].set(ylabel="cross-entropy (nats)", title="held-out cross-entropy")
  axes[2].plot(*series(rows, "train/accuracy", 100), color=TRAIN_COLOR, label="training batches")
  for prefix, name, color, style in tests:
    axes[2].plot(*series(rows, f"{prefix}/accuracy", 100), marker="o", color=color, ls=style, label=name)
  axes[2].set(ylabel="accuracy (%)", title="accuracy")
  for ax in axes:
    ax.set_xlabel(STEP)
    ax.grid(alpha=0.3)
  for ax in axes[1:]:
    ax.legend(fontsize=8)
  fig.suptitle(f"{experiment_name(config)} · {workdir.name}")
  return save(fig, workdir, "training.png")


def ranks(workdir: pathlib.Path, config) -> pathlib.Path | None:
  """Kept rank of every low-rank layer, and the parameters in use, against the step."""
  rows = metrics.read(workdir / "metrics.jsonl")
  keys = sorted({k for r in rows for k in r if k.startswith("rank/")})
  if not keys:
    return None
  fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.5))
  for key in keys:
    axes[0].step(*series(rows, key), where="post", label=key.removeprefix("rank/"))
  axes[0].set(ylabel="kept rank (components)", title="rank of each low-rank layer")
  axes[0].legend(fontsize=7, ncol=2)
  axes[1].step(*series(rows, "params/effective"), where="post")
  axes[1].set(ylabel="parameters", title="parameters in use")
  axes[1].yaxis.set_major_formatter("{x:,.0f}")
  for ax in axes:
    ax.set_xlabel(STEP)
    ax.grid(alpha=0.3)
  fig.suptitle(f"{experiment_name(config)} · {workdir.name}")
  return save(fig, workdir, "ranks.png")


def sparsity(workdir: pathlib.Path, config) -> pathlib.Path | None:
  """N:M runs: sparsity per layer and in total, α, N and M, the mask flip rate and the
  gradient norms of pruned vs kept weights, against the step."""
  rows = metrics.read(workdir / "metrics.jsonl")
  layers = sorted({k for r in rows for k in r if k.startswith("sparsity/") and k != "sparsity/total"})
  if not layers:
    return None
  fig, axes = pyplot().subplots(2, 3, figsize=(15, 7.5))
  ax = axes[0, 0]
  for key in layers:
    ax.step(*series(rows, key), where="post", lw=0.8, alpha=0.6)
  ax.step(*series(rows, "sparsity/total"), where="post", color="black", lw=2, label="total (all parameters)")
  ax.set(title="sparsity (thin: each layer)", ylabel="sparsity (fraction of weights pruned)", ylim=(-0.02, 1.02))
  ax.legend(fontsize=8)
  axes[0, 1].plot(*series(rows, "nm/alpha"))
  axes[0, 1].set(title="α (mask decay)", ylabel="α (scale of the pruned weights)", ylim=(-0.02, 1.02))
  for key in ("nm/n", "nm/m"):
    axes[0, 2].step(*series(rows, key), where="post", label=key.removeprefix("nm/").upper())
  axes[0, 2].set_yscale("log", base=2)
  axes[0, 2].yaxis.set_major_formatter("{x:g}")
  axes[0, 2].set(title="N:M (first N:M layer)", ylabel="N and M in N:M")
  axes[0, 2].legend(fontsize=8)
  axes[1, 0].plot(*series(rows, "nm/flip_rate"))
  axes[1, 0].set(title="mask flip rate since the previous log step", ylabel="fraction of mask entries flipped",
                 ylim=(0, None))
  for key in ("nm/grad_norm_kept", "nm/grad_norm_pruned"):
    axes[1, 1].plot(*series(rows, key), label=key.removeprefix("nm/grad_norm_") + " weights")
  axes[1, 1].set(title="gradient norm", ylabel="gradient norm (L2)", yscale="log")
  axes[1, 1].legend(fontsize=8)
  for prefix, name, color, style in HELD_OUT:
    if any(f"{prefix}/accuracy" in r for r in rows):
      axes[1, 2].plot(*series(rows, f"{prefix}/accuracy", 100), marker="o", color=color, ls=style, label=name)
  axes[1, 2].set(title="held-out accuracy", ylabel="accuracy (%)")
  axes[1, 2].legend(fontsize=8)
  for ax in axes.flat:
    ax.set_xlabel(STEP)
    ax.grid(alpha=0.3)
  fig.suptitle(f"{experiment_name(config)} · {workdir.name}")
  return save(fig, workdir, "sparsity.png")


def rank_sweep(workdir: pathlib.Path, config, sweep: list[dict], key: str = "accuracy") -> pathlib.Path:
  """A test metric (`key`: accuracy, bits_per_char) against parameters and MACs of the model cut to each rank
  fraction, and of the SVD of the dense run at the same ranks where the sweep has it."""
  scale = 100 if key == "accuracy" else 1
  fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.5))
  for ax, (x, name) in zip(axes, (("params", "parameters"), ("macs", "MACs (multiply-accumulates per example)"))):
    for metric, marker, legend in ((key, "o", "this run, cut to each rank fraction"),
                                   (f"svd_{key}", "s", "SVD of the dense run, at the same ranks")):
      if metric in sweep[0]:
        ax.plot(*zip(*sorted((r[x], scale * r[metric]) for r in sweep)), marker=marker, label=legend)
    ax.set(xlabel=name, ylabel=label(f"eval/{key}"), xscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{experiment_name(config)} · {workdir.name}: rank sweep")
  return save(fig, workdir, "rank_sweep.png")


def pyplot():
  """matplotlib.pyplot, drawing to files; imported on first use (a third of a second), which a process that never
  plots (a run killed or stopped by bad input, eval.py without --rank_fractions) does not pay."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def save(fig, workdir: pathlib.Path, name: str) -> pathlib.Path:
  path = workdir / "plots" / name
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  pyplot().close(fig)
  return path
