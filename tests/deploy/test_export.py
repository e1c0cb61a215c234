"""Export (issue 16): the slimmed network as a jax.export program that a
process without ekg_jax or flax runs, and as widths + arrays that `load`
rebuilds; damaged files give one clear error."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10, perturb, require_onnx
from ekg_jax import config as config_lib
from ekg_jax.data import datasets
from ekg_jax.deploy import export, export_onnx
from ekg_jax.supernet import gates, slimming
from ekg_jax.run import phases as phases_lib
from ekg_jax.run import validate
from ekg_jax.models import create_model

MEAN, STD = config_lib.REFERENCE_MEAN, config_lib.REFERENCE_STD

# Run in a fresh interpreter that refuses to import ekg_jax or flax.
LOADER = r'''
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('ekg_jax', 'flax'):
      raise ImportError(f'the exported program needed {name}')
sys.meta_path.insert(0, Refuse())
import numpy as np
from jax import export  # older JAX has no jax.export attribute before this
with open(sys.argv[1], 'rb') as f:
  exported = export.deserialize(bytearray(f.read()))
np.save(sys.argv[3], np.asarray(exported.call(np.load(sys.argv[2]))))
'''
# With the [onnx] extra (make onnx): convert an exported directory, run it
# with ONNX Runtime at two batch sizes, in a fresh interpreter (jax2onnx
# patches Flax modules while it converts).
ONNX_RUNNER = r'''
import sys, numpy as np, onnxruntime as ort
from ekg_jax.deploy import export_onnx
written = export_onnx.export_directory(sys.argv[1])
session = ort.InferenceSession(written['onnx'],
                               providers=['CPUExecutionProvider'])
images = np.load(sys.argv[2])
for i, batch in enumerate((images, images[:2])):
  np.save(f'{sys.argv[3]}{i}.npy', session.run(['logits'], {'images': batch})[0])
'''


@pytest.fixture(scope='module')
def slimmed():
  model = create_model('resnet20')
  variables = perturb(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))),
                      seed=1)
  table = gates.layer_table(model, (32, 32, 3))
  specs = gates.gate_specs(table)
  rng = np.random.default_rng(2)
  masks = {g: jnp.asarray(rng.permutation(s.channels) < max(1, s.channels // 3),
                          jnp.float32) for g, s in specs.items()}
  return slimming.slim(model, variables, masks, table)


def _logits(model, variables, images):
  return np.asarray(model.apply(
      variables, datasets.normalize(jnp.asarray(images), MEAN, STD), train=False))


@needs_cifar10
def test_exported_program_runs_without_ekg_jax_and_matches_the_model(
    slimmed, tmp_path):
  model, variables = slimmed
  # Padded for XLA:CPU inside the program: the slimmed network's logits.
  paths = export.export(model, variables, str(tmp_path / 'e'), 'resnet20',
                        (32, 32, 3), MEAN, STD, pad_to=8)
  widths = dict(model.widths)
  assert paths['program_padded_gates'] == {
      g: [k, 8] for g, k in widths.items() if k < 8}
  assert paths['program_padded_gates']  # stage 0 keeps 5 of 16 channels
  images = datasets.load_split('cifar10', 'test[:7]', TFDS_DIR).images
  want = _logits(model, variables, images)
  np.save(tmp_path / 'x.npy', images)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  subprocess.run([sys.executable, '-c', LOADER, paths['program'],
                  str(tmp_path / 'x.npy'), str(tmp_path / 'y.npy')],
                 cwd=tmp_path, env=env, check=True, timeout=300)
  got = np.load(tmp_path / 'y.npy')
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  exported = export.load_program(paths['program'])
  assert exported.platforms == export.PLATFORMS
  # The batch is symbolic: another batch size runs the same program.
  np.testing.assert_allclose(exported.call(jnp.asarray(images[:2])),
                             want[:2], rtol=1e-5, atol=1e-5)


def test_load_rebuilds_the_slimmed_network_without_a_config(slimmed,
                                                            tmp_path):
  model, variables = slimmed
  export.export(model, variables, str(tmp_path), 'resnet20', (32, 32, 3),
                MEAN, STD, platforms=('cpu',))
  rebuilt, rebuilt_variables = export.load(str(tmp_path))
  assert rebuilt.widths == model.widths
  x = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), np.uint8)
  np.testing.assert_array_equal(_logits(rebuilt, rebuilt_variables, x),
                                _logits(model, variables, x))


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'missing'])
def test_a_damaged_export_is_one_clear_error(slimmed, tmp_path, damage):
  model, variables = slimmed
  paths = export.export(model, variables, str(tmp_path), 'resnet20',
                        (32, 32, 3), MEAN, STD, platforms=('cpu',))
  program = paths['program']
  payload = open(program, 'rb').read()
  if damage == 'missing':
    os.remove(program)
  else:
    with open(program, 'wb') as f:
      f.write(payload[:len(payload) // 3] if damage == 'truncate'
              else b'\x00not a program' * 50)
  with pytest.raises(export.ExportError, match='model.jax'):
    export.load_program(program)
  os.remove(paths['variables'])
  with pytest.raises(export.ExportError, match='export it again'):
    export.load(str(tmp_path))


def test_export_before_finetune_names_the_phase_to_run(tmp_path):
  config = config_lib.default_config()
  with pytest.raises(config_lib.ConfigError,
                     match=r"'export' needs a finished 'finetune'.*"
                     r"--config.phases=finetune"):
    phases_lib.validate_workdir(config, ['export'], {'search': {'steps': 3}})


@pytest.mark.slow
@needs_cifar10
def test_onnx_file_matches_the_model_in_onnx_runtime(slimmed, tmp_path):
  require_onnx()
  model, variables = slimmed
  export.export(model, variables, str(tmp_path / 'e'), 'resnet20',
                (32, 32, 3), MEAN, STD, platforms=('cpu',))
  images = datasets.load_split('cifar10', 'test[:7]', TFDS_DIR).images
  np.save(tmp_path / 'x.npy', images)
  subprocess.run([sys.executable, '-c', ONNX_RUNNER, str(tmp_path / 'e'),
                  str(tmp_path / 'x.npy'), str(tmp_path / 'y')],
                 cwd=REPO, check=True, timeout=600)
  want = _logits(model, variables, images)
  np.testing.assert_allclose(np.load(tmp_path / 'y0.npy'), want, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(np.load(tmp_path / 'y1.npy'), want[:2],
                             rtol=1e-4, atol=1e-4)


def test_onnx_without_the_extra_is_one_config_error(monkeypatch):
  real = export_onnx.importlib.util.find_spec
  monkeypatch.setattr(export_onnx.importlib.util, 'find_spec',
                      lambda name: None if name == 'jax2onnx' else real(name))
  config = config_lib.default_config()
  config.export.onnx = True
  with pytest.raises(config_lib.ConfigError,
                     match=r"export.onnx.*jax2onnx is missing.*\[onnx\]"):
    validate.validate_config(config)
