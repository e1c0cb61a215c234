"""MobileNet-v2 for CIFAR as a masked supernet.

The CIFAR variant keeps 32x32 resolution longer: stem stride 1 and the second
group stride 1 (as in common CIFAR ports), width multiplier 1.

Gates (the reference code has none for this model; ekg_algorithm.md section 2):
- `block{i}/hidden` — the expansion channels of block i (expansion conv,
  its BN, the depthwise conv and its BN follow this gate). Blocks with
  expansion 1 have no expansion conv; their depthwise conv runs on the
  incoming stream and follows that stream's gate.
- `stream{g}` — one residual stream of equal width: the outputs of every block
  in group g (written by each block's projection conv). `stem` and `head` are
  the stem conv's and the final 1x1 conv's outputs.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax

from ekg_jax.supernet.gates import Masks
from ekg_jax.supernet.model import Supernet

# (expansion t, output channels c, blocks n, first stride s), CIFAR strides.
CIFAR_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                  (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_WIDTH = 32
HEAD_WIDTH = 1280


class MobileNetV2(Supernet):
  settings: tuple[tuple[int, int, int, int], ...] = CIFAR_SETTINGS
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None, train: bool = False,
               start: int = 0, stop: Optional[int] = None) -> jax.Array:
    segments = [functools.partial(self._stem, masks=masks, train=train)]
    gate = 'stem'
    for group, (t, c, n, s) in enumerate(self.settings):
      for i in range(n):
        in_gate, gate = gate, f'stream{group}'
        segments.append(functools.partial(
            self._block, masks=masks, train=train, index=len(segments) - 1,
            expansion=t, features=c, stride=s if i == 0 else 1,
            in_gate=in_gate, out_gate=gate, residual=i > 0))
    segments.append(functools.partial(self._head, masks=masks, train=train,
                                      in_gate=gate))
    return self.run_segments(segments, x, start, stop)

  def _stem(self, x, masks, train):
    x = self.conv(self.width('stem', STEM_WIDTH), 3, self.stem_stride,
                  out_gate='stem', name='stem/conv')(x, masks)
    return self.gate(nn.relu6(self.bn('stem', train, name='stem/bn')(x)),
                     masks, 'stem')

  def _head(self, x, masks, train, in_gate):
    x = self.conv(self.width('head', HEAD_WIDTH), 1, in_gate=in_gate,
                  out_gate='head', name='head/conv')(x, masks)
    x = nn.relu6(self.bn('head', train, name='head/bn')(x))
    x = self.gate(x, masks, 'head').mean(axis=(1, 2))
    return self.dense(in_gate='head')(x, masks)

  def _block(self, x, masks, train, index, expansion, features, stride,
             in_gate, out_gate, residual):
    name = f'block{index}'
    h = x
    hidden_gate = in_gate
    if expansion != 1:
      hidden_gate = f'{name}/hidden'
      hidden = self.width(hidden_gate,
                          self._full_width(in_gate) * expansion)
      h = self.conv(hidden, 1, in_gate=in_gate, out_gate=hidden_gate,
                    name=f'{name}/expand')(h, masks)
      h = nn.relu6(self.bn(hidden_gate, train, name=f'{name}/expand_bn')(h))
      h = self.gate(h, masks, hidden_gate)
    h = self.conv(h.shape[-1], 3, stride, out_gate=hidden_gate, depthwise=True,
                  name=f'{name}/depthwise')(h, masks)
    h = nn.relu6(self.bn(hidden_gate, train, name=f'{name}/depthwise_bn')(h))
    h = self.gate(h, masks, hidden_gate)
    h = self.conv(self.width(out_gate, features), 1, in_gate=hidden_gate,
                  out_gate=out_gate, name=f'{name}/project')(h, masks)
    h = self.bn(out_gate, train, zero_init=residual,
                name=f'{name}/project_bn')(h)
    if residual:
      h = h + x
    return self.gate(h, masks, out_gate)

  def _full_width(self, gate: str) -> int:
    """Unpruned width of a stream gate: hidden widths scale the full width."""
    if gate == 'stem':
      return STEM_WIDTH
    return self.settings[int(gate.removeprefix('stream'))][1]
