"""N:M sparse layers (docs/nm_sparsity.mdB2).

A layer keeps its dense `kernel` (trained) and a static `Sparsity`: the
current N:M pattern (None while dense), the gradient rule and whether the mask
is soft. The training method sets both; a change of either is a new graph, so
it recompiles once, while the mask itself is recomputed from the kernel at
every forward pass and never recompiles.

Forward: `W ⊙ (m + α(1 − m))`, `m` the hard mask, `α` a traced scalar that
the training loss sets and resets to 0, so evaluation and export always see
the hard mask `W ⊙ m`. The forward pass writes nothing: what the metrics need
(the mask at the last log step, flips, gradient norms) the training method
records at log steps only.

The kernel is a float32 parameter and the mask (hard or soft) is computed from
it in float32; a layer computes in its `dtype` (e.g. bfloat16): only the masked
kernel, the input and the bias are cast, at use.
"""

import collections
import contextvars
import dataclasses
import fnmatch
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sparsity.masks import nm_mask, unstructured_mask


def pattern_for(name: str, n: int, m: int, patterns: dict | None) -> tuple[int, int]:
  """The N:M of layer `name`: the first fnmatch pattern of `patterns` ({"block*/mlp/*": "1:8"}) that
  matches it, else `n:m`."""
  for pattern, nm in (patterns or {}).items():
    if fnmatch.fnmatchcase(name, pattern):
      try:
        a, b = (int(v) for v in str(nm).split(":"))
      except ValueError:
        raise ValueError(f"config.layers.patterns[{pattern!r}]={nm!r} must look like '1:8'") from None
      return a, b
  return n, m


def checked_pattern(name: str, n, m, patterns: dict | None) -> tuple[int, int]:
  """`pattern_for`'s N:M, checked: integers 0 < N <= M."""
  n, m = pattern_for(name, n, m, patterns)
  if not (isinstance(n, int) and isinstance(m, int) and 0 < n <= m):
    raise ValueError(f"config.layers.n / config.layers.m (or config.layers.patterns): layer {name!r} has N:M = {n}:{m}; "
                     f"need integers 0 < N <= M")
  return n, m


@dataclasses.dataclass(frozen=True)
class Sparsity:
  """pattern: (n, m), or None for dense. grad: `ste` (the gradient w.r.t. the
  masked kernel, unmasked), `srste` (STE here; NMTraining's loss adds SR-STE's
  term once per step, however often the kernel is read) or `autodiff` (through
  the soft mask: pruned gradients scaled by α). soft: W ⊙ (m + α(1 − m)).
  unstructured: the same density, magnitude-pruned over the whole kernel."""
  pattern: tuple[int, int] | None
  grad: str = "ste"
  soft: bool = False
  unstructured: bool = False


# Where `forward_macs` collects each N:M layer call's (name, multiply-accumulates) while it traces a forward pass.
_COUNTING: contextvars.ContextVar[list | None] = contextvars.ContextVar("nm_forward_macs", default=None)


class MaskDecay(nnx.Variable):
  """α of mask decay; nonzero only inside the training loss."""


class Monitor(nnx.Variable):
  """Recorded at log steps for the metrics: the hard mask (bool, kernel-shaped),
  the entries it changed since the previous log step, the squared gradient
  norms of kept and pruned weights."""


@jax.custom_vjp
def _straight_through(w: jax.Array, soft_mask: jax.Array) -> jax.Array:
  """W ⊙ soft_mask forward; the gradient passes to W unscaled (STE)."""
  return w * soft_mask


_straight_through.defvjp(lambda w, soft_mask: (w * soft_mask, None), lambda _, g: (g, None))


class NMKernel(nnx.Module):
  """What NMLinear, NMConv and NMFactor share: the kernel, its mask and the forward rule; `axis` is the one grouped
  in M, `groups` a size it must stay divisible by (M, or every M its training will use)."""

  def _count(self, out_shape: tuple[int, ...]) -> None:
    calls = _COUNTING.get()
    if calls is not None:  # Each output entry is a dot product over the kernel's all-but-last axes.
      calls.append((self.name, math.prod(out_shape[:-1]) * math.prod(self.kernel.shape)))

  def _init_sparsity(self, kernel: jax.Array, n: int, m: int, axis: int, name: str, dtype: jnp.dtype) -> None:
    if kernel.shape[axis] % m:
      raise ValueError(f"config.layers.m (or config.layers.patterns): N:M layer {name!r} groups {kernel.shape[axis]} "
                       f"inputs, not divisible by M={m}; choose an M that divides {kernel.shape[axis]} or keep the "
                       f"layer dense with --config.layers.keep_dense")
    self.name, self.axis, self.target, self.groups, self.dtype = name, axis, (n, m), m, dtype
    self.kernel = nnx.Param(kernel)
    self.sparsity = Sparsity((n, m))
    self.alpha = MaskDecay(jnp.zeros((), jnp.float32))
    self.logged_mask = Monitor(jnp.ones(kernel.shape, bool))
    self.flips = Monitor(jnp.zeros((), jnp.int32))
    self.grad_sq = Monitor(jnp.zeros((2,), jnp.float32))  # (kept, pruned)

  def hard_mask(self, kernel: jax.Array) -> jax.Array:
    s = self.sparsity
    if s.pattern is None:
      return jnp.ones(kernel.shape, bool)
    n, m = s.pattern
    return unstructured_mask(kernel, n / m) if s.unstructured else nm_mask(kernel, n, m, self.axis)

  def masked_kernel(self) -> jax.Array:
    """The kernel the forward pass uses (float32, like the kernel)."""
    w, s = self.kernel[...], self.sparsity
    if s.pattern is None:
      return w
    mask = self.hard_mask(jax.lax.stop_gradient(w))
    soft = mask.astype(w.dtype)
    if s.soft:
      soft = soft + self.alpha[...] * (1.0 - soft)
    return w * soft if s.grad == "autodiff" else _straight_through(w, soft)


class NMLinear(NMKernel):
  """y = x · (kernel ⊙ mask) + bias, `kernel: (in, out)`, groups of M inputs."""

  def __init__(self, in_features: int, out_features: int, *, n: int, m: int, rngs: nnx.Rngs, use_bias: bool = True,
               name: str = "", dtype: jnp.dtype = jnp.float32):
    kernel = nnx.initializers.lecun_normal()(rngs.params(), (in_features, out_features))
    self._init_sparsity(kernel, n, m, 0, name, dtype)
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:  # (..., in) -> (..., out)
    y = x.astype(self.dtype) @ self.masked_kernel().astype(self.dtype)
    self._count(y.shape)
    return y + self.bias[...].astype(self.dtype) if self.bias is not None else y


class NMConv(NMKernel):
  """A conv with an HWIO `kernel: (kh, kw, in, out)`; groups of M input channels
  at one spatial tap and one output channel."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, n: int, m: int, rngs: nnx.Rngs,
               strides: int = 1, padding: str = "SAME", use_bias: bool = True, name: str = "",
               dtype: jnp.dtype = jnp.float32):
    shape = (kernel_size, kernel_size, in_features, out_features)
    self._init_sparsity(nnx.initializers.lecun_normal()(rngs.params(), shape), n, m, 2, name, dtype)
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None
    self.strides, self.padding = strides, padding

  def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, in) -> (b, h', w', out)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), self.masked_kernel().astype(self.dtype), (self.strides,) * 2,
                                     self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    self._count(y.shape)
    return y + self.bias[...].astype(self.dtype) if self.bias is not None else y


def forward_macs(model: nnx.Module, inputs: jax.ShapeDtypeStruct) -> dict[str, int]:
  """The multiply-accumulates of each N:M layer's kernel (NMLinear, NMConv; by name) in one forward pass of `model`
  on a batch shaped like `inputs`, dense (traced: nothing is computed). Not the factors of low-rank layers."""
  graph, state = nnx.split(model)  # A copy to trace: the forward may write state (BatchNorm's statistics).
  calls = []
  token = _COUNTING.set(calls)
  try:
    jax.eval_shape(lambda state, x: nnx.merge(graph, state)(x), state, inputs)
  finally:
    _COUNTING.reset(token)
  out = collections.Counter()
  for name, macs in calls:  # A layer called twice in one pass counts twice.
    out[name] += macs
  return dict(out)


class NMFactor(NMKernel):
  """A trained matrix with its N:M mask (a factor of a low-rank layer, sparsity/lowrank.py), read like a
  parameter: `factor[...]` is its effective (masked) value, assigning to it sets the trained `kernel`."""

  def __init__(self, value: jax.Array, *, n: int, m: int, axis: int, name: str, dtype: jnp.dtype = jnp.float32):
    self._init_sparsity(value, n, m, axis, name, dtype)

  @property
  def shape(self) -> tuple[int, ...]:
    return self.kernel.shape

  def __getitem__(self, index) -> jax.Array:
    return self.masked_kernel()[index]

  def __setitem__(self, index, value) -> None:
    self.kernel[index] = value

  def truncate(self, shape: tuple[int, ...]) -> None:
    """The leading `shape` of the kernel (and of its recorded mask) kept."""
    self.kernel = nnx.Param(self.kernel[...][tuple(map(slice, shape))])
    self.logged_mask = Monitor(self.logged_mask[...][tuple(map(slice, shape))])
