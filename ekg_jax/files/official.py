"""The authors' pickled TensorFlow weights, read without running anything
a pickle names, and mapped onto a Flax model's variables."""

from __future__ import annotations

import os
import pickle
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from ekg_jax.files.checkpoint import CheckpointError

# TensorFlow variable -> (collection, Flax variable name).
_TF_NAMES = {
    'kernel': ('params', 'kernel'),
    'biases': ('params', 'bias'),
    'bias': ('params', 'bias'),
    'gamma': ('params', 'scale'),
    'beta': ('params', 'bias'),
    'moving_mean': ('batch_stats', 'mean'),
    'moving_variance': ('batch_stats', 'var'),
}


class _ArraysOnly(pickle.Unpickler):
  """Unpickles dicts, lists, scalars and NumPy arrays, nothing else.

  A pickle names the callables that rebuild its objects, and `pickle.load`
  calls them: a file from a stranger can run any code. The authors'
  checkpoints need only NumPy's array reconstruction, so every other global
  is refused before it is called.
  """
  ALLOWED = {
      ('numpy.core.multiarray', '_reconstruct'),
      ('numpy._core.multiarray', '_reconstruct'),
      ('numpy', 'ndarray'),
      ('numpy', 'dtype'),
      ('numpy.core.multiarray', 'scalar'),
      ('numpy._core.multiarray', 'scalar'),
      ('numpy.core.numeric', '_frombuffer'),  # pickle protocol 5
      ('numpy._core.numeric', '_frombuffer'),
      ('collections', 'OrderedDict'),
  }

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise CheckpointError(
          f'refusing to load {module}.{name} from a pickle: only dicts, '
          'lists, numbers and NumPy arrays are read from .pkl checkpoints '
          '(anything else could run code)')
    return super().find_class(module, name)


def read_pickled_arrays(path: str) -> dict:
  """A dict of arrays from a .pkl file, without running its code; any
  damage is reported as a CheckpointError naming the file."""
  try:
    with open(path, 'rb') as f:
      raw = _ArraysOnly(f).load()
  except CheckpointError as e:
    raise CheckpointError(f'{path}: {e}') from None
  except Exception as e:  # pickle raises many kinds on damaged files
    raise CheckpointError(
        f'{path} is not a readable .pkl checkpoint (empty, truncated or '
        f'another format: {type(e).__name__}: {str(e)[:120]}); pass the '
        'authors\' .pkl or a checkpoint directory written by ekg_jax') from None
  if not isinstance(raw, dict):
    raise CheckpointError(f'{path} holds a {type(raw).__name__}, not the '
                          'dict of named arrays of an official checkpoint')
  return raw


def load_official_pkl(path: str, reference: Mapping[str, Any]) -> dict:
  """Maps the authors' pickled TensorFlow weights onto Flax variables.

  `reference` holds the target model's variables (or their shapes, from
  `jax.eval_shape(model.init, ...)`). TF names `scope/layer/var:0` map to
  module `scope/layer`, so the Flax CIFAR ResNet's names match 1:1. Missing,
  unexpected or mis-shaped entries raise one CheckpointError listing them.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'init_checkpoint {path!r} does not exist')
  raw = read_pickled_arrays(path)
  expected = traverse_util.flatten_dict(reference)
  loaded, unknown = {}, []
  for key, value in raw.items():
    if key.startswith('__'):
      continue  # MATLAB-style header entries
    module, _, var = key.removesuffix(':0').rpartition('/')
    if var not in _TF_NAMES or not module:
      unknown.append(key)
      continue
    collection, name = _TF_NAMES[var]
    loaded[(collection, module, name)] = (key, np.asarray(value))
  unknown += [key for p, (key, _) in loaded.items() if p not in expected]
  missing = ['/'.join(p) for p in expected if p not in loaded]
  mismatched = []
  for p, (key, value) in loaded.items():
    if p in expected:
      shape = tuple(expected[p].shape)
      if value.size == int(np.prod(shape)) and value.ndim != len(shape):
        value = value.reshape(shape)  # BN vectors are stored as (1,1,1,C)
      if value.shape != shape:
        mismatched.append(f'{key}: checkpoint {value.shape} vs model {shape}')
      loaded[p] = (key, value)
  if unknown or missing or mismatched:
    lines = [f'{path} does not fit the model:']
    for title, items in (('unexpected keys', unknown),
                         ('missing variables', missing),
                         ('shape mismatches', mismatched)):
      if items:
        lines.append(f'  {len(items)} {title}: ' + ', '.join(items[:12]) +
                     (' ...' if len(items) > 12 else ''))
    raise CheckpointError('\n'.join(lines))
  return traverse_util.unflatten_dict(
      {p: value.astype(expected[p].dtype) for p, (_, value) in loaded.items()})
