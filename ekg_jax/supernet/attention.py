"""Gated layers for transformers: multi-head attention, LayerNorm, tokens.

A head gate has one channel per attention head. The attention's variables
keep the head as its own axis (query/key/value kernels [D, heads, head_dim],
output kernel [heads, head_dim, D], as Flax's `MultiHeadDotProductAttention`
stores them), so "one entry per channel of the gate" holds on that axis and
slimming, parameter counts and the weight criteria need nothing new: a kept
head keeps its whole head_dim slice of all four projections.

The gate multiplies each head's output (softmax(q k^T / sqrt(head_dim)) v)
before the output projection; a pruned head then adds nothing, as in the
slimmed network where it does not exist. The 1/sqrt(head_dim) scale does
not change with the number of heads kept.

LayerNorm and the class token / position embedding are described so that
parameter counts include them; neither is gated and, by the project's
convention, LayerNorm, softmax and GELU cost no FLOPs. The embedding width
is not prunable: this layer's out_gate is the head gate, so its output
projection could not also be described as a writer of an embedding gate
(one out_gate per LayerSpec), and a LayerNorm over a pruned width would
need statistics over the kept channels only.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ekg_jax.supernet.gates import (IN, OUT, Cost, LayerSpec, Masks,
                                    VariableSpec, _kernel_mask, apply_gate)

# The four projections' kernels, in the order their filters are scored.
PROJECTIONS = ('query', 'key', 'value', 'out')


def _renormalized(kernel, mask, axis):
  """||K|| / ||K with the masked heads removed||, as slimming rescales it
  (ekg_algorithm.md section 7), without masking K itself."""
  sq = jnp.square(kernel.astype(jnp.float32))
  per_head = jnp.sum(sq, axis=tuple(a for a in range(kernel.ndim)
                                    if a != axis % kernel.ndim))
  return jnp.sqrt(jnp.sum(per_head) /
                  jnp.maximum(jnp.sum(per_head * mask), 1e-24))


class GatedAttention(nn.Module):
  """Multi-head self-attention whose heads follow the gate `gate`.

  Input and output [batch, tokens, D]; `in_gate` names the embedding's
  gate (None: not prunable). `num_heads` is the width kept here (a slimmed
  network has fewer); `head_dim` never changes.
  """
  num_heads: int
  head_dim: int
  gate: Optional[str] = None
  in_gate: Optional[str] = None
  renormalize: bool = True
  straight_through: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.xavier_uniform()
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None) -> jax.Array:
    width, heads, hd = x.shape[-1], self.num_heads, self.head_dim
    dtype = self.dtype or x.dtype
    head_mask = _kernel_mask(masks, self.gate, heads)

    def project(name):
      kernel = self.param(f'{name}_kernel', self.kernel_init,
                          (width, heads, hd))
      bias = self.param(f'{name}_bias', nn.initializers.zeros, (heads, hd))
      y = jnp.einsum('bnd,dhk->bnhk', x.astype(dtype), kernel.astype(dtype))
      if self.renormalize and head_mask is not None:
        y = y * _renormalized(kernel, head_mask, 1).astype(dtype)
      return y + bias.astype(dtype)

    q, k, v = (project(name) for name in PROJECTIONS[:3])
    logits = jnp.einsum('bqhk,bthk->bhqt', q, k) / math.sqrt(hd)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    o = jnp.einsum('bhqt,bthk->bqhk', weights.astype(dtype), v)
    # The gate's channel axis is the head axis: move it last for apply_gate,
    # whose score then sums over batch, tokens and the head's head_dim.
    o = apply_gate(o.swapaxes(-1, -2), masks, self.gate,
                   self.straight_through).swapaxes(-1, -2)
    kernel = self.param('out_kernel', self.kernel_init, (heads, hd, width))
    y = jnp.einsum('bnhk,hkd->bnd', o, kernel.astype(dtype))
    if self.renormalize and head_mask is not None:
      y = y * _renormalized(kernel, head_mask, 0).astype(dtype)
    bias = self.param('out_bias', nn.initializers.zeros, (width,))
    return y + bias.astype(dtype)

  @nn.nowrap
  def describe_layer(self, x, y) -> LayerSpec:
    del y
    tokens, width = x.shape[1], x.shape[2]
    heads, hd = self.num_heads, self.head_dim
    variables = []
    for name in PROJECTIONS[:3]:
      variables += [
          VariableSpec('params', f'{name}_kernel', (width, heads, hd),
                       ((0, IN), (1, OUT)), self.renormalize),
          VariableSpec('params', f'{name}_bias', (heads, hd), ((0, OUT),))]
    # The output projection reads the heads and writes the embedding, the
    # IN side (it is the gate this layer reads: in_gate is the stream's).
    variables += [
        VariableSpec('params', 'out_kernel', (heads, hd, width),
                     ((0, OUT), (2, IN)), self.renormalize),
        VariableSpec('params', 'out_bias', (width,), ((0, IN),))]
    return LayerSpec(
        path=self.path, kind='attention', in_gate=self.in_gate,
        out_gate=self.gate, in_channels=width, out_channels=heads,
        variables=tuple(variables),
        flops=(
            # query, key, value and output projections: tokens * D * hd
            # per head each.
            Cost(4 * tokens * hd, (IN, OUT)),
            # q k^T and weights v: tokens^2 * hd per head each.
            Cost(2 * tokens * tokens * hd, (OUT,))),
        filters=tuple(f'{name}_kernel' for name in PROJECTIONS),
        out_hw=(tokens, 1))


class GatedLayerNorm(nn.LayerNorm):
  """LayerNorm over the last axis, described for parameter counts and
  slimming. Its width is not prunable (`gate` must stay None): a pruned
  width would need statistics over the kept channels only."""
  gate: Optional[str] = None

  @nn.nowrap
  def describe_layer(self, x, y) -> LayerSpec:
    del y
    if self.gate is not None:
      raise ValueError(f'{self.name}: a gated LayerNorm width is not '
                       'supported (its statistics would need the kept '
                       'channels only)')
    width = x.shape[-1]
    names = (['scale'] if self.use_scale else []) + (
        ['bias'] if self.use_bias else [])
    return LayerSpec(
        path=self.path, kind='layer_norm', in_gate=None, out_gate=None,
        in_channels=width, out_channels=width,
        variables=tuple(VariableSpec('params', n, (width,)) for n in names))


class TokenEmbedding(nn.Module):
  """Prepends a class token (if `class_token`) and adds a learned position
  embedding to patch tokens [batch, patches, D]."""
  class_token: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, patches, width = x.shape
    dtype = self.dtype or x.dtype
    if self.class_token:
      cls = self.param('cls', nn.initializers.zeros, (1, 1, width))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype),
                                            (batch, 1, width)),
                           x.astype(dtype)], axis=1)
    pos = self.param('pos', nn.initializers.normal(0.02),
                     (1, x.shape[1], width))
    return x + pos.astype(dtype)

  @nn.nowrap
  def describe_layer(self, x, y) -> LayerSpec:
    width = x.shape[-1]
    variables = ((VariableSpec('params', 'cls', (1, 1, width)),)
                 if self.class_token else ())
    variables += (VariableSpec('params', 'pos', (1, y.shape[1], width)),)
    return LayerSpec(path=self.path, kind='tokens', in_gate=None,
                     out_gate=None, in_channels=width, out_channels=width,
                     variables=variables)
