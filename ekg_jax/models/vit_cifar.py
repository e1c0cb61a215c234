"""A Vision Transformer for CIFAR (32x32) as a masked supernet.

Patch size 4 (64 tokens, plus a class token with `pool='cls'`), learned
position embedding, pre-norm blocks (x + attention(LN(x)), then
x + MLP(LN(x)) with GELU), a final LayerNorm and a linear classifier on
the class token (or the mean of the tokens with `pool='mean'`).

Gates (one per block and kind, each written by one layer):
- `block{i}/heads` — the attention heads of block i: one channel per head,
  pruning a head's slice of the query, key, value and output projections
  together (`supernet.attention.GatedAttention`); at least 1 head stays.
- `block{i}/mlp` — the MLP's hidden units (fc1's outputs and bias, fc2's
  inputs); at least 1 unit stays.
The embedding width is not a gate (see `supernet/attention.py`).

No BatchNorm: the BN warm-up and the BN-scale criteria (`gbn`, `bn_gamma`)
do not apply and are refused by name.

Segments: the embedding, each block, the head.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax

from ekg_jax.supernet.attention import (GatedAttention, GatedLayerNorm,
                                        TokenEmbedding)
from ekg_jax.supernet.gates import GatedConv, GatedDense, Masks
from ekg_jax.supernet.model import Supernet


def heads_gate(block: int) -> str:
  return f'block{block}/heads'


def mlp_gate(block: int) -> str:
  return f'block{block}/mlp'


class CifarViT(Supernet):
  depth: int = 6
  embed_dim: int = 192
  num_heads: int = 3
  mlp_ratio: int = 4
  patch_size: int = 4
  pool: str = 'cls'  # 'cls' | 'mean'
  layer_norm_epsilon: float = 1e-6
  # The attributes that, beside `widths`, fix the architecture: an export
  # records them so `deploy.export.load` rebuilds any size.
  architecture = ('depth', 'embed_dim', 'num_heads', 'mlp_ratio', 'patch_size',
                  'pool')

  def architecture_error(self) -> Optional[str]:
    """Why these attributes make no ViT (None when they do); the config
    check of `model.architecture` asks before anything is traced."""
    if self.embed_dim % self.num_heads:
      return (f'embed_dim {self.embed_dim} is not a multiple of '
              f'num_heads={self.num_heads}')
    if self.pool not in ('cls', 'mean'):
      return f"pool must be 'cls' or 'mean', got {self.pool!r}"
    return None

  @property
  def head_dim(self) -> int:
    if self.embed_dim % self.num_heads:
      raise ValueError(f'ViT {self.architecture_error()}')
    return self.embed_dim // self.num_heads

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None, train: bool = False,
               start: int = 0, stop: Optional[int] = None) -> jax.Array:
    del train  # no BatchNorm, no dropout
    if self.pool not in ('cls', 'mean'):
      raise ValueError(f"ViT pool must be 'cls' or 'mean', got {self.pool!r}")
    segments = [self._embed]
    for block in range(self.depth):
      segments.append(functools.partial(self._block, masks=masks,
                                        block=block))
    segments.append(functools.partial(self._head, masks=masks))
    return self.run_segments(segments, x, start, stop)

  def _norm(self, name):
    return GatedLayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                          name=name)

  def _dense(self, features, name, in_gate=None, out_gate=None):
    return GatedDense(features, in_gate=in_gate, out_gate=out_gate,
                      renormalize=self.renormalize, dtype=self.dtype,
                      kernel_init=nn.initializers.xavier_uniform(),
                      name=name)

  def _embed(self, x):
    p = self.patch_size
    x = GatedConv(self.embed_dim, (p, p), p, renormalize=self.renormalize,
                  kernel_init=nn.initializers.lecun_normal(),
                  dtype=self.dtype, name='patch_embed')(x)
    x = x.reshape(x.shape[0], -1, self.embed_dim)
    return TokenEmbedding(self.pool == 'cls', dtype=self.dtype,
                          name='tokens')(x)

  def _block(self, x, masks, block):
    name = f'block{block}'
    heads, hidden = heads_gate(block), mlp_gate(block)
    h = self._norm(f'{name}/norm1')(x)
    h = GatedAttention(
        self.width(heads, self.num_heads), self.head_dim, gate=heads,
        renormalize=self.renormalize, straight_through=self.straight_through,
        dtype=self.dtype, name=f'{name}/attention')(h, masks)
    x = x + h
    h = self._norm(f'{name}/norm2')(x)
    h = self._dense(self.width(hidden, self.embed_dim * self.mlp_ratio),
                    f'{name}/fc1', out_gate=hidden)(h, masks)
    h = self.gate(nn.gelu(h), masks, hidden)
    return x + self._dense(self.embed_dim, f'{name}/fc2', in_gate=hidden)(h,
                                                                      masks)

  def _head(self, x, masks):
    x = self._norm('norm')(x)
    x = x[:, 0] if self.pool == 'cls' else x.mean(axis=1)
    return self._dense(self.num_classes, 'head')(x, masks)
