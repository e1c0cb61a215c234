"""Layer descriptions: what each gated layer's variables and cost depend on.

Every gated layer describes itself once, in its `describe_layer` method:
which axis of which variable follows which of its two gates, and which kept
widths its FLOPs are a multiple of. The layer table collects these from one
trace of the model; FLOPs, parameter counts, slimming and the weight-based
importance criteria read only the descriptions, so a new kind of layer
needs its own `describe_layer` and no change anywhere else.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

# The two gated sides of a layer: its input and its output channels.
IN, OUT = 'in', 'out'


@dataclasses.dataclass(frozen=True)
class GateSpec:
  """One prunable channel group.

  Attributes:
    name: unique gate name.
    channels: full width C.
    writers: u in the algorithm, the number of layers computing this gate's
      channels from all of their inputs (convs other than depthwise, dense
      layers); it sets the search step size max(1/C, s/u).
  """
  name: str
  channels: int
  writers: int


@dataclasses.dataclass(frozen=True)
class VariableSpec:
  """One variable of a layer and its gated axes.

  Attributes:
    collection: 'params' or 'batch_stats'.
    name: the variable's name inside the layer ('kernel', 'bias', 'mean').
    shape: its full (unpruned) shape.
    axes: (axis, side) pairs: that axis has one entry per channel of the
      layer's in_gate (side IN) or out_gate (side OUT). Slimming keeps the
      gate's channels there; parameter counts put the kept width there.
    renormalize: a sliced copy is rescaled to the full variable's L2 norm,
      because the masked layer rescales it so (ekg_algorithm.md section 7).
  """
  collection: str
  name: str
  shape: tuple[int, ...]
  axes: tuple[tuple[int, str], ...] = ()
  renormalize: bool = False


@dataclasses.dataclass(frozen=True)
class Cost:
  """One FLOPs term: `factor` times the kept width of each side in `sides`.

  A conv's multiply-accumulates are Cost(H_out*W_out*kh*kw, (IN, OUT)), a
  depthwise conv's Cost(H_out*W_out*kh*kw, (OUT,)), a dense layer's
  Cost(1, (IN, OUT)). A `batch_norm` term counts only when the caller asks
  for normalisation costs (`count_flops(include_bn=True)`).
  """
  factor: int
  sides: tuple[str, ...]
  batch_norm: bool = False


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One gated layer: its gates, variables and cost.

  `in_gate`/`out_gate` are None where the axis is not prunable (image
  channels, classes). A layer whose channels pass through one by one (a
  depthwise conv, a BN) has `in_gate == out_gate`.

  Attributes:
    path: locates the layer's variables in every collection.
    kind: what the layer is ('conv', 'dense', 'bn', 'attention'), for
      display; no code branches on it.
    variables: every variable of the layer, with its gated axes.
    flops: the terms of its FLOPs.
    filters: the 'params' variable whose slices along its OUT axis are the
      filters computing out_gate's channels from all input channels (what
      l1/l2/fpgm score), or a tuple of such variables whose slices together
      make one channel's filter (an attention head: its slice of the query,
      key, value and output kernels); None where the layer computes no new
      channels.
    channel_scale: the 'params' variable multiplying each out_gate channel
      (a BN's gamma: what bn_gamma and gbn score), or None.
    kernel_size, out_hw: the kernel and output sizes, for display.
    segment: index of the model segment holding the layer.
  """
  path: tuple[str, ...]
  kind: str
  in_gate: Optional[str]
  out_gate: Optional[str]
  in_channels: int
  out_channels: int
  variables: tuple[VariableSpec, ...] = ()
  flops: tuple[Cost, ...] = ()
  filters: Union[str, tuple[str, ...], None] = None
  channel_scale: Optional[str] = None
  kernel_size: tuple[int, int] = (1, 1)
  out_hw: tuple[int, int] = (1, 1)
  segment: int = 0

  @property
  def name(self) -> str:
    return '/'.join(self.path)

  def gate(self, side: str) -> Optional[str]:
    return self.in_gate if side == IN else self.out_gate

  def variable(self, name: str) -> VariableSpec:
    for v in self.variables:
      if v.name == name:
        return v
    raise KeyError(f'{self.name} describes no variable {name!r}')


# --------------------------------------------------------------------------
# The layer table: one trace of a model gives every gated layer and gate.


def layer_table(model: nn.Module, input_shape: Sequence[int],
                **apply_kwargs) -> list[LayerSpec]:
  """Traces `model.init` (shapes only, no FLOPs spent) and lists the layers
  that describe themselves (have a `describe_layer(x, y)` method)."""
  records: list[LayerSpec] = []
  segment = [0]

  def record(next_fun, args, kwargs, context):
    if context.method_name == 'enter_segment':
      segment[0] = args[0]
    out = next_fun(*args, **kwargs)
    describe = getattr(context.module, 'describe_layer', None)
    if context.method_name == '__call__' and describe is not None:
      records.append(dataclasses.replace(describe(args[0], out),
                                         segment=segment[0]))
    return out

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.intercept_methods(record):
    shapes = jax.eval_shape(
        lambda x: model.init(jax.random.key(0), x, **apply_kwargs), x)
  for layer in records:
    _check_description(layer, shapes)
  return records


def _check_description(layer: LayerSpec, shapes: Mapping) -> None:
  """A description that disagrees with the layer's variables would slim and
  count the wrong axes without any error: refuse it here."""
  actual = {}
  for collection, tree in shapes.items():
    try:
      leaves = layer_variables(tree, layer.path)
    except KeyError:
      continue
    actual.update({(collection, n): tuple(a.shape) for n, a in leaves.items()})
  described = {(v.collection, v.name): v.shape for v in layer.variables}
  if actual != described:
    raise ValueError(f'{layer.name}: describe_layer lists variables '
                     f'{described}, the layer has {actual}')


def layer_variables(tree: Mapping, path: Sequence[str]) -> Mapping:
  """The variables of the layer at `path` in one collection's tree."""
  for key in path:
    tree = tree[key]
  return tree


def gate_specs(table: Sequence[LayerSpec]) -> dict[str, GateSpec]:
  """Gates in first-use order, with widths and writer counts from the table."""
  channels: dict[str, int] = {}
  writers: dict[str, int] = {}
  for layer in table:
    for gate, width in ((layer.in_gate, layer.in_channels),
                        (layer.out_gate, layer.out_channels)):
      if gate is None:
        continue
      if channels.setdefault(gate, width) != width:
        raise ValueError(f'gate {gate!r} has layers of widths '
                         f'{channels[gate]} and {width} ({layer.name})')
      writers.setdefault(gate, 0)
    if layer.filters is not None and layer.out_gate is not None:
      writers[layer.out_gate] += 1
  return {g: GateSpec(g, channels[g], max(writers[g], 1)) for g in channels}


def first_segments(table: Sequence[LayerSpec]) -> dict[str, int]:
  """Gate -> the first segment with a layer reading or writing the gate.

  Changing a gate's mask leaves every earlier segment's output unchanged.
  """
  first: dict[str, int] = {}
  for layer in table:
    for gate in (layer.in_gate, layer.out_gate):
      if gate is not None:
        first[gate] = min(first.get(gate, layer.segment), layer.segment)
  return first


def num_segments(table: Sequence[LayerSpec]) -> int:
  return max(layer.segment for layer in table) + 1


# --------------------------------------------------------------------------
# The library's door: a model and variables that belong together.

MODEL_CONTRACT = (
    'a Flax module (flax.linen.Module) whose apply(variables, x, masks=..., '
    'train=...) returns logits [batch, classes], with gated layers '
    '(GatedConv, GatedDense, GatedBatchNorm) between its gates')


def check_model(model: Any, what: str = 'model') -> None:
  """A non-model fails here with the contract, not deep inside a trace."""
  if not isinstance(model, nn.Module):
    raise TypeError(f'{what} is a {type(model).__name__}; it must be '
                    f'{MODEL_CONTRACT}')


def check_variables(model: nn.Module, variables: Mapping,
                    input_shape: Sequence[int]) -> tuple[int, ...]:
  """Refuses variables that are not `model`'s, naming the first extra,
  missing or mis-shaped entry: Flax ignores extra parameters, so another
  depth's variables would otherwise run (issue 26). Returns the shape of
  the model's output (its logits) for one image."""
  check_model(model)
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  expected, out = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x)[::-1], x)
  want = _flat(expected)
  have = _flat(variables)
  for path in have:
    if path not in want:
      raise ValueError(
          f'variables: {path} is not a variable of this model '
          f'({type(model).__name__}); were they made for another model?')
  for path, spec in want.items():
    if path not in have:
      raise ValueError(f'variables: the model\'s {path} {tuple(spec.shape)} '
                       'is missing')
    shape = tuple(np.shape(have[path]))
    if shape != tuple(spec.shape):
      raise ValueError(f'variables: {path} has shape {shape}; this model\'s '
                       f'is {tuple(spec.shape)}')
  logits = jax.tree_util.tree_leaves(out)[0]
  return tuple(logits.shape[1:])


def _flat(tree: Mapping) -> dict[str, Any]:
  if not isinstance(tree, Mapping):
    raise TypeError(f'variables are a {type(tree).__name__}; they must be '
                    "a mapping {'params': ..., 'batch_stats': ...}")
  return {'/'.join(map(str, k)): v for k, v in
          traverse_util.flatten_dict(dict(tree)).items()}
