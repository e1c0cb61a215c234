"""FLOPs and parameter counts from a layer table and kept channel counts.

Convention (the reference code's): a FLOP is one multiply-accumulate. Each
layer's FLOPs are the sum of its `Cost` terms (protocol.py), e.g.
  conv      H_out * W_out * kh * kw * C_in_kept * C_out_kept
            (depthwise: H_out * W_out * kh * kw * C_kept)
  dense     C_in_kept * C_out_kept
  BN        H * W * C_kept * 2, only with `include_bn=True` (the reference
            total; off by default, as most papers count)
Parameters are the trainable ones (collection 'params': kernels, biases, BN
scale and offset; running statistics are not parameters), each variable's
size with its gated axes at the kept widths.
Counting the masked supernet with kept counts k gives exactly the counts of
the physically slimmed network whose gates have widths k.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from ekg_jax.supernet.gates import validate_gate_names
from ekg_jax.supernet.protocol import IN, OUT, LayerSpec, gate_specs


def _widths(table: Sequence[LayerSpec], kept: Optional[Mapping[str, int]]):
  gates = gate_specs(table)
  kept = dict(kept or {})
  validate_gate_names(gates, kept, 'kept counts')
  for g, k in kept.items():
    if not 1 <= int(k) <= gates[g].channels:
      raise ValueError(f'kept count for gate {g!r} is {k}; allowed 1..'
                       f'{gates[g].channels}')

  def width(gate, full):
    return full if gate is None else int(kept.get(gate, full))
  return width


def layer_flops(layer: LayerSpec, c_in: int, c_out: int,
                include_bn: bool) -> int:
  kept = {IN: c_in, OUT: c_out}
  return sum(cost.factor * math.prod(kept[side] for side in cost.sides)
             for cost in layer.flops if include_bn or not cost.batch_norm)


def layer_params(layer: LayerSpec, c_in: int, c_out: int) -> int:
  kept = {IN: c_in, OUT: c_out}
  total = 0
  for variable in layer.variables:
    if variable.collection != 'params':
      continue
    shape = list(variable.shape)
    for axis, side in variable.axes:
      shape[axis] = kept[side]
    total += math.prod(shape)
  return total


def count_flops(table: Sequence[LayerSpec],
                kept: Optional[Mapping[str, int]] = None,
                include_bn: bool = False) -> int:
  """Multiply-accumulates of the network whose gates keep `kept` channels."""
  width = _widths(table, kept)
  return sum(layer_flops(l, width(l.in_gate, l.in_channels),
                         width(l.out_gate, l.out_channels), include_bn)
             for l in table)


def count_params(table: Sequence[LayerSpec],
                 kept: Optional[Mapping[str, int]] = None) -> int:
  width = _widths(table, kept)
  return sum(layer_params(l, width(l.in_gate, l.in_channels),
                          width(l.out_gate, l.out_channels)) for l in table)


def flops_rate(table, kept, include_bn: bool = False) -> float:
  """FLOPs(sub-network) / FLOPs(full network): the search's stopping rule."""
  return (count_flops(table, kept, include_bn) /
          count_flops(table, None, include_bn))
