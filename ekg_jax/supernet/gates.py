"""The gate protocol: prunable channel groups, gated layers and masks.

A *gate* is a set of channels that must be pruned together (ekg_algorithm.md
section 2). Models are written with the gated layers below, each naming the gate
on its input and output channel axes, and call `apply_gate` where the algorithm
multiplies activations by a mask. Each gated layer describes its variables
and cost (`describe_layer`, see protocol.py); everything else (the gate list,
FLOPs, slimming, importance) is derived from one trace of the model by
`layer_table`, so no per-model bookkeeping exists outside the model's own file.

Masks are a dict from gate name to a float vector of that gate's width; a gate
absent from the dict (or `masks=None`) is dense. Masks are built from kept
counts and channel ranks, `mask = rank < kept`, so a stack of candidates is a
leading axis and `jax.vmap` over it needs no Python.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax.supernet import ops
# Re-exported: callers reach the layer table through `gates` too.
from ekg_jax.supernet.protocol import (  # noqa: F401
    IN, OUT, Cost, GateSpec, LayerSpec, VariableSpec, first_segments,
    gate_specs, layer_table, layer_variables, num_segments)

Masks = Optional[Mapping[str, jax.Array]]


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
# Gated layers. Models build from these; each describes itself for
# `layer_table` (`describe_layer`: the trace's input and output shapes in,
# a `LayerSpec` out).


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

  @nn.nowrap
  def describe_layer(self, x, y) -> LayerSpec:
    kh, kw = self.kernel_size
    positions = y.shape[1] * y.shape[2] * kh * kw
    if self.depthwise:
      # Channel c reads input channel c only: one gate on both sides, and
      # the kernel's input axis has size 1.
      kernel = VariableSpec('params', 'kernel', (kh, kw, 1, self.features),
                            ((-1, OUT),), self.renormalize)
      return LayerSpec(
          path=self.path, kind='conv', in_gate=self.out_gate,
          out_gate=self.out_gate, in_channels=x.shape[-1],
          out_channels=self.features, variables=(kernel,),
          flops=(Cost(positions, (OUT,)),), kernel_size=(kh, kw),
          out_hw=tuple(y.shape[1:3]))
    kernel = VariableSpec('params', 'kernel',
                          (kh, kw, x.shape[-1], self.features),
                          ((-2, IN), (-1, OUT)), self.renormalize)
    return LayerSpec(
        path=self.path, kind='conv', in_gate=self.in_gate,
        out_gate=self.out_gate, in_channels=x.shape[-1],
        out_channels=self.features, variables=(kernel,),
        flops=(Cost(positions, (IN, OUT)),), filters='kernel',
        kernel_size=(kh, kw), out_hw=tuple(y.shape[1:3]))


class GatedDense(nn.Module):
  """A dense layer whose kernel is masked on its input and output channels
(on the last axis of x: [B, C], or [B, tokens, C] in a transformer).

  With an `out_gate` (a hidden layer) the bias is masked with the kernel's
  outputs, so a pruned channel is exactly 0, as in the slimmed network where
  it does not exist.
  """
  features: int
  in_gate: Optional[str] = None
  out_gate: Optional[str] = None
  renormalize: bool = True
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (x.shape[-1], self.features))
    in_mask = _kernel_mask(masks, self.in_gate, x.shape[-1])
    out_mask = _kernel_mask(masks, self.out_gate, self.features)
    dtype = self.dtype or x.dtype
    y = masked_apply(lambda x, k: x.astype(dtype) @ k.astype(dtype), x,
                     kernel, in_mask, out_mask, self.renormalize)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros,
                        (self.features,)).astype(dtype)
      if out_mask is not None:
        bias = bias * out_mask.astype(dtype)
      y = y + bias
    return y

  @nn.nowrap
  def describe_layer(self, x, y) -> LayerSpec:
    variables = (VariableSpec('params', 'kernel', (x.shape[-1], self.features),
                              ((-2, IN), (-1, OUT)), self.renormalize),)
    if self.use_bias:
      variables += (VariableSpec('params', 'bias', (self.features,),
                                 ((-1, OUT),)),)
    return LayerSpec(
        path=self.path, kind='dense', in_gate=self.in_gate,
        out_gate=self.out_gate, in_channels=x.shape[-1],
        out_channels=self.features, variables=variables,
        # Applied at every position (a transformer's tokens): 1 for [B, C].
        flops=(Cost(math.prod(y.shape[1:-1]), (IN, OUT)),),
        filters='kernel')


class GatedBatchNorm(nn.BatchNorm):
  """BatchNorm over the channels of `gate` (sliced with it when slimming)."""
  gate: Optional[str] = None

  @nn.nowrap
  def describe_layer(self, x, y) -> LayerSpec:
    del y
    channels = x.shape[-1]
    hw = tuple(x.shape[1:3]) if x.ndim == 4 else (1, 1)
    names = ([('params', 'scale')] if self.use_scale else []) + (
        [('params', 'bias')] if self.use_bias else []) + [
            ('batch_stats', 'mean'), ('batch_stats', 'var')]
    return LayerSpec(
        path=self.path, kind='bn', in_gate=self.gate, out_gate=self.gate,
        in_channels=channels, out_channels=channels,
        variables=tuple(VariableSpec(c, n, (channels,), ((-1, OUT),))
                        for c, n in names),
        # Normalise, then scale and shift: 2 per value (the reference's
        # count), counted only with include_bn.
        flops=(Cost(hw[0] * hw[1] * 2, (OUT,), batch_norm=True),),
        channel_scale='scale' if self.use_scale else None, out_hw=hw)


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
