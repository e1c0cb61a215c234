"""ImageNet ResNet-18/34 (basic blocks) and -50 (bottlenecks) as supernets.

Gates (ekg_algorithm.md section 2):
- `stage{s}/block{b}/conv0`, `.../conv1` — inner channels of a block (basic
  blocks have only conv0 inside);
- `stage{s}` — the residual stream of stage s, created at the stage's
  projection shortcut; `stem` — the stem output where stage 0 starts with a
  projection (ResNet-50), otherwise the stem writes `stage0` directly.
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax

from ekg_jax.supernet.gates import Masks
from ekg_jax.supernet.model import Supernet

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


class ImageNetResNet(Supernet):
  depth: int = 50
  num_classes: int = 1000

  @property
  def bottleneck(self) -> bool:
    return self.depth >= 50

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None, train: bool = False,
               start: int = 0, stop: Optional[int] = None) -> jax.Array:
    if self.depth not in BLOCKS:
      raise ValueError(f'ImageNet ResNet depth must be one of '
                       f'{sorted(BLOCKS)}, got {self.depth}')
    expansion = 4 if self.bottleneck else 1
    gate = 'stem' if self.bottleneck else 'stage0'
    segments = [functools.partial(self._stem, masks=masks, train=train,
                                  gate=gate)]
    for stage, blocks in enumerate(BLOCKS[self.depth]):
      for block in range(blocks):
        in_gate, gate = gate, f'stage{stage}'
        segments.append(functools.partial(
            self._block, masks=masks, train=train, stage=stage, block=block,
            in_gate=in_gate, out_gate=gate,
            stride=2 if stage > 0 and block == 0 else 1,
            projection=block == 0 and (stage > 0 or self.bottleneck),
            full=STAGE_WIDTHS[stage] * expansion))
    segments.append(lambda x: self.dense(in_gate=gate)(x.mean(axis=(1, 2)),
                                                       masks))
    return self.run_segments(segments, x, start, stop)

  def _stem(self, x, masks, train, gate):
    x = self.conv(self.width(gate, 64), 7, 2, out_gate=gate,
                  name='stem/conv')(x, masks)
    x = self.gate(nn.relu(self.bn(gate, train, name='stem/bn')(x)), masks,
                  gate)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')

  def _block(self, x, masks, train, stage, block, in_gate, out_gate, stride,
             projection, full):
    name = f'stage{stage}/block{block}'
    inner = STAGE_WIDTHS[stage]
    if self.bottleneck:
      convs = ((1, 1), (3, stride))  # (kernel, stride) of conv0, conv1
    else:
      convs = ((3, stride),)
    h, h_gate = x, in_gate
    for i, (kernel, s) in enumerate(convs):
      gate = f'{name}/conv{i}'
      h = self.conv(self.width(gate, inner), kernel, s, h_gate, gate,
                    name=f'{name}/conv{i}')(h, masks)
      h = nn.relu(self.bn(gate, train, name=f'{name}/bn{i}')(h))
      h, h_gate = self.gate(h, masks, gate), gate
    last = len(convs)
    width = self.width(out_gate, full)
    h = self.conv(width, 1 if self.bottleneck else 3, 1, h_gate, out_gate,
                  name=f'{name}/conv{last}')(h, masks)
    h = self.bn(out_gate, train, zero_init=True, name=f'{name}/bn{last}')(h)
    if projection:
      x = self.conv(width, 1, stride, in_gate, out_gate,
                    name=f'{name}/shortcut_conv')(x, masks)
      x = self.bn(out_gate, train, name=f'{name}/shortcut_bn')(x)
    return self.gate(nn.relu(h + x), masks, out_gate)
