"""The slimmed network as artifacts that outlive this toolkit.

`export(model, variables, directory, ...)` writes, for a slimmed (or any)
network:
- `model.jax`: the eval-mode forward pass, uint8 images [B, H, W, 3] ->
  float32 logits [B, classes], normalisation included, serialised with
  `jax.export` for CPU, CUDA and TPU with a symbolic batch size. A JAX
  process loads and calls it with
  `from jax import export; export.deserialize(...).call(x)`: no ekg_jax,
  flax or config needed;
- `network.json` (the model's registry name and attributes, the widths
  among them, the input shape and the normalisation) and `variables.npz`
  (every array, keyed 'collection::module::...::name', since module names
  may hold '/'): `load(directory)` rebuilds the Flax model and its
  variables from them in one call.

Compatibility: the JAX that exported an artifact loads it, and releases
near it; much older or newer ones refuse it (measured: docs/deployment.md,
"Which JAX loads model.jax"), so export with the JAX that will run it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
# jax.export is a submodule that `import jax` loads only in newer releases
# (jax 0.7.2 has no `jax.export` attribute until it is imported).
from jax import export as jax_export

from ekg_jax.files import checkpoint
from ekg_jax.supernet import slimming
from ekg_jax.data import datasets as data_lib

PROGRAM = 'model.jax'
NETWORK = 'network.json'
VARIABLES = 'variables.npz'
PLATFORMS = ('cpu', 'cuda', 'tpu')
SEP = '::'  # joins a variable's path in variables.npz
# Model attributes that describe the network (not how it runs here).
_ATTRIBUTES = ('num_classes', 'widths', 'renormalize', 'bn_epsilon')


class ExportError(ValueError):
  """A damaged, truncated or foreign export file."""


def forward(model, variables, mean, std):
  """The exported function: uint8 images -> float32 logits, eval mode."""
  def logits(images):
    x = data_lib.normalize(images, mean, std)
    return model.apply(variables, x, train=False).astype(jnp.float32)
  return logits


def export(model, variables: Any, directory: str, model_name: str,
           input_shape: Sequence[int], mean: Sequence[float],
           std: Sequence[float], platforms: Sequence[str] = PLATFORMS,
           pad_to: int = 1) -> dict:
  """Writes the three artifacts into `directory`; returns their paths, the
  exported platforms and the gates the program pads. `model_name`: the
  registry name that `load` rebuilds (`ekg_jax.models.MODELS`). `pad_to` >
  1: inside `model.jax` only, gates narrower than it are widened with zero
  channels (`slimming.pad_narrow`: the same logits, faster on XLA:CPU);
  the arrays and `load` keep the real widths."""
  os.makedirs(directory, exist_ok=True)
  variables = jax.device_get(variables)
  program_model, program_variables = model, variables
  if pad_to > 1:
    program_model, program_variables = slimming.pad_narrow(
        model, variables, input_shape, pad_to)
  real, wide = dict(model.widths), dict(program_model.widths)
  padded = {g: [real.get(g, w), w] for g, w in wide.items()
            if real.get(g, w) != w}
  batch, = jax_export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.uint8)
  exported = jax_export.export(
      jax.jit(forward(program_model, program_variables, mean, std)),
      platforms=tuple(platforms))(spec)
  program = os.path.join(directory, PROGRAM)
  payload = bytes(exported.serialize())
  checkpoint.write_atomic(program, lambda f: f.write(payload), binary=True)
  flat = {SEP.join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(variables).items()}
  checkpoint.write_npz_atomic(os.path.join(directory, VARIABLES), **flat)
  # A model class may name the attributes that fix its architecture (the
  # ViT's depth, embed_dim, ...), so `load` rebuilds any size of it.
  names = _ATTRIBUTES + tuple(getattr(type(model), 'architecture', ()))
  network = {'model': model_name,
             'attributes': {a: getattr(model, a) for a in names
                            if hasattr(model, a)},
             'input_shape': list(input_shape), 'mean': list(mean),
             'std': list(std), 'platforms': list(platforms),
             'program_padded_gates': padded,
             'jax_version': jax.__version__}
  network['attributes']['widths'] = [list(w) for w in
                                     network['attributes'].get('widths', ())]
  checkpoint.write_json_atomic(os.path.join(directory, NETWORK), network)
  return {'program': program, 'platforms': list(platforms),
          'program_padded_gates': padded,
          'network': os.path.join(directory, NETWORK),
          'variables': os.path.join(directory, VARIABLES)}


def load_program(path: str) -> jax_export.Exported:
  """The exported forward pass; a damaged file is one ExportError."""
  try:
    with open(path, 'rb') as f:
      payload = f.read()
  except OSError as e:
    raise ExportError(f'{path}: cannot read ({e.strerror})') from None
  try:
    return jax_export.deserialize(bytearray(payload))
  except Exception as e:  # flatbuffers and MLIR raise many kinds
    raise ExportError(
        f'{path} is not a readable jax.export artifact (truncated or '
        f'damaged: {type(e).__name__}: {str(e).splitlines()[0][:160]}); '
        'export it again') from None


def load(directory: str):
  """(model, variables) of an exported network, rebuilt from
  `network.json` and `variables.npz` alone (no training config)."""
  from ekg_jax.models import create_model
  path = os.path.join(directory, NETWORK)
  try:
    with open(path) as f:
      network = json.load(f)
    attributes = dict(network['attributes'])
    attributes['widths'] = tuple((g, int(w)) for g, w in
                                 attributes.get('widths', ()))
    model = create_model(network['model'], **attributes)
    with np.load(os.path.join(directory, VARIABLES)) as z:
      flat = {tuple(k.split(SEP)): z[k] for k in z.files}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ExportError(f'{directory} holds no readable exported network '
                      f'({type(e).__name__}: {e}); export it again') from None
  variables = traverse_util.unflatten_dict(flat)
  reference = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(
      (1, *network['input_shape']), jnp.float32))
  want = {k: v.shape for k, v in
          traverse_util.flatten_dict(reference).items()}
  got = {k: v.shape for k, v in flat.items()}
  if want != got:
    raise ExportError(f'{directory}: variables.npz does not fit the '
                      f'{network["model"]} network that network.json '
                      'describes; export it again')
  return model, variables
