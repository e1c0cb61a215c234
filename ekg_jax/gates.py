"""The gate protocol: prunable channel groups, gated layers and masks.

A *gate* is a set of channels that must be pruned together (ekg_algorithm.md
section 2). Models are written with the gated layers below, each naming the gate
on its input and output channel axes, and call `apply_gate` where the algorithm
multiplies activations by a mask. Everything else (the gate list, FLOPs,
slimming, importance) is derived from one trace of the model by `layer_table`,
so no per-model bookkeeping exists outside the model's own file.

Masks are a dict from gate name to a float vector of that gate's width; a gate
absent from the dict (or `masks=None`) is dense. Masks are built from kept
counts and channel ranks, `mask = rank < kept`, so a stack of candidates is a
leading axis and `jax.vmap` over it needs no Python.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax import ops

Masks = Optional[Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class GateSpec:
  """One prunable channel group.

  Attributes:
    name: unique gate name.
    channels: full width C.
    writers: u in the algorithm, the number of (non-depthwise) convs whose
      outputs land in this gate; it sets the search step size max(1/C, s/u).
  """
  name: str
  channels: int
  writers: int


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One conv, dense or batch-norm layer and the gates on its channel axes.

  `in_gate`/`out_gate` are None where the axis is not prunable (image
  channels, classes). A depthwise conv has `in_gate == out_gate`: its channels
  follow one gate. `path` locates the layer's variables in every collection.
  """
  path: tuple[str, ...]
  kind: str  # 'conv' | 'dense' | 'bn'
  in_gate: Optional[str]
  out_gate: Optional[str]
  in_channels: int
  out_channels: int
  kernel_size: tuple[int, int] = (1, 1)
  out_hw: tuple[int, int] = (1, 1)
  depthwise: bool = False
  use_bias: bool = False
  segment: int = 0  # index of the model segment holding the layer

  @property
  def name(self) -> str:
    return '/'.join(self.path)


# --------------------------------------------------------------------------
# Masks on activations and kernels.


class Probed(NamedTuple):
  """A gate's mask with an importance probe, for the importance pass.

  `probe` is zeros of the gate's width. Every place the gate is applied
  gives the probe the gradient |sum over batch, height, width of dy * y|
  (y = x * mask, the gate's output there), and JAX adds the places up, so
  d(objective)/d(probe) is the section-3 score: absolute values per place,
  then summed. The plain gradient with respect to the mask would add the
  signed contributions first and let places cancel.
  """
  mask: jax.Array
  probe: jax.Array


def _mask_of(value):
  return value.mask if isinstance(value, Probed) else value


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _gate(x, mask, probe, straight_through):
  del probe
  return x * mask


def _gate_fwd(x, mask, probe, straight_through):
  del probe
  return x * mask, (x, mask)


def _gate_bwd(straight_through, res, dy):
  x, mask = res
  axes = tuple(range(dy.ndim - 1))
  dmask = jnp.sum(dy * x, axis=axes)
  # Reference behaviour with straight_through: the gradient passes the gate
  # untouched (dx = dy), so upstream gates still see gradients through
  # channels masked here.
  dx = dy if straight_through else dy * mask
  return dx, dmask.astype(mask.dtype), jnp.abs(dmask * mask).astype(
      mask.dtype)


_gate.defvjp(_gate_fwd, _gate_bwd)


def apply_gate(x: jax.Array, masks: Masks, gate: str,
               straight_through: bool = False) -> jax.Array:
  """Multiplies the channels (last axis) of `x` by `masks[gate]`, if present.

  With `straight_through=True` the backward pass uses dx = dy as the authors'
  code does (ekg_algorithm.md section 3); otherwise the true dx = dy * m.
  The gradient with respect to the mask is sum(dy * x) either way; a
  `Probed` mask also gives its probe this place's |sum(dy * y)|.
  """
  if not masks or gate not in masks:
    return x
  value = masks[gate]
  mask = _mask_of(value).astype(x.dtype)
  _check_mask(mask, gate, x.shape[-1])
  probed = isinstance(value, Probed)
  if not straight_through and not probed:
    return x * mask
  probe = value.probe.astype(x.dtype) if probed else jnp.zeros_like(mask)
  return _gate(x, mask, probe, straight_through)


def _check_mask(mask, gate, channels):
  if mask.shape != (channels,):
    raise ValueError(
        f'mask for gate {gate!r} has shape {tuple(mask.shape)}, expected '
        f'({channels},): one entry per channel of the gate')


def masked_apply(op: Callable[[jax.Array, jax.Array], jax.Array],
                 x: jax.Array, kernel: jax.Array,
                 in_mask: Optional[jax.Array], out_mask: Optional[jax.Array],
                 renormalize: bool) -> jax.Array:
  """`op(x, kernel)` with the kernel's masked input/output channels zeroed.

  With `renormalize`, the masked kernel is rescaled to the L2 norm of the full
  kernel, as the reference code does for every sliced kernel (section 7), so a
  masked supernet computes exactly what its slimmed network computes.

  Computed as op(x * in_mask, kernel) * out_mask * factor, which equals op
  with the masked kernel for any op linear in channels. The kernel itself is
  never masked, so under `vmap` over candidates' masks it stays shared and a
  batched conv stays one conv over a bigger batch (masked kernels would make
  XLA emit a grouped conv per candidate, several times slower).
  """
  if in_mask is None and out_mask is None:
    return op(x, kernel)
  if in_mask is not None:
    x = x * in_mask.astype(x.dtype)
  y = op(x, kernel)
  scale = jnp.ones((), y.dtype)
  if out_mask is not None:
    scale = scale * out_mask.astype(y.dtype)
  if renormalize:
    # ||K * m||^2 from per-(in, out) sums of squares, without masking K.
    sq = jnp.sum(jnp.square(kernel.astype(jnp.float32)),
                 axis=tuple(range(kernel.ndim - 2)))
    kept = sq
    if in_mask is not None:
      kept = kept * in_mask.astype(jnp.float32)[:, None]
    if out_mask is not None:
      kept = kept * out_mask.astype(jnp.float32)
    factor = jnp.sqrt(jnp.sum(sq) / jnp.maximum(jnp.sum(kept), 1e-24))
    scale = scale * factor.astype(y.dtype)
  return y * scale


def renormalization_factor(full, kept):
  """||full|| / ||kept||, the rescaling that keeps a pruned kernel's L2 norm."""
  full_norm = jnp.sqrt(jnp.sum(jnp.square(full.astype(jnp.float32))))
  kept_norm = jnp.sqrt(jnp.sum(jnp.square(kept.astype(jnp.float32))))
  return (full_norm / jnp.maximum(kept_norm, 1e-12)).astype(full.dtype)


def _kernel_mask(masks: Masks, gate: Optional[str], channels: int):
  """The 0/1 pattern of a gate's mask, for kernels.

  Kernels see only which channels are kept: the continuous mask value (and
  its gradient, the importance score of section 3) belongs to the activation
  gate alone. Binarising also keeps weight gradients out of the importance
  pass, which would otherwise cost a second backward conv per layer.
  """
  if gate is None or not masks or gate not in masks:
    return None
  mask = _mask_of(masks[gate])
  _check_mask(mask, gate, channels)
  return (jax.lax.stop_gradient(mask) != 0).astype(jnp.float32)


# --------------------------------------------------------------------------
# Gated layers. Models build from these; `layer_table` reads their attributes.


class GatedConv(nn.Module):
  """A bias-free conv ('SAME' padding, as TensorFlow) whose kernel is masked.

  `depthwise=True` makes a depthwise conv whose channels follow `out_gate`
  (its `in_gate` is the same gate).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  in_gate: Optional[str] = None
  out_gate: Optional[str] = None
  depthwise: bool = False
  renormalize: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(
      2.0, 'fan_out', 'normal')
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None) -> jax.Array:
    in_channels = x.shape[-1]
    if self.depthwise:
      if in_channels != self.features:
        raise ValueError(f'{self.name}: depthwise conv needs input width '
                         f'{self.features}, got {in_channels}')
      shape = (*self.kernel_size, 1, self.features)
    else:
      shape = (*self.kernel_size, in_channels, self.features)
    kernel = self.param('kernel', self.kernel_init, shape)
    out_mask = _kernel_mask(masks, self.out_gate, self.features)
    in_mask = None if self.depthwise else _kernel_mask(masks, self.in_gate,
                                                     in_channels)
    dtype = self.dtype or x.dtype

    def conv(x, kernel):
      return ops.conv2d(x.astype(dtype), kernel.astype(dtype), self.strides,
                        in_channels if self.depthwise else 1)

    return masked_apply(conv, x, kernel, in_mask, out_mask, self.renormalize)


class GatedDense(nn.Module):
  """A dense layer whose kernel is masked on its input channels."""
  features: int
  in_gate: Optional[str] = None
  renormalize: bool = True
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (x.shape[-1], self.features))
    in_mask = _kernel_mask(masks, self.in_gate, x.shape[-1])
    dtype = self.dtype or x.dtype
    y = masked_apply(lambda x, k: x.astype(dtype) @ k.astype(dtype), x,
                     kernel, in_mask, None, self.renormalize)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros,
                         (self.features,)).astype(dtype)
    return y


class GatedBatchNorm(nn.BatchNorm):
  """BatchNorm over the channels of `gate` (sliced with it when slimming)."""
  gate: Optional[str] = None


# --------------------------------------------------------------------------
# The layer table: one trace of a model gives every gated layer and gate.


def layer_table(model: nn.Module, input_shape: Sequence[int],
                **apply_kwargs) -> list[LayerSpec]:
  """Traces `model.init` (shapes only, no FLOPs spent) and lists its layers."""
  records: list[LayerSpec] = []
  segment = [0]

  def record(next_fun, args, kwargs, context):
    if context.method_name == 'enter_segment':
      segment[0] = args[0]
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    if isinstance(module, GatedConv):
      records.append(LayerSpec(
          path=module.path, kind='conv',
          in_gate=module.out_gate if module.depthwise else module.in_gate,
          out_gate=module.out_gate, in_channels=args[0].shape[-1],
          out_channels=module.features,
          kernel_size=tuple(module.kernel_size), out_hw=tuple(out.shape[1:3]),
          depthwise=module.depthwise, segment=segment[0]))
    elif isinstance(module, GatedDense):
      records.append(LayerSpec(
          path=module.path, kind='dense', in_gate=module.in_gate,
          out_gate=None, in_channels=args[0].shape[-1],
          out_channels=module.features, use_bias=module.use_bias,
          segment=segment[0]))
    elif isinstance(module, GatedBatchNorm):
      channels = args[0].shape[-1]
      records.append(LayerSpec(
          path=module.path, kind='bn', in_gate=module.gate,
          out_gate=module.gate, in_channels=channels, out_channels=channels,
          out_hw=tuple(args[0].shape[1:3]) if args[0].ndim == 4 else (1, 1),
          segment=segment[0]))
    return out

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **apply_kwargs),
                   x)
  return records


def layer_variables(tree: Mapping, path: Sequence[str]) -> Mapping:
  """The variables of the layer at `path` in one collection's tree."""
  for key in path:
    tree = tree[key]
  return tree


def gate_specs(table: Sequence[LayerSpec]) -> dict[str, GateSpec]:
  """Gates in first-use order, with widths and writer counts from the table."""
  channels: dict[str, int] = {}
  writers: dict[str, int] = {}
  for layer in table:
    for gate, width in ((layer.in_gate, layer.in_channels),
                        (layer.out_gate, layer.out_channels)):
      if gate is None:
        continue
      if channels.setdefault(gate, width) != width:
        raise ValueError(f'gate {gate!r} has layers of widths '
                         f'{channels[gate]} and {width} ({layer.name})')
      writers.setdefault(gate, 0)
    if layer.kind == 'conv' and layer.out_gate and not layer.depthwise:
      writers[layer.out_gate] += 1
  return {g: GateSpec(g, channels[g], max(writers[g], 1)) for g in channels}


def first_segments(table: Sequence[LayerSpec]) -> dict[str, int]:
  """Gate -> the first segment with a layer reading or writing the gate.

  Changing a gate's mask leaves every earlier segment's output unchanged.
  """
  first: dict[str, int] = {}
  for layer in table:
    for gate in (layer.in_gate, layer.out_gate):
      if gate is not None:
        first[gate] = min(first.get(gate, layer.segment), layer.segment)
  return first


def num_segments(table: Sequence[LayerSpec]) -> int:
  return max(layer.segment for layer in table) + 1


# --------------------------------------------------------------------------
# Masks from kept counts and ranks.


def validate_gate_names(gates: Mapping[str, GateSpec], names, what: str):
  unknown = sorted(set(names) - set(gates))
  if unknown:
    raise KeyError(f'{what} names unknown gates {unknown}; this model has '
                   f'{len(gates)} gates, e.g. {list(gates)[:4]}')


def identity_ranks(gates: Mapping[str, GateSpec]) -> dict[str, jax.Array]:
  """Ranks that keep the first channels (rank c = c)."""
  return {g: jnp.arange(s.channels, dtype=jnp.int32) for g, s in gates.items()}


def ranks_from_scores(scores: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Rank 0 = most important channel (highest score); ties keep index order.
  Host-side NumPy: a few dozen small sorts per search step."""
  def rank(score):
    order = np.argsort(-np.asarray(score, np.float64), kind='stable')
    ranks = np.empty(len(order), np.int32)
    ranks[order] = np.arange(len(order), dtype=np.int32)
    return ranks
  return {g: rank(s) for g, s in scores.items()}


def masks_from_kept(kept: Mapping[str, Any], ranks: Mapping[str, jax.Array],
                    dtype=jnp.float32) -> dict[str, jax.Array]:
  """mask[c] = rank[c] < kept; works on stacked (vmapped) kept counts too."""
  return {g: (ranks[g] < jnp.asarray(k)[..., None]).astype(dtype)
          for g, k in kept.items()}


def kept_from_masks(masks: Mapping[str, Any]) -> dict[str, int]:
  return {g: int(np.asarray(m).sum()) for g, m in masks.items()}


def full_kept(gates: Mapping[str, GateSpec]) -> dict[str, int]:
  return {g: s.channels for g, s in gates.items()}
