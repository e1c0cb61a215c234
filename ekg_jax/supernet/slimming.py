"""Slimming: masks + supernet variables -> a physically smaller network.

Every variable the layer table describes is sliced on its gated axes; those
the masked layer renormalises (kernels, when the model renormalises) are
rescaled to the full variable's L2 norm (ekg_algorithm.md section 7), so the
slimmed network computes what the masked supernet computes.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ekg_jax.files import checkpoint
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.supernet import protocol
from ekg_jax.supernet.model import Supernet


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _unfreeze(tree):
  if isinstance(tree, Mapping):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


def _check_described(variables: Mapping[str, Any], table) -> None:
  for layer in table:
    for variable in layer.variables:
      if variable.collection not in variables:
        continue  # e.g. params only: slim() keeps what it is given
      path = '/'.join((variable.collection, *layer.path, variable.name))
      try:
        value = gates_lib.layer_variables(
            variables[variable.collection], (*layer.path, variable.name))
      except (KeyError, TypeError):
        raise ValueError(f'variables: the model\'s {path} '
                         f'{variable.shape} is missing') from None
      if tuple(np.shape(value)) != tuple(variable.shape):
        raise ValueError(f'variables: {path} has shape {np.shape(value)}; '
                         f'this model\'s is {tuple(variable.shape)}')


def kept_indices(masks: Mapping[str, Any]) -> dict[str, np.ndarray]:
  indices = {g: np.flatnonzero(np.asarray(m) > 0) for g, m in masks.items()}
  empty = [g for g, i in indices.items() if i.size == 0]
  if empty:
    raise ValueError(f'masks keep no channel of gates {empty}; every gate '
                     'needs at least one')
  return indices


def write_kept_channels(path: str, masks: Mapping[str, Any]) -> None:
  """A kept-channels file: JSON {gate: [kept channel indices]}, what
  `finetune.masks` reads in place of a search."""
  checkpoint.write_json_atomic(path, {g: [int(i) for i in idx]
                           for g, idx in kept_indices(masks).items()})


def read_kept_channels(path: str, gates: Mapping[str, gates_lib.GateSpec]
                       ) -> dict[str, np.ndarray]:
  """0/1 masks from a kept-channels file, checked against the model's
  gates; ValueError naming the file and the first bad entry."""
  def bad(why):
    return ValueError(f'kept-channels file {path}: {why}')
  try:
    with open(path) as f:
      kept = json.load(f)
  except (OSError, ValueError) as e:
    raise bad(f'not readable as JSON ({e})') from None
  if not isinstance(kept, dict):
    raise bad('must hold one JSON object {gate: [kept channel indices]}')
  unknown = sorted(set(kept) - set(gates))
  if unknown:
    raise bad(f'names unknown gates {unknown[:4]}; this model has '
              f'{len(gates)}, e.g. {list(gates)[:4]}')
  masks = {}
  for g, idx in kept.items():
    channels = gates[g].channels
    if (not isinstance(idx, list) or not idx
        or not all(isinstance(i, int) and not isinstance(i, bool)
                   for i in idx)):
      raise bad(f'gate {g!r}: needs a non-empty list of channel indices')
    if len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= channels:
      raise bad(f'gate {g!r}: indices must be distinct, in 0..{channels - 1}')
    mask = np.zeros(channels, np.float32)
    mask[idx] = 1.0
    masks[g] = mask
  return masks


def slim(model: Supernet, variables: Mapping[str, Any],
         masks: Mapping[str, Any], table, *,
         input_shape: Optional[Sequence[int]] = None
         ) -> tuple[Supernet, dict]:
  """Returns (slimmed model, its variables) for the channels `masks` keep.

  Args:
    model: the supernet module.
    variables: its variables ({'params': ..., 'batch_stats': ...}).
    masks: gate name -> 0/1 vector; gates not named stay dense.
    table: `gates.layer_table(model, input_shape)`.
    input_shape: one input's shape; given, the variables are checked
      against the model's (`protocol.check_variables`: extra, missing or
      mis-shaped entries refused); else only the gated layers' variables
      are (missing or mis-shaped).
  """
  if input_shape is not None:
    protocol.check_variables(model, variables, input_shape)
  else:
    protocol.check_model(model)
    _check_described(variables, table)
  specs = gates_lib.gate_specs(table)
  gates_lib.validate_gate_names(specs, masks, 'masks')
  for g, m in masks.items():
    gates_lib._check_mask(np.asarray(m), g, specs[g].channels)
  index = kept_indices(masks)
  out = _unfreeze(variables)

  for layer in table:
    for variable in layer.variables:
      if variable.collection not in variables:
        continue
      path = (*layer.path, variable.name)
      value = gates_lib.layer_variables(variables[variable.collection], path)
      new = value
      for axis, side in variable.axes:
        gate = layer.gate(side)
        if gate is not None and gate in index:
          new = jnp.take(new, index[gate], axis=axis)
      if variable.renormalize and new.shape != value.shape:
        new = new * gates_lib.renormalization_factor(value, new)
      _set(out[variable.collection], path, new)
  widths = tuple(sorted((g, int(i.size)) for g, i in index.items()))
  return model.clone(widths=widths), out


def pad_narrow(model: Supernet, variables: Mapping[str, Any],
               input_shape: Sequence[int], width: int
               ) -> tuple[Supernet, dict]:
  """For inference only: every gate of a slimmed network narrower than
  `width` (at most its full width) widened to it with zero channels.

  XLA:CPU runs convolutions with fewer than 8 output channels in emitted
  loops, slower than the same convolution 8 wide (benchmarks/speedup.py's
  narrow table). An added channel has zero weights wherever it is written
  (kernels, biases, BatchNorm scale and offset) and wherever it is read, so
  it stays exactly zero and the logits are the slimmed network's. The
  returned model's widths are the padded ones: count FLOPs and parameters
  on the unpadded network.
  """
  full = gates_lib.gate_specs(gates_lib.layer_table(model.clone(widths=()),
                                                    input_shape))
  now = dict(model.widths)
  padded = {g: max(now.get(g, s.channels), min(width, s.channels))
            for g, s in full.items()}
  wide = model.clone(widths=tuple(sorted(
      (g, w) for g, w in padded.items() if g in now or w < full[g].channels)))
  shapes = traverse_util.flatten_dict(jax.eval_shape(
      wide.init, jax.random.key(0), jnp.zeros((1, *input_shape))))
  out = {}
  for path, value in traverse_util.flatten_dict(variables).items():
    value = np.asarray(value)  # on the host: one XLA program per shape else
    out[path] = np.pad(value, [(0, n - m) for m, n in
                               zip(value.shape, shapes[path].shape)])
  return wide, traverse_util.unflatten_dict(out)
