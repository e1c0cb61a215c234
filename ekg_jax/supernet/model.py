"""Pieces shared by every supernet family."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax

from ekg_jax.runtime import backend
from ekg_jax.supernet import gates as gates_lib

Widths = tuple[tuple[str, int], ...]
# Compute dtypes a model (and a training recipe) may run in; parameters and
# optimizer state stay float32.
COMPUTE_DTYPES = ('float32', 'bfloat16')


class Supernet(nn.Module):
  """Attributes every model has; subclasses define `__call__`.

  `widths` overrides the width of named gates: a slimmed network is the same
  model class with smaller widths. `renormalize` rescales masked kernels to
  the full kernel's L2 norm (section 7). `straight_through` makes gates pass
  gradients through masked channels, as the reference code does (section 3).
  """
  num_classes: int = 10
  widths: Widths = ()
  renormalize: bool = True
  straight_through: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = None  # compute dtype; params stay float32
  # Mesh axis over which BN averages batch statistics (cross-device BN when
  # the model runs inside `shard_map`); None: per-device statistics.
  bn_axis_name: Optional[str] = None
  # Materialise each segment's output (an optimisation barrier). None: as
  # `backend.BackendPolicy.materialize_segments` says (on CPU only).
  materialize_segments: Optional[bool] = None

  def width(self, gate: str, default: int) -> int:
    return dict(self.widths).get(gate, default)

  def conv(self, features, kernel_size, strides=1, in_gate=None,
           out_gate=None, depthwise=False, name=None):
    return gates_lib.GatedConv(
        features=features, kernel_size=(kernel_size, kernel_size),
        strides=strides, in_gate=in_gate, out_gate=out_gate,
        depthwise=depthwise, renormalize=self.renormalize, dtype=self.dtype,
        name=name)

  def bn(self, gate, train: bool, zero_init: bool = False, name=None):
    return gates_lib.GatedBatchNorm(
        use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, gate=gate, dtype=self.dtype,
        axis_name=self.bn_axis_name,
        scale_init=(nn.initializers.zeros if zero_init
                    else nn.initializers.ones), name=name)

  def dense(self, in_gate, name='fc', features=None, out_gate=None):
    """The classifier by default; a hidden layer with `features` and an
    `out_gate` (then prunable like a conv's output channels)."""
    return gates_lib.GatedDense(
        self.num_classes if features is None else features, in_gate=in_gate,
        out_gate=out_gate, renormalize=self.renormalize, dtype=self.dtype,
        name=name)

  def run_segments(self, segments: Sequence[Callable[[jax.Array], jax.Array]],
                   x: jax.Array, start: int = 0,
                   stop: Optional[int] = None) -> jax.Array:
    """Runs segments[start:stop] in order.

    A model is a chain of segments (stem, blocks, head) passing one tensor.
    Running part of the chain lets the search share the computation before
    the first layer a candidate's gate touches (`LayerSpec.segment`).
    """
    stop = len(segments) if stop is None else stop
    materialize = self.materialize_segments
    if materialize is None:
      materialize = backend.policy().materialize_segments
    for index in range(start, stop):
      self.enter_segment(index)
      x = segments[index](x)
      if materialize:
        x = jax.lax.optimization_barrier(x)
    return x

  def enter_segment(self, index: int) -> None:
    """Marks the start of segment `index`; `gates.layer_table` listens."""
    del index

  def gate(self, x: jax.Array, masks: gates_lib.Masks, gate: Optional[str]):
    if gate is None:
      return x
    return gates_lib.apply_gate(x, masks, gate, self.straight_through)


def forward_train(model: nn.Module, variables, x, **kwargs):
  """(outputs, updated batch statistics) of one forward pass in training
  mode, BN normalising with the batch's own statistics: the one way every
  phase runs it. Training keeps the updated running statistics; the search's
  evaluations and the memory bank drop them. A model without BN returns
  `{}` for them."""
  out, updates = model.apply(variables, x, train=True,
                             mutable=['batch_stats'], **kwargs)
  return out, updates.get('batch_stats', {})
