"""VGG-16 for CIFAR as a masked supernet.

The CIFAR VGG-16 of the pruning literature (e.g. HRank, Lin et al. 2020):
13 3x3 convs with BN + ReLU, 2x2 max-pooling where the cfg says 'M', then a
hidden fully connected layer (512 -> 512, BN + ReLU) and the classifier.
After the fifth pooling a 32x32 image is 1x1, so the spatial mean before
the hidden layer is the usual flatten (and other sizes still fit).

Gates (each written by one layer):
- `conv{i}` — the output channels of conv i (i = 0..12).
- `fc1` — the hidden layer's outputs (its kernel's output axis and bias).

Segments: each conv block (conv, BN, ReLU, gate, pooling), the hidden
layer, the classifier.
"""

from __future__ import annotations

import functools
from typing import Optional, Union

import flax.linen as nn
import jax

from ekg_jax.supernet.gates import Masks
from ekg_jax.supernet.model import Supernet

VGG16 = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M',
         512, 512, 512, 'M')
HIDDEN = 512
HIDDEN_GATE = 'fc1'


def conv_gate(index: int) -> str:
  return f'conv{index}'


class CifarVGG(Supernet):
  cfg: tuple[Union[int, str], ...] = VGG16
  hidden: int = HIDDEN

  @nn.compact
  def __call__(self, x: jax.Array, masks: Masks = None, train: bool = False,
               start: int = 0, stop: Optional[int] = None) -> jax.Array:
    segments, in_gate = [], None
    for position, features in enumerate(self.cfg):
      if features == 'M':
        continue
      index = len(segments)
      pool = self.cfg[position + 1:position + 2] == ('M',)
      segments.append(functools.partial(
          self._conv_block, masks=masks, train=train, index=index,
          features=features, in_gate=in_gate, pool=pool))
      in_gate = conv_gate(index)
    segments.append(functools.partial(self._hidden, masks=masks, train=train,
                                      in_gate=in_gate))
    segments.append(functools.partial(self._classifier, masks=masks))
    return self.run_segments(segments, x, start, stop)

  def _conv_block(self, x, masks, train, index, features, in_gate, pool):
    gate = conv_gate(index)
    x = self.conv(self.width(gate, features), 3, in_gate=in_gate,
                  out_gate=gate, name=f'conv{index}')(x, masks)
    x = nn.relu(self.bn(gate, train, name=f'bn{index}')(x))
    x = self.gate(x, masks, gate)
    if pool:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    return x

  def _hidden(self, x, masks, train, in_gate):
    x = self.dense(in_gate, name='fc1', out_gate=HIDDEN_GATE,
                   features=self.width(HIDDEN_GATE, self.hidden))(
                       x.mean(axis=(1, 2)), masks)
    x = nn.relu(self.bn(HIDDEN_GATE, train, name='fc1_bn')(x))
    return self.gate(x, masks, HIDDEN_GATE)

  def _classifier(self, x, masks):
    return self.dense(in_gate=HIDDEN_GATE, name='fc2')(x, masks)
