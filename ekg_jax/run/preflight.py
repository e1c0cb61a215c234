"""Checks that need the data's sizes, before any phase computes.

`validate.py` checks the config on its own; these checks read what the
config points at: the splits' sizes and class counts (labels only, no image
decoding), and where the weights come from. A typo found here costs
seconds, not a search, and the workdir stays reusable.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from ekg_jax.data import datasets as data_lib
from ekg_jax.training import input_pipeline
from ekg_jax.data import prepare
from ekg_jax.config import ConfigError
from ekg_jax.run.phases import PHASES


def _reads(todo: Sequence[str], split: str) -> bool:
  """Whether a phase left to run reads `split` ('train' or 'test')."""
  return any(split in PHASES[p].splits for p in todo)


def _size(config, split: str, key: str) -> int:
  d = config.data
  try:
    return data_lib.split_size(d.name, split, d.data_dir)
  except data_lib.SplitError as e:
    raise ConfigError(f'config.{key}={split!r}: {e}; use one of its '
                      'splits, e.g. train, test or a slice like '
                      'train[:1000]') from None


def check_data(config, todo: Sequence[str]) -> dict:
  """Checks the splits the phases in `todo` read; returns what it learnt
  (split sizes, the clamped eval batch size)."""
  d = config.data
  found = {}
  if _reads(todo, 'train'):
    n = found['train'] = _size(config, d.train_split, 'data.train_split')
    for section in ('pretrain', 'finetune'):
      if section in todo and config[section].epochs and (
          config[section].batch_size > n):
        raise ConfigError(
            f'config.{section}.batch_size={config[section].batch_size}: '
            f'larger than the train split {d.train_split!r} ({n} images); '
            'use a smaller batch')
    if 'search' in todo:
      labels = input_pipeline.labels(config, d.train_split)
      smallest = int(np.bincount(labels).min())
      for key in ('val_per_class', 'warmup_per_class'):
        want = d[key] if key == 'val_per_class' or config.search.warmup \
            else 0
        if want > smallest:
          raise ConfigError(
              f'config.data.{key}={want}: the train split '
              f'{d.train_split!r} has only {smallest} images in its '
              'smallest class; use at most that')
  subset = config.landscape.subset
  if 'landscape' in todo and subset:  # held out: after val, before warm-up
    labels = input_pipeline.labels(config, d.train_split)
    need = (subset + 1) * d.val_per_class + d.warmup_per_class
    smallest = int(np.bincount(labels).min())
    if need > smallest:
      raise ConfigError(
          f'config.landscape.subset={subset}: it needs {need} train images '
          f'in each class (the validation subset, {subset} held-out ones and '
          f'the warm-up images), the split {d.train_split!r} has {smallest} '
          'in its smallest class; choose a smaller subset')
  if _reads(todo, 'test'):
    found['test'] = _size(config, d.test_split, 'data.test_split')
  top_k = config.memory_bank.top_k
  if 'memory_bank' in todo and top_k:  # classes from the dataset's metadata
    classes = data_lib.num_classes(d.name, d.data_dir)
    if top_k > classes:
      raise ConfigError(f'config.memory_bank.top_k={top_k}: {d.name} has '
                        f'{classes} classes; use 0..{classes} (0 keeps every '
                        'logit)')
  return found


def check_weights(config, todo: Sequence[str], workdir: str,
                  pretrained: str) -> str:
  """Where the initial weights come from (recorded in the summary): the init
  checkpoint, the workdir's pretrained network, or the pretrain phase about
  to run. Evaluating random weights is refused (it reports chance accuracy
  as a result); other phases on random weights run with a warning."""
  if config.init_checkpoint in prepare.WEIGHTS:
    # Fetched (and verified) now, before any compute; recorded by its
    # published origin, the same on every machine and cache folder.
    prepare.init_checkpoint_path(config)
    asset = prepare.WEIGHTS[config.init_checkpoint].resolved()
    return f'{config.init_checkpoint}: {asset.url} (sha256 {asset.sha256})'
  if config.init_checkpoint:
    return os.path.abspath(config.init_checkpoint)
  if 'pretrain' in todo or os.path.isdir(os.path.join(workdir, pretrained)):
    # The same source before and after the phase ran (a rerun must agree).
    return f'the pretrain phase of this workdir ({pretrained})'
  if 'evaluate' in todo:
    raise ConfigError(
        'config.init_checkpoint=\'\': phase evaluate would measure randomly '
        'initialised weights; set --config.init_checkpoint to a trained '
        'network, or add pretrain to config.phases')
  if todo:
    logging.warning('no init_checkpoint and no pretrained network: phases '
                    '%s run on randomly initialised weights', ','.join(todo))
  return 'random initialisation'
