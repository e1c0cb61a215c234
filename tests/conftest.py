"""Shared fixtures: paths to ../shared and small helpers."""

import os
import pathlib

import jax
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
TFDS_DIR = os.environ.get('TFDS_DATA_DIR') or str(SHARED / 'tfds')
OFFICIAL_RESNET56 = SHARED / 'pretrained' / 'ekg_official_resnet56_cifar10.pkl'

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
