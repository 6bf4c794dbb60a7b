"""Schedules of N:M training, pure functions of the step (docs/nm_sparsity.md).

Steps count optimizer updates. A run is split into an optional dense warm-up,
the sparse (decay) phase, and an optional fine-tune with a binary mask and STE;
`t` counts updates from the start of the sparse phase.
"""

import dataclasses

import jax
import jax.numpy as jnp

DECAYS = ("linear", "exp")
STRUCTURES = ("stepwise", "geometric", "densify")


def mask_decay(step, kind: str, coef: float) -> jax.Array:
  """α(t) of mask-decay gradient flow: linear max(1 − k·t, 0), exp exp(−k·t).

  `step` (t) may be traced; the result is a float32 scalar (`float()` it on the host)."""
  t = jnp.asarray(step, jnp.float32)
  if kind == "linear":
    return jnp.maximum(1.0 - coef * t, 0.0)
  if kind == "exp":
    return jnp.exp(-coef * t)
  raise ValueError(f"mask decay {kind!r} is unknown; choose one of {list(DECAYS)}")


def structure_decay_frames(n: int, m: int, kind: str, num_steps: int) -> list[tuple[int, int, int]]:
  """SDGF frames `(start_step, n, m)` over a sparse phase of `num_steps`, tightening to N:M.

  stepwise:  (M−1):M, then (M/2^i):M down to N:M  (1 + log2(M/N) frames)
  geometric: (N·2^(3−i)):(M·2^(3−i)), i = 0..3     (same density, groups shrink)
  densify:   N:(M·2^(3−i)), i = 0..3               (groups shrink, density grows)
  Frames are equal slices of the phase: frame i starts at i·num_steps // frames.
  """
  if kind == "stepwise":
    ratio = m // n
    if m % n or ratio & (ratio - 1):
      raise ValueError(f"stepwise structure decay needs M/N a power of two; {n}:{m} is not")
    patterns = [(m - 1, m)] + [(m >> i, m) for i in range(1, ratio.bit_length())]
  elif kind == "geometric":
    patterns = [(n << (3 - i), m << (3 - i)) for i in range(4)]
  elif kind == "densify":
    patterns = [(n, m << (3 - i)) for i in range(4)]
  else:
    raise ValueError(f"structure decay {kind!r} is unknown; choose one of {list(STRUCTURES)}")
  return [(i * num_steps // len(patterns), a, b) for i, (a, b) in enumerate(patterns)]


@dataclasses.dataclass(frozen=True)
class Phases:
  """Dense warm-up, sparse, fine-tune: lengths in updates, from fractions of the run."""
  warmup: int
  sparse: int
  finetune: int

  @classmethod
  def of(cls, num_steps: int, warmup_fraction: float, finetune_fraction: float) -> "Phases":
    warmup, finetune = round(warmup_fraction * num_steps), round(finetune_fraction * num_steps)
    return cls(warmup, num_steps - warmup - finetune, finetune)

  def phase(self, done: int) -> str:
    """The phase of the update that follows `done` completed updates."""
    return "dense" if done < self.warmup else "sparse" if done < self.warmup + self.sparse else "finetune"
