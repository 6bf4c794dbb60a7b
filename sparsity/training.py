"""N:M training: STE, SR-STE, MDGF, SDGF and the unstructured baseline over the
dense warm-up, sparse and fine-tune phases (docs/nm_sparsity.md).

The method decides, from the step alone, each N:M layer's `Sparsity` (pattern
and gradient rule): it changes only at phase and SDGF frame boundaries, each a
single recompilation. α(t) is computed inside the jitted step. Usable from any
NNX training loop (examples/custom_loop.py); train.py builds it from `config.nm`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparsity.layers import NMKernel, Sparsity, forward_macs
from sparsity.schedules import DECAYS, STRUCTURES, Phases, mask_decay, structure_decay_frames

METHODS = ("ste", "srste", "mdgf", "sdgf", "unstructured")
MDGF_GRADS = ("ste", "autodiff")
SRSTE_MODES = ("coupled", "decoupled")


def nm_layers(model: nnx.Module) -> list[tuple[tuple, NMKernel]]:
  """(path, layer) of every N:M kernel (NMLinear, NMConv, and the NMFactor factors of low-rank layers), in graph
  order."""
  return [(tuple(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, NMKernel)]


def _require(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ValueError(f"{field}{message}")


class NMTraining:
  """N:M training of `model`'s N:M layers over a run of `num_steps` updates: `method` (METHODS); MDGF's decay of α
  (`decay` exp | linear, `decay_coef` k per update of the sparse phase, 0: exp 5/T, linear 2/T for its T updates;
  `mdgf_grad` ste | autodiff); SDGF's `structure` (stepwise | geometric | densify; `sdgf_decay`: also decay the mask
  within frames); SR-STE's λ_w `srste_decay` and `srste_mode` (coupled: the paper's λ_w·(1 − m)⊙W added to the
  gradient, before the optimizer | decoupled: W ← W − lr·λ_w·(1 − m)⊙W after the optimizer's update, as AdamW
  decouples weight decay, so that an adaptive optimizer does not normalize it away); `dense_warmup` and `finetune`
  as fractions of the updates. `inputs` (a batch's shape, optional): also count the forward FLOPs that N:M hardware
  saves (`forward_flops_saved`). A bad value is a ValueError naming the argument."""

  def __init__(self, model: nnx.Module, *, num_steps: int, method: str = "srste", decay: str = "exp",
               decay_coef: float = 0.0, mdgf_grad: str = "ste", structure: str = "stepwise", sdgf_decay: bool = False,
               srste_decay: float = 2e-4, srste_mode: str = "coupled", dense_warmup: float = 0.0, finetune: float = 0.0,
               inputs: jax.ShapeDtypeStruct | None = None):
    _require(method in METHODS, "method", f"={method!r} is unknown; choose one of {list(METHODS)}")
    _require(decay in DECAYS, "decay", f"={decay!r} is unknown; choose one of {list(DECAYS)}")
    _require(mdgf_grad in MDGF_GRADS, "mdgf_grad", f"={mdgf_grad!r} is unknown; choose one of {list(MDGF_GRADS)}")
    _require(structure in STRUCTURES, "structure", f"={structure!r} is unknown; choose one of {list(STRUCTURES)}")
    _require(srste_mode in SRSTE_MODES, "srste_mode", f"={srste_mode!r} is unknown; choose one of {list(SRSTE_MODES)}")
    _require(decay_coef >= 0, "decay_coef", f"={decay_coef} must be >= 0")
    _require(srste_decay >= 0, "srste_decay", f"={srste_decay} must be >= 0")
    for field, value in (("dense_warmup", dense_warmup), ("finetune", finetune)):
      _require(0 <= value < 1, field, f"={value} must be a fraction in [0, 1)")
    self.method, self.decay, self.mdgf_grad, self.srste_decay = method, decay, mdgf_grad, srste_decay
    self.decoupled = method == "srste" and srste_mode == "decoupled"
    self.phases = Phases.of(num_steps, dense_warmup, finetune)
    _require(self.phases.sparse > 0, "dense_warmup", f" + finetune = {dense_warmup + finetune} leaves no sparse "
             "phase; make their sum < 1")
    # k: as configured, or for this sparse phase of T updates: exp 5/T (α ends at e^-5), linear 2/T (0 from mid-phase).
    self.decay_coef = decay_coef or (5.0 if decay == "exp" else 2.0) / self.phases.sparse
    self.soft = method == "mdgf" or (method == "sdgf" and sdgf_decay)
    if not nm_layers(model):
      raise ValueError("the model has no N:M layer (NMLinear, NMConv, NMFactor) to train")
    self.frames = {}  # layer name -> [(start t, n, m)] over the sparse phase.
    for _, layer in nm_layers(model):
      n, m = layer.target
      try:
        frames = structure_decay_frames(n, m, structure, self.phases.sparse) if method == "sdgf" else [(0, n, m)]
      except ValueError as e:
        raise ValueError(f"structure={structure!r}: layer {layer.name!r}: {e}") from e
      for _, _, fm in frames:
        _require(layer.kernel.shape[layer.axis] % fm == 0, "structure",
                 f"={structure!r} needs groups of M={fm} in layer {layer.name!r}, whose "
                 f"{layer.kernel.shape[layer.axis]} inputs are not divisible by it; keep the layer dense or choose "
                 f"another structure or N:M")
      self.frames[layer.name] = frames
      layer.groups = math.lcm(*(fm for _, _, fm in frames))  # What a shrink of its axis must keep whole.
    starts = {self.phases.warmup + t for frames in self.frames.values() for t, _, _ in frames}
    self.boundaries = (starts | {self.phases.warmup + self.phases.sparse}) - {0}
    self.macs = forward_macs(model, inputs) if inputs is not None else {}

  def forward_flops_saved(self, step: int, model: nnx.Module) -> float:
    """The FLOPs of updates 1..`step` that a sparse matmul unit (N:M tensor cores) saves: 2·(1 − N/M)·MACs of each
    forward pass through a layer with a binary N:M mask. Not where the mask is soft (MDGF: the forward reads every
    weight) or unstructured, and not the backward (its input gradient reduces over the other kernel axis, which the
    N:M groups do not structure); 0 without `inputs`."""
    cuts = sorted({0, step, *(b for b in self.boundaries if b < step)})
    saved = 0.0
    for done, end in zip(cuts, cuts[1:]):  # Each stretch has one configuration per layer.
      for _, layer in nm_layers(model):
        s = self.sparsity_at(done, layer)
        if s.pattern and not (s.soft or s.unstructured):
          saved += (end - done) * 2 * (1 - s.pattern[0] / s.pattern[1]) * self.macs.get(layer.name, 0)
    return saved

  def sparsity_at(self, done: int, layer) -> Sparsity:
    """The layer's configuration for the update that follows `done` completed updates."""
    phase = self.phases.phase(done)
    if phase == "dense":
      return Sparsity(None)
    if phase == "finetune":
      return Sparsity(layer.target, unstructured=self.method == "unstructured")
    t = done - self.phases.warmup
    _, n, m = [f for f in self.frames[layer.name] if f[0] <= t][-1]
    grad = "srste" if self.method == "srste" else "autodiff" if self.soft and self.mdgf_grad == "autodiff" else "ste"
    return Sparsity((n, m), grad=grad, soft=self.soft, unstructured=self.method == "unstructured")

  def alpha(self, step):
    """α of the update `step` (1-based); 0 where the mask is binary."""
    t = step - 1 - self.phases.warmup
    return mask_decay(t, self.decay, self.decay_coef) if self.soft and self.phases.phase(step - 1) == "sparse" else 0.0

  def _configure(self, done: int, model) -> bool:
    changed = False
    for _, layer in nm_layers(model):
      new = self.sparsity_at(done, layer)
      changed |= new != layer.sparsity
      layer.sparsity = new
    return changed

  # --- the training hooks (lowrank.Maestro's) ---

  def loss(self, model: nnx.Module, step: jax.Array, key: jax.Array, forward) -> tuple[jax.Array, jax.Array, dict]:
    """Inside the jitted step: (loss, logits, {}) of one forward pass under the N:M rule (`forward_pass`) plus
    coupled SR-STE's term (`penalty`)."""
    loss, logits = self.forward_pass(model, step, key, lambda model: forward(model, None))
    return loss + self.penalty(model, step), logits, {}

  def forward_pass(self, model: nnx.Module, step: jax.Array, key: jax.Array, forward) -> tuple[jax.Array, jax.Array]:
    """`forward(model) -> (loss, logits)` under the N:M rule: MDGF's α of update `step` set on the layers for it.
    A method that runs several forward passes a step (Maestro's distillation) runs each through this."""
    soft = [layer for _, layer in nm_layers(model) if layer.sparsity.soft]  # Only these read α.
    alpha = mask_decay(step - 1 - self.phases.warmup, self.decay, self.decay_coef)  # Traced: no recompilation.
    for layer in soft:
      layer.alpha[...] = alpha
    loss, logits = forward(model)
    for layer in soft:
      layer.alpha[...] = jnp.zeros(())  # Outside the loss the hard mask holds (evaluation, export).
    return loss, logits

  def penalty(self, model: nnx.Module, step: jax.Array) -> jax.Array:
    """Coupled SR-STE's λ_w/2·‖(1 − m)⊙W‖² (m held fixed; its gradient λ_w·(1 − m)⊙W), to add once per step
    however many forward passes the step makes; 0 otherwise."""
    pruned = [jnp.where(jax.lax.stop_gradient(layer.hard_mask(layer.kernel[...])), 0.0, layer.kernel[...])
              for _, layer in nm_layers(model) if layer.sparsity.grad == "srste"]
    if not pruned or self.decoupled:
      return jnp.zeros(())
    return self.srste_decay / 2 * sum(jnp.sum(w ** 2) for w in pruned)

  @property
  def updates_after(self) -> bool:
    return self.decoupled

  def after_update(self, model: nnx.Module, step: jax.Array, learning_rate: jax.Array) -> None:
    """Inside the jitted step, after the optimizer's update with `learning_rate`: decoupled SR-STE's
    W ← W − lr·λ_w·(1 − m)⊙W on the layers in SR-STE's sparse phase (m: the mask of the updated W)."""
    for _, layer in nm_layers(model):
      if layer.sparsity.grad == "srste":
        w = layer.kernel[...]
        layer.kernel[...] = jnp.where(layer.hard_mask(w), w, (1.0 - learning_rate * self.srste_decay) * w)

  observes = True

  def observe(self, model: nnx.Module, step: jax.Array, grads: nnx.State) -> None:
    """Jitted, at log steps only, with the gradients of the coming update: records each layer's mask for this update, the entries it flipped since
    the previous log step, and the squared gradient norms of its kept and pruned weights."""
    flat = dict(nnx.to_flat_state(grads))
    for path, layer in nm_layers(model):
      mask = layer.hard_mask(layer.kernel[...])
      g_sq = flat[(*path, "kernel")][...] ** 2
      layer.flips[...] = jnp.sum(mask != layer.logged_mask[...], dtype=jnp.int32)
      layer.logged_mask[...] = mask
      layer.grad_sq[...] = jnp.stack([jnp.sum(jnp.where(mask, g_sq, 0.0)), jnp.sum(jnp.where(mask, 0.0, g_sq))])

  def host_update_due(self, step: int) -> bool:
    """Whether `host_update` runs after update `step`: at phase and SDGF frame boundaries."""
    return step in self.boundaries

  def host_update(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None) -> bool:
    """Each layer's pattern and gradient rule for the next phase or frame; True if one changed (a recompilation).
    A layer masked for the first time (after a dense warm-up) counts its next flips from its first mask, as at a
    fresh start, not from the all-kept mask of the dense phase."""
    dense = [layer for _, layer in nm_layers(model) if layer.sparsity.pattern is None]
    changed = self._configure(step, model)
    for layer in dense:
      if layer.sparsity.pattern is not None:
        layer.logged_mask[...] = layer.hard_mask(layer.kernel[...])
    return changed

  def state(self, step: int, model) -> dict:
    return {"step": step, "phase": self.phases.phase(step), "alpha": float(self.alpha(step + 1)), "decay_coef": self.decay_coef,
            "patterns": {layer.name: list(layer.sparsity.pattern or ()) for _, layer in nm_layers(model)}}

  def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None, state: dict) -> None:
    """Each layer's configuration at the saved step ({}: a fresh start)."""
    self._configure(state.get("step", 0), model)
    if not state:  # A fresh start: the first flip rate counts changes from the initial mask.
      for _, layer in nm_layers(model):
        layer.logged_mask[...] = layer.hard_mask(layer.kernel[...])

  def metrics(self, step: int, model) -> dict[str, float]:
    layers = [layer for _, layer in nm_layers(model)]
    out, pruned, flips, entries, grad_sq, weight_sq = {}, 0, 0, 0, np.zeros(2), np.zeros(2)
    for layer in layers:
      mask = np.asarray(layer.logged_mask[...])
      out[f"sparsity/{layer.name}"] = 1.0 - mask.mean()
      pruned += int(mask.size - mask.sum())
      flips += int(layer.flips[...])
      entries += mask.size
      grad_sq += np.asarray(layer.grad_sq[...], np.float64)
      w = np.asarray(layer.kernel[...], np.float64)
      kept = np.asarray(layer.hard_mask(layer.kernel[...]))  # Of the weights now (dense phase: all kept).
      weight_sq += (np.sum(np.where(kept, w, 0.0) ** 2), np.sum(np.where(kept, 0.0, w) ** 2))
    n, m = layers[0].sparsity.pattern or (1, 1)  # The first N:M layer's (1:1 while dense).
    total = sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {**out, "sparsity/total": pruned / total, "nm/alpha": float(self.alpha(step)), "nm/n": n, "nm/m": m,
            "nm/flip_rate": flips / entries, "nm/grad_norm_kept": float(np.sqrt(grad_sq[0])),
            "nm/grad_norm_pruned": float(np.sqrt(grad_sq[1])), "nm/kept_weight_norm": float(np.sqrt(weight_sq[0])),
            "nm/pruned_weight_norm": float(np.sqrt(weight_sq[1])),
            **({"nm/forward_flops_saved": self.forward_flops_saved(step, model)} if self.macs else {})}
