"""The slimmed network as an ONNX file (the optional `[onnx]` extra).

`to_onnx(model, variables, path, ...)` converts the same eval-mode forward
pass `export.py` serialises (uint8 images [B, H, W, 3] -> float32 logits,
normalisation inside, symbolic batch) with `jax2onnx`, then prepares the
graph so that ONNX Runtime folds every BatchNorm, ReLU and residual add into
its convolution:

- jax2onnx's Flax `BatchNorm` plugin loses track of the layout after our
  `lax` convolutions (the graph then fails ONNX Runtime's shape inference:
  measured with jax2onnx 0.17.1), so BatchNorm is traced as the plain JAX
  operations it is made of;
- a BatchNorm is then `(x - mean) / sqrt(var + eps) * scale + bias`:
  constant folding (ONNX Runtime's basic level, which is the same on every
  machine) leaves `Sub` and `Div` by constants, which Runtime's
  convolution fusions do not take; they are rewritten as `Add` and `Mul`
  by the negated and inverted constants, which they do take (ResNet-56:
  57 convolutions and a handful of other nodes once loaded).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
from typing import Any, Sequence

import flax.linen as nn
import numpy as np

from ekg_jax.files import checkpoint
from ekg_jax.deploy import export as export_lib
from ekg_jax.supernet import gates

ONNX = 'model.onnx'
INSTALL = "pip install -e '.[onnx]' (or make onnx)"
# The unpatched BatchNorm, taken before jax2onnx patches it during a
# conversion.
_BATCH_NORM_CALL = nn.BatchNorm.__call__


def missing() -> str:
  """Why ONNX export cannot run here ('' when it can)."""
  for name in ('jax2onnx', 'onnx', 'onnxruntime'):
    if importlib.util.find_spec(name) is None:
      return f'ONNX export needs the [onnx] extra ({name} is missing): {INSTALL}'
  return ''


@contextlib.contextmanager
def _plain_batch_norm():
  gates.GatedBatchNorm.__call__ = _BATCH_NORM_CALL
  try:
    yield
  finally:
    del gates.GatedBatchNorm.__call__


def _fold_constants(proto):
  import onnx
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
  options.log_severity_level = 3  # unused-initializer warnings, one per BN
  with tempfile.TemporaryDirectory() as tmp:
    options.optimized_model_filepath = os.path.join(tmp, 'folded.onnx')
    ort.InferenceSession(proto.SerializeToString(), options,
                         providers=['CPUExecutionProvider'])
    return onnx.load(options.optimized_model_filepath)


def _sub_div_as_add_mul(proto) -> int:
  """x - c -> x + (-c), x / c -> x * (1/c) for constant c; returns how many
  nodes changed."""
  from onnx import numpy_helper
  constants = {i.name: i for i in proto.graph.initializer}
  changed = 0
  for node in proto.graph.node:
    if node.op_type not in ('Sub', 'Div') or node.input[1] not in constants:
      continue
    value = numpy_helper.to_array(constants[node.input[1]])
    if node.op_type == 'Div' and not np.all(value):
      continue
    new = -value if node.op_type == 'Sub' else 1 / value
    name = f'{node.input[1]}_{node.op_type.lower()}_{changed}'
    proto.graph.initializer.append(
        numpy_helper.from_array(new.astype(value.dtype), name))
    node.input[1] = name
    node.op_type = 'Add' if node.op_type == 'Sub' else 'Mul'
    changed += 1
  used = {name for node in proto.graph.node for name in node.input}
  kept = [i for i in proto.graph.initializer if i.name in used]
  del proto.graph.initializer[:]
  proto.graph.initializer.extend(kept)
  return changed


def to_onnx(model, variables: Any, path: str, input_shape: Sequence[int],
            mean: Sequence[float], std: Sequence[float]) -> dict:
  """Writes `path` (an ONNX model: uint8 images 'images' [B, H, W, 3] ->
  float32 'logits'); returns its path and node counts."""
  why = missing()
  if why:
    raise export_lib.ExportError(why)
  import jax
  import jax.numpy as jnp
  import jax2onnx
  # Materialised segments are an optimisation barrier for XLA:CPU's
  # training step; ONNX has no such operation and needs none.
  model = model.clone(materialize_segments=False) if hasattr(
      model, 'materialize_segments') else model
  forward = export_lib.forward(model, jax.device_get(variables), mean, std)
  spec = jax.ShapeDtypeStruct(('B', *input_shape), jnp.uint8)
  with _plain_batch_norm():
    proto = jax2onnx.to_onnx(forward, [spec], model_name='ekg_jax',
                             input_names=['images'], output_names=['logits'])
  converted = len(proto.graph.node)
  proto = _fold_constants(proto)
  rewritten = _sub_div_as_add_mul(proto)
  payload = proto.SerializeToString()
  checkpoint.write_atomic(path, lambda f: f.write(payload), binary=True)
  return {'onnx': path, 'onnx_nodes': {'converted': converted,
                                       'folded': len(proto.graph.node),
                                       'sub_div_rewritten': rewritten}}


def main(argv) -> None:
  if len(argv) != 2:
    sys.exit('usage: python -m ekg_jax.export_onnx EXPORT_DIRECTORY')
  try:
    print(json.dumps(export_directory(argv[1])))
  except export_lib.ExportError as e:
    sys.exit(f'error: {e}')


def export_directory(directory: str) -> dict:
  """`model.onnx` beside an `export.py` directory's network.json and
  variables.npz (what the export phase wrote)."""
  model, variables = export_lib.load(directory)
  with open(os.path.join(directory, export_lib.NETWORK)) as f:
    network = json.load(f)
  return to_onnx(model, variables, os.path.join(directory, ONNX),
                 network['input_shape'], network['mean'], network['std'])
