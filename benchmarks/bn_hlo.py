"""What XLA:CPU makes of a search segment's elementwise work: the optimised
HLO of conv -> training-mode BatchNorm -> ReLU -> mask -> conv ->
BatchNorm -> mask -> residual add -> ReLU at ResNet-56's stage-0 shape
(256x32x32x16), one line per top-level instruction that reads or writes
activations (convolutions and fusions). docs/performance.md reads it:
each BatchNorm's statistics are two reductions over the convolution's
output, then one loop fusion normalises.

  python benchmarks/bn_hlo.py
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from ekg_jax.runtime import xla_config  # noqa: F401  the toolkit's XLA flags


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, mask):
    y = nn.Conv(x.shape[-1], (3, 3), use_bias=False)(x)
    y = nn.relu(nn.BatchNorm(use_running_average=False)(y)) * mask
    y = nn.Conv(x.shape[-1], (3, 3), use_bias=False)(y)
    y = nn.BatchNorm(use_running_average=False)(y) * mask
    return nn.relu(y + x)


def instructions(shape=(256, 32, 32, 16)) -> list[tuple[str, str, str]]:
  """(name, kind, result shape) of the entry computation's convolutions and
  fusions, in order."""
  model = Block()
  x, mask = jnp.ones(shape), jnp.ones(shape[-1:])
  variables = model.init(jax.random.key(0), x, mask)
  f = jax.jit(lambda v, x, m: model.apply(v, x, m, mutable=['batch_stats'])[0])
  text = f.lower(variables, x, mask).compile().as_text()
  out = []
  for line in text[text.index('ENTRY'):].splitlines()[1:]:
    m = re.match(r'\s*(?:ROOT )?(%[\w.\-]+) = (\S+) (fusion|convolution|'
                 r'custom-call)\(', line)
    if m:
      out.append((m.group(1), m.group(3), m.group(2)))
  return out


def main() -> None:
  for name, kind, shape in instructions():
    print(f'{kind:12s} {shape:32s} {name}')


if __name__ == '__main__':
  main()
