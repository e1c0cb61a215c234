"""CIFAR ResNet (depth 6n+2) as a masked supernet, with the reference gates.

Layer and variable names follow the authors' TensorFlow code (`conv`, `bn`,
`BasicBlock{stage}.{block}/conv1..3`, `fc`) so their checkpoint maps 1:1.

Gates (ekg_algorithm.md section 2):
- `stage{s}` — the residual stream of stage s: created at the stem (s=0) or at
  the projection shortcut (s=1, 2); masks the stem output and every block
  output (after add + ReLU) of the stage.
- `stage{s}/block{b}` — the inner channels of a block (conv1 after BN + ReLU).

Segments: the stem, each block, the head (pool + classifier).
"""

from __future__ import annotations

import functools
from typing import Optional

import flax.linen as nn
import jax

from ekg_jax.supernet.gates import Masks
from ekg_jax.supernet.model import Supernet

STAGE_WIDTHS = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)


def stream_gate(stage: int) -> str:
  return f'stage{stage}'


def inner_gate(stage: int, block: int) -> str:
  return f'stage{stage}/block{block}'


class CifarResNet(Supernet):
  depth: int = 56

  @property
  def blocks_per_stage(self) -> int:
    if (self.depth - 2) % 6:
      raise ValueError(f'CIFAR ResNet depth must be 6n+2, got {self.depth}')
    return (self.depth - 2) // 6

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None, train: bool = False,
               start: int = 0, stop: Optional[int] = None) -> jax.Array:
    segments = [functools.partial(self._stem, masks=masks, train=train)]
    for stage, stride in enumerate(STAGE_STRIDES):
      for block in range(self.blocks_per_stage):
        segments.append(functools.partial(
            self._block, masks=masks, train=train, stage=stage, block=block,
            stride=stride if block == 0 else 1))
    segments.append(functools.partial(self._head, masks=masks))
    return self.run_segments(segments, x, start, stop)

  def _stem(self, x, masks, train):
    gate = stream_gate(0)
    x = self.conv(self.width(gate, STAGE_WIDTHS[0]), 3, out_gate=gate,
                  name='conv')(x, masks)
    x = nn.relu(self.bn(gate, train, name='bn')(x))
    return self.gate(x, masks, gate)

  def _block(self, x, masks, train, stage, block, stride):
    name = f'BasicBlock{stage}.{block}'
    projection = block == 0 and stage > 0
    in_gate = stream_gate(stage - 1 if projection else stage)
    out_gate, inner = stream_gate(stage), inner_gate(stage, block)
    width = self.width(out_gate, STAGE_WIDTHS[stage])
    h = self.conv(self.width(inner, STAGE_WIDTHS[stage]), 3, stride, in_gate,
                  inner, name=f'{name}/conv1')(x, masks)
    h = nn.relu(self.bn(inner, train, name=f'{name}/bn1')(h))
    h = self.gate(h, masks, inner)
    h = self.conv(width, 3, 1, inner, out_gate, name=f'{name}/conv2')(h, masks)
    h = self.bn(out_gate, train, zero_init=True, name=f'{name}/bn2')(h)
    if projection:
      x = self.conv(width, 1, stride, in_gate, out_gate,
                    name=f'{name}/conv3')(x, masks)
      x = self.bn(out_gate, train, name=f'{name}/bn3')(x)
    return self.gate(nn.relu(h + x), masks, out_gate)

  def _head(self, x, masks):
    return self.dense(in_gate=stream_gate(2))(x.mean(axis=(1, 2)), masks)
