"""Defaults every experiment config starts from, and the `:smoke` shrink."""

import ml_collections

from experiment import methods
from experiment.config import epoch_fields, parse_arg, parse_like, set_field

TRAIN_EXAMPLES = 55_000  # Fashion-MNIST's default train split, train[:55000].


def epochs(n: float, batch_size: int) -> int:
  """Optimizer steps in `n` epochs of Fashion-MNIST's default train split (its configs count in steps; the paper
  configs count in epochs of whatever train split a run reads: `config.num_epochs` and the other `*_epochs`)."""
  return int(n * TRAIN_EXAMPLES // batch_size)


def step_budget(num_steps: int) -> dict:
  """`num_steps` and the fields `base` derives from it: an evaluation and a checkpoint every fifth of the run, a
  warm-up of a twentieth (as sweep overrides, they train a `base` config for `num_steps` in those proportions)."""
  return {"num_steps": num_steps, "eval_every": num_steps // 5, "checkpoint_every": num_steps // 5,
          "optimizer.warmup_steps": num_steps // 20}


def base(model: dict, *, fmnist_epochs: float = 0, num_steps: int = 0, batch_size: int = 256,
         learning_rate: float = 1e-3, dataset: dict | None = None) -> ml_collections.ConfigDict:
  """A Fashion-MNIST experiment of the steps of `fmnist_epochs` epochs (its default split), or `num_steps` on
  `dataset` (its fields: name, eval_limit, and where its files are)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # "" / 0: defaults, all. workers: processes that read and decode batches (0: threads; for large datasets).
  # name: fashion_mnist, austen, or any TFDS catalog name (cifar10, imagenet2012, ...) prepared in data_dir.
  # *_split: TFDS slicing syntax ("": the dataset's own, e.g. train[:55000] / train[55000:] / test); tuning and
  # checkpoint choice read validation (val/ metrics), reports show test (eval/). preprocess (catalog datasets):
  # scale | cifar | imagenet ("": by name).
  c.dataset = dict(dataset or dict(name="fashion_mnist", data_dir="", idx_dir="", eval_limit=0, workers=0),
                   train_split="", validation_split="", test_split="", preprocess="")
  c.model = model
  c.layers = dict(type="dense", keep_dense=())
  c.batch_size = batch_size
  c.num_steps = num_steps or epochs(fmnist_epochs, batch_size)
  # Each of these > 0 replaces its twin in steps (num_steps, eval_every, checkpoint_every, optimizer.warmup_steps,
  # which are then 0): epochs of the train split, converted to steps from its real size when the run starts.
  c.num_epochs = c.eval_every_epochs = c.checkpoint_every_epochs = 0.0
  c.optimizer = dict(
      name="adamw",              # adamw | sgd (momentum 0.9)
      learning_rate=learning_rate,
      warmup_steps=0,            # Set below from num_steps, with eval_every and checkpoint_every (step_budget).
      warmup_epochs=0.0,
      schedule="cosine",         # cosine | linear | constant | warmup_stable_decay | step (after the warm-up)
      decay_fraction=0.2,        # warmup_stable_decay: the last fraction of the steps, decaying linearly to 0.
      step_at=(0.5, 0.75),       # step: the learning rate x0.1 at these fractions of the steps after the warm-up.
      weight_decay=1e-4,         # Decoupled, scaled by the learning rate.
      decay="kernels",           # kernels: only parameters with ndim >= 2 (no biases, norm scales) | all
      grad_clip=1.0,             # Global norm; 0: off.
      accumulate_steps=1,        # Each step's batch in this many sequential micro-batches (less memory, one update).
      ema_decay=0.0,             # > 0: also keep (and evaluate, eval_ema/...) an EMA of the parameters; 0: off.
  )
  c.log_every = 50
  c.eval_batch_size = 1000
  c.keep_checkpoints = 2
  c.sharding = "data"  # data: parameters replicated, batches split over all devices | fsdp: parameters split too.
  c.compute_dtype = "float32"  # float32 | bfloat16: what layers compute in; parameters and logits stay float32.
  # Several processes: the coordinator's host:port, their number and this one's index (or the environment's
  # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); "": one process.
  c.distributed = dict(coordinator="", num_processes=1, process_id=0)
  c.profile_steps = ""  # "a:b": a jax.profiler trace of steps a..b in <workdir>/profile/ (TensorBoard, Perfetto).
  # BatchNorm models: after a host update changes the model (a Maestro shrink, the switch after a dense warm-up,
  # an N:M frame) and for each rank cut eval.py evaluates, BatchNorm's statistics are recomputed on this many
  # training batches (in order, not augmented); 0: never.
  c.recalibrate_batches = 20
  c.skip_nonfinite = False  # True: an update with a non-finite loss or gradient is skipped (and counted), not fatal.
  c.wandb = dict(mode="offline", project="lowrank-nm", name="")
  c.update_from_flattened_dict(step_budget(c.num_steps))
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same experiment at a tiny size: seconds on a laptop CPU, for debugging and tests."""
  c.batch_size = 32
  c.num_steps = 20
  c.optimizer.warmup_steps = 2
  c.log_every = 5
  c.eval_every = 10
  c.checkpoint_every = 10
  c.eval_batch_size = 80 if c.dataset.name == "fashion_mnist" else 8  # <= the tests' test splits (100 images; 8
  # windows of text), and divisible by 8 devices.
  c.dataset.eval_limit = 400
  c.dataset.workers = 0  # Reading threads: no worker processes to start.
  c.wandb.mode = "disabled"
  if c.model.name == "mlp":  # 784-64-64-10: the same layers, a fraction of the time and checkpoint size.
    c.model.hidden = (64,) * len(c.model.hidden)
  if c.model.name == "lm":  # A small transformer: seconds per run.
    c.model.update(dim=64, depth=2, mlp_dim=256)
  if c.model.name in ("resnet", "vgg"):  # The same layers, 8 channels where there were 64.
    c.model.width = 8
  if c.model.name == "vit" and c.model.dim > 128:  # ViT-S/B: a small transformer over the same patches.
    c.model.update(dim=64, depth=2, num_heads=2, mlp_dim=128)
  c.recalibrate_batches = min(c.recalibrate_batches, 2)
  for spec in methods.REGISTRY.values():  # Every method the config has a section of (sweeps switch between them).
    if spec.sections and all(section in c for section in spec.sections):
      spec.smoke(c)
  for field in epoch_fields(c).values():  # Every step count above is in steps.
    set_field(c, field, 0.0)
  return c


def austen_lm(*, num_steps: int, batch_size: int, learning_rate: float, model: dict) -> ml_collections.ConfigDict:
  """The character-level language model on Jane Austen's novels (data/austen.py, models/lm.py), dense."""
  c = base(dict(name="lm", **model), num_steps=num_steps, batch_size=batch_size, learning_rate=learning_rate,
           dataset=dict(name="austen", data_dir="", rdata_dir="", eval_limit=0, workers=0))
  c.optimizer.weight_decay = 0.1
  c.eval_batch_size = 131  # The test split's 1572 windows in 12 batches.
  return c


def maestro(c: ml_collections.ConfigDict, *, keep_dense: tuple[str, ...], group_lasso: float, shrink_eps: float,
            sampler: str = "single_layer", shrink_every_epochs: float = 1.0) -> ml_collections.ConfigDict:
  """Turns a dense config into Maestro: LoD layers everywhere but `keep_dense`, config.lowrank's fields
  (experiment/methods/maestro.py) with a shrink every `shrink_every_epochs` (in steps where the config counts
  steps)."""
  c.layers = dict(methods.REGISTRY["lowrank"].layer_options, type="lowrank", keep_dense=keep_dense)
  c.lowrank = dict(methods.REGISTRY["lowrank"].sections["lowrank"], sampler=sampler, group_lasso=group_lasso,
                   shrink_eps=shrink_eps)
  if c.num_epochs:
    c.lowrank.shrink_every_epochs = shrink_every_epochs
  else:
    c.lowrank.shrink_every = epochs(shrink_every_epochs, c.batch_size)
  return c


def pufferfish(rank_ratio: float, batch_size: int = 256) -> dict:
  """Sweep overrides that turn a Maestro config into the Pufferfish-style baseline: one dense epoch, then the SVD
  factors at the fixed ratio `rank_ratio`; no ordered dropout, group lasso or shrinking."""
  return {"lowrank.group_lasso": 0.0, "lowrank.sampler": "none", "lowrank.distill": False, "lowrank.shrink_every": 0,
          "lowrank.shrink_eps": 0.0, "lowrank.dense_warmup_steps": epochs(1, batch_size), "layers.rank_ratio": rank_ratio}


# Maestro's recipes on the Pufferfish-style baseline's terms (the controlled sweeps): its one dense epoch first
# (at batch 256), λ rising over a quarter of the run, a penalty-free fine-tune of the last fifth (after a last shrink).
DENSE_EPOCH = {"lowrank.dense_warmup_steps": epochs(1, 256)}
LAMBDA_RAMP, FINETUNE = {"lowrank.group_lasso_warmup": 0.25}, {"lowrank.finetune": 0.2}


def cuttlefish(c: ml_collections.ConfigDict, *, track_every_epochs: float = 1.0) -> dict:
  """config.cuttlefish's fields (experiment/methods/cuttlefish.py), measuring the stable ranks every
  `track_every_epochs` (in steps where the config counts steps), and re-warming the learning rate after the switch
  for as long as the run warms it up (the reference's rule: one warm-up length for both)."""
  fields = dict(methods.REGISTRY["cuttlefish"].sections["cuttlefish"], track_every_epochs=0.0, rewarm_epochs=0.0)
  if c.num_epochs:
    return dict(fields, track_every_epochs=track_every_epochs, rewarm_steps=c.optimizer.warmup_steps,
                rewarm_epochs=c.optimizer.warmup_epochs)
  return dict(fields, track_every=epochs(track_every_epochs, c.batch_size), rewarm_steps=c.optimizer.warmup_steps)


def nm(c: ml_collections.ConfigDict, *, keep_dense: tuple[str, ...], n: int, m: int,
       method: str = "srste") -> ml_collections.ConfigDict:
  """Turns a dense config into N:M training: N:M layers everywhere but `keep_dense`, config.nm's fields
  (experiment/methods/nm.py)."""
  c.layers = dict(methods.REGISTRY["nm"].layer_options, type="nm", keep_dense=keep_dense, n=n, m=m)
  c.nm = dict(methods.REGISTRY["nm"].sections["nm"], method=method)
  return c


NM_METHODS = {  # The N:M ablation's methods: run-name prefix -> (group, config fields).
    "ste": ("STE", {"nm.method": "ste"}), "sr-ste": ("SR-STE", {"nm.method": "srste"}),
    "mdgf-linear": ("MDGF-linear", {"nm.method": "mdgf", "nm.decay": "linear"}),
    "mdgf-exp": ("MDGF-exp", {"nm.method": "mdgf", "nm.decay": "exp"}),
    "sdgf-stepwise": ("SDGF-stepwise", {"nm.method": "sdgf", "nm.structure": "stepwise"}),
    "sdgf-geometric": ("SDGF-geometric", {"nm.method": "sdgf", "nm.structure": "geometric"}),
}


def nm_sweep(levels: tuple[tuple[int, int], ...], methods=tuple(NM_METHODS), seeds=(0, 1, 2)) -> dict:
  """A sweep (sweep.py) of an N:M config: the dense model, and every method at every N:M level."""
  runs = [dict(name="dense", group="dense", overrides={"layers.type": "dense"})]
  for name in methods:
    group, fields = NM_METHODS[name]
    runs += [dict(name=f"{name}_{n}of{m}", group=group, overrides={**fields, "layers.n": n, "layers.m": m})
             for n, m in levels]
  return dict(seeds=seeds, runs=runs)


NM_ARGS = {"method": "nm.method", "decay": "nm.decay", "k": "nm.decay_coef", "structure": "nm.structure",
           "n": "layers.n", "m": "layers.m", "warmup": "nm.dense_warmup", "finetune": "nm.finetune"}


def nm_args(c: ml_collections.ConfigDict, args: dict[str, str]) -> dict[str, str]:
  """Short `:key=value` names of N:M configs (`:method=mdgf,decay=exp,n=1,m=8`) as config fields;
  `method=dense` trains the same model dense. Returns the other arguments."""
  args = dict(args)
  if args.get("method") == "dense":
    args.pop("method")
    c.layers.type = "dense"
  return {NM_ARGS.get(k, k): v for k, v in args.items()}


def nm_config(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies an N:M config's `:arg` (short names, `:smoke`)."""
  return apply_args(c, nm_args(c, parse_arg(arg)))


def apply_args(c: ml_collections.ConfigDict, args: dict[str, str]) -> ml_collections.ConfigDict:
  """`:smoke` and `:key=value` pairs (dotted keys allowed) from the config argument."""
  for key, value in args.items():
    if key == "smoke":
      continue
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = parse_like(node[leaf], value, key)  # An unknown key: KeyError, one line (config.parse_flags).
  return smoke(c) if "smoke" in args else c


def paper_base(model: dict, *, num_epochs: float, eval_every_epochs: float, batch_size: int, learning_rate: float,
              dataset: dict) -> ml_collections.ConfigDict:
  """A paper's experiment: `num_epochs` of the train split (whatever its size), evaluated and checkpointed every
  `eval_every_epochs`, no warm-up."""
  c = base(model, num_steps=1, batch_size=batch_size, learning_rate=learning_rate, dataset=dataset)
  c.num_steps = c.eval_every = c.checkpoint_every = c.optimizer.warmup_steps = 0
  c.num_epochs, c.eval_every_epochs = num_epochs, eval_every_epochs
  c.checkpoint_every_epochs = eval_every_epochs
  return c


def cifar_sgd(model: dict, *, epochs: int, batch_size: int = 128) -> ml_collections.ConfigDict:
  """A CIFAR-10 run with Maestro's CIFAR recipe (Maestro-LoD's cifar script): SGD with momentum 0.9, learning rate
  0.1, x0.1 at 50% and 75% of the run, weight decay 1e-4, batch 128, pad-crop-flip augmentation (the cifar10
  dataset's default), validation held out of train (45,000 / 5,000); evaluated every 5 epochs."""
  c = paper_base(model, num_epochs=epochs, eval_every_epochs=5, batch_size=batch_size, learning_rate=0.1,
                dataset=dict(name="cifar10", data_dir="", eval_limit=0, workers=0))
  c.optimizer.update(name="sgd", schedule="step", step_at=(0.5, 0.75), weight_decay=1e-4, grad_clip=0.0)
  c.eval_batch_size = 500
  return c


def maestro_variants(c: ml_collections.ConfigDict, arg: str | None, *,
                     pufferfish_ratio: float) -> ml_collections.ConfigDict:
  """A Maestro paper config's `:arg`: method=maestro (default) | dense (the same model, every layer dense) |
  pufferfish (the Pufferfish-style baseline: one epoch dense, then the SVD at a fixed `pufferfish_ratio` of each
  layer's rank, no sampling, penalty or shrinking); `:smoke`; `:field=value`."""
  args = parse_arg(arg)
  method = args.pop("method", "maestro")
  if method == "dense":
    c.layers = dict(type="dense", keep_dense=())
  elif method == "pufferfish":
    c.update_from_flattened_dict({**pufferfish(pufferfish_ratio), "lowrank.dense_warmup_steps": 0,
                                  "lowrank.dense_warmup_epochs": 1.0})
  elif method != "maestro":
    raise ValueError(f"config argument method={method!r}: must be maestro, dense or pufferfish")
  return apply_args(c, args)
