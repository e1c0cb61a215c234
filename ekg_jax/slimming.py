"""Slimming: masks + supernet variables -> a physically smaller network.

Every variable listed in the layer table is sliced on its gated axes; kernels
are rescaled to the full kernel's L2 norm when the model renormalises masked
kernels (ekg_algorithm.md section 7), so the slimmed network computes what
the masked supernet computes.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from ekg_jax import gates as gates_lib
from ekg_jax.models.common import Supernet


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _unfreeze(tree):
  if isinstance(tree, Mapping):
    return {k: _unfreeze(v) for k, v in tree.items()}
  return tree


def kept_indices(masks: Mapping[str, Any]) -> dict[str, np.ndarray]:
  indices = {g: np.flatnonzero(np.asarray(m) > 0) for g, m in masks.items()}
  empty = [g for g, i in indices.items() if i.size == 0]
  if empty:
    raise ValueError(f'masks keep no channel of gates {empty}; every gate '
                     'needs at least one')
  return indices


def slim(model: Supernet, variables: Mapping[str, Any],
         masks: Mapping[str, Any], table) -> tuple[Supernet, dict]:
  """Returns (slimmed model, its variables) for the channels `masks` keep.

  Args:
    model: the supernet module.
    variables: its variables ({'params': ..., 'batch_stats': ...}).
    masks: gate name -> 0/1 vector; gates not named stay dense.
    table: `gates.layer_table(model, input_shape)`.
  """
  specs = gates_lib.gate_specs(table)
  gates_lib.validate_gate_names(specs, masks, 'masks')
  for g, m in masks.items():
    gates_lib._check_mask(np.asarray(m), g, specs[g].channels)
  index = kept_indices(masks)
  out = _unfreeze(variables)

  def take(array, axis, gate):
    if gate is None or gate not in index:
      return array
    return jnp.take(array, index[gate], axis=axis)

  for layer in table:
    for collection in variables:
      try:
        leaves = gates_lib.layer_variables(variables[collection],
                                          layer.path)
      except KeyError:
        continue
      for name, value in leaves.items():
        if layer.kind == 'bn' or name == 'bias':
          new = take(value, -1, layer.out_gate)
        else:  # kernels: (..., in, out); a depthwise kernel has in = 1
          new = take(value, -1, layer.out_gate)
          if not layer.depthwise:
            new = take(new, -2, layer.in_gate)
          if model.renormalize and new.shape != value.shape:
            new = new * gates_lib.renormalization_factor(value, new)
        _set(out[collection], (*layer.path, name), new)
  widths = tuple(sorted((g, int(i.size)) for g, i in index.items()))
  return model.clone(widths=widths), out
