"""Shared fixtures: paths to ../shared and small helpers."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np
import pytest

from ekg_jax.supernet import gates
from ekg_jax.supernet.model import Supernet

REPO = pathlib.Path(__file__).resolve().parents[1]
HELPERS = REPO / 'tests' / 'helpers'
# Tests import the helpers (fake datasets, shared small pieces) by name.
sys.path.insert(0, str(HELPERS))
SHARED = REPO.parent / 'shared'
TFDS_DIR = os.environ.get('TFDS_DATA_DIR') or str(SHARED / 'tfds')
OFFICIAL_RESNET56 = SHARED / 'pretrained' / 'ekg_official_resnet56_cifar10.pkl'

# The caches (ekg_jax/files/cache.py) of everything the tests run, CLI
# subprocesses included, go to a folder of this session's, not the user's
# ~/.cache: one folder for the whole session, made by the process that
# loads this file first (pytest-xdist's workers inherit it), so a program
# one CLI run compiled is read by the next run on either worker. The
# session runs the same small programs again and again, so JAX keeps every
# program, not only those over a second to compile (its own setting, which
# ekg_jax leaves alone where set); the tests' own programs go there too.
if os.environ.get('EKG_JAX_TEST_SESSION') is None:
  os.environ['EKG_JAX_TEST_SESSION'] = str(os.getpid())
  os.environ['EKG_JAX_CACHE'] = tempfile.mkdtemp(prefix='ekg_jax_test_cache_')
  atexit.register(shutil.rmtree, os.environ['EKG_JAX_CACHE'], True)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
jax.config.update('jax_compilation_cache_dir',
                  os.path.join(os.environ['EKG_JAX_CACHE'], 'xla'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)

# Tests never reach the internet: a dataset or weights missing in a test
# would be fetched from a port nothing listens on, and fail in one line.
# Tests that serve archives (tests/helpers/fake_cifar.py) point these elsewhere.
for _asset in ('CIFAR10', 'CIFAR100', 'OFFICIAL'):
  os.environ[f'EKG_JAX_{_asset}_URL'] = f'http://127.0.0.1:9/{_asset}'

# Under CI (CI=true), where ../shared is always beside the checkout, a test
# that needs the shared data runs and fails without it instead of skipping:
# a green CI can never mean "every end-to-end test skipped".
STRICT = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')
HAVE_CIFAR10 = (pathlib.Path(TFDS_DIR) / 'cifar10').is_dir()
HAVE_OFFICIAL = OFFICIAL_RESNET56.is_file()


def _needs(present: bool, reason: str):
  return pytest.mark.skipif(not present and not STRICT, reason=reason)


needs_cifar10 = _needs(HAVE_CIFAR10,
                       'prepared CIFAR-10 not found (set TFDS_DATA_DIR)')
needs_official = _needs(HAVE_OFFICIAL, 'official ResNet-56 not found')


def perturb(variables, seed=0, scale=0.1):
  """Random, non-trivial variables: BN statistics and scales moved off their
  initial values so masked and slimmed paths can disagree if they differ."""
  rng = np.random.default_rng(seed)
  noisy = jax.tree_util.tree_map(
      lambda a: a + scale * rng.standard_normal(a.shape).astype(a.dtype),
      variables)
  if 'batch_stats' in noisy:
    noisy['batch_stats'] = jax.tree_util.tree_map(
        lambda a: np.abs(a) + 0.5, noisy['batch_stats'])
  return noisy


def random_variables(model, x, seed=0):
  """Variables of `model.init`'s tree, shapes and dtypes, drawn with NumPy
  as `perturb(model.init(...))` would leave them: kernels He-normal,
  scales 1 + 0.1 N, biases and BN means 0.1 N, BN variances |N| + 0.5.

  For equality tests (segments, optimisation barriers) which need
  non-trivial variables, not initialised ones: an eager `model.init`
  compiles each initialiser op on its own (ResNet-50: ~65 s on CI's CPU,
  this: ~2 s, the trace of `jax.eval_shape`)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    n = rng.standard_normal(leaf.shape).astype(leaf.dtype)
    name = getattr(path[-1], 'key', None)
    if leaf.ndim >= 2:  # kernels: fan-in is every axis but the last
      return n * np.sqrt(2.0 / np.prod(leaf.shape[:-1])).astype(leaf.dtype)
    if path[0].key == 'batch_stats':
      return np.abs(n) + 0.5 if name == 'var' else 0.1 * n
    return 1 + 0.1 * n if name == 'scale' else 0.1 * n

  return jax.tree_util.tree_map_with_path(draw, shapes)


class ChannelScale(nn.Module):
  """A layer kind the library does not know: a learned per-channel factor.

  Its `describe_layer` is all FLOPs, slimming and the criteria learn of it:
  a test of the extension path for new layer kinds.
  """
  gate: str

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    return x * scale

  @nn.nowrap
  def describe_layer(self, x, y):
    del y
    c = x.shape[-1]
    return gates.LayerSpec(
        path=self.path, kind='channel scale', in_gate=self.gate,
        out_gate=self.gate, in_channels=c, out_channels=c,
        variables=(gates.VariableSpec('params', 'scale', (c,),
                                      ((-1, gates.OUT),)),),
        flops=(gates.Cost(1, (gates.OUT,)),), channel_scale='scale')


class HiddenDenseNet(Supernet):
  """Input (8 features) -> dense 'fc1' (6, gate h1) -> BN, ReLU -> dense
  'fc2' (5, gate h2) -> ChannelScale, ReLU -> classifier: hidden dense
  layers pruned on both kernel axes and their biases."""

  @nn.compact
  def __call__(self, x, masks=None, train=False, start=0, stop=None):
    x = self.dense(None, name='fc1', features=self.width('h1', 6),
                   out_gate='h1')(x, masks)
    x = self.gate(nn.relu(self.bn('h1', train, name='fc1_bn')(x)), masks,
                  'h1')
    x = self.dense('h1', name='fc2', features=self.width('h2', 5),
                   out_gate='h2')(x, masks)
    x = self.gate(nn.relu(ChannelScale('h2', name='scale')(x)), masks, 'h2')
    return self.dense('h2', name='fc3')(x, masks)


def require_onnx() -> None:
  """For a test of the ONNX path: skips without the [onnx] extra, except in
  CI, which installs it first (`make onnx`) and so fails instead."""
  from ekg_jax.deploy import export_onnx  # pylint: disable=g-import-not-at-top
  missing = export_onnx.missing()
  if missing:
    if os.environ.get('CI'):
      pytest.fail(f'CI installs the [onnx] extra first (make onnx): {missing}')
    pytest.skip(missing)
