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

needs_cifar10 = pytest.mark.skipif(
    not (pathlib.Path(TFDS_DIR) / 'cifar10').is_dir(),
    reason='prepared CIFAR-10 not found (set TFDS_DATA_DIR)')
needs_official = pytest.mark.skipif(not OFFICIAL_RESNET56.is_file(),
                                    reason='official ResNet-56 not found')


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
