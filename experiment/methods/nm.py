"""N:M sparsity with progressive gradient flow (sparsity/; docs/nm_sparsity.md): `layers.type=nm`, configured by
`config.nm`."""

import jax
import ml_collections

import data
import sparsity
from experiment.config import ConfigError
from experiment import plots
from experiment.methods.base import Spec

# config.nm: each key, its default and meaning.
DEFAULTS = dict(
    method="srste",       # ste | srste | mdgf | sdgf | unstructured (magnitude, same density, STE)
    decay="exp",          # mdgf (and sdgf with sdgf_decay): α(t) = exp(-k·t) | linear: max(1 - k·t, 0)
    decay_coef=0.0,       # k per update of the sparse phase of T updates; 0: exp 5/T (α(T) = e^-5), linear 2/T.
    mdgf_grad="ste",      # ste: the paper's backward | autodiff: through the soft mask (ablation)
    structure="stepwise",  # sdgf: stepwise | geometric | densify
    sdgf_decay=False,     # sdgf: also decay the mask (MDGF within the frames)
    srste_decay=2e-4,     # λ_w of SR-STE
    srste_mode="coupled",  # coupled: λ_w·(1-m)⊙W added to the gradient (the paper's; inert under AdamW's
                          # normalization) | decoupled: W -= lr·λ_w·(1-m)⊙W after the update (as AdamW's weight decay)
    dense_warmup=0.0,     # Fraction of updates dense before the sparse phase.
    finetune=0.0,         # Fraction of updates at the end with the binary target mask and STE.
)


def make(config: ml_collections.ConfigDict, model) -> sparsity.NMTraining:
  if not sparsity.nm_layers(model):
    raise ConfigError(f"config.layers.keep_dense keeps every layer dense, so config.layers.type="
                      f"{config.layers.type!r} has nothing to sparsify; narrow keep_dense")
  spec = data.of_config(config.dataset)
  inputs = jax.ShapeDtypeStruct((config.batch_size, *spec.input_shape), spec.input_dtype)  # To count its FLOPs.
  return sparsity.NMTraining(model, num_steps=config.num_steps, inputs=inputs, **config.nm.to_dict())


# config.layers: n, m (the N:M of every N:M layer), patterns ({"fnmatch pattern": "n:m"}: per-layer-group N:M, the
# first match wins).
METHOD = Spec("nm", sparsity.linear, sparsity.conv, layer_options=dict(n=2, m=4, patterns={}),
              sections={"nm": DEFAULTS}, make=make, plots=(plots.sparsity,))
