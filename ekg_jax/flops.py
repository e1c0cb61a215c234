"""FLOPs and parameter counts from a layer table and kept channel counts.

Convention (the reference code's): a FLOP is one multiply-accumulate.
  conv      H_out * W_out * kh * kw * C_in_kept * C_out_kept
            (depthwise: H_out * W_out * kh * kw * C_kept)
  dense     C_in_kept * C_out
  BN        H * W * C_kept * 2, only with `include_bn=True` (the reference
            total; off by default, as most papers count)
Parameters are the trainable ones: conv/dense kernels, dense biases and BN
scale and offset (running statistics are not parameters).
Counting the masked supernet with kept counts k gives exactly the counts of
the physically slimmed network whose gates have widths k.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from ekg_jax.gates import GateSpec, LayerSpec, gate_specs, validate_gate_names


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
  h, w = layer.out_hw
  if layer.kind == 'conv':
    kh, kw = layer.kernel_size
    return h * w * kh * kw * c_out * (1 if layer.depthwise else c_in)
  if layer.kind == 'dense':
    return c_in * c_out
  return h * w * c_out * 2 if include_bn else 0


def layer_params(layer: LayerSpec, c_in: int, c_out: int) -> int:
  if layer.kind == 'conv':
    kh, kw = layer.kernel_size
    return kh * kw * c_out * (1 if layer.depthwise else c_in)
  if layer.kind == 'dense':
    return c_in * c_out + (c_out if layer.use_bias else 0)
  return 2 * c_out


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


def min_kept(gates: Mapping[str, GateSpec]) -> dict[str, int]:
  """Every gate at one channel: the smallest reachable sub-network."""
  return {g: 1 for g in gates}
