"""Whole-config validation, before any data is read or anything compiled.

Each rule names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import os

import ml_collections

from ekg_jax import config as config_lib
from ekg_jax import finetune, importance, search, teacher
from ekg_jax.models import MODELS


ConfigError = config_lib.ConfigError


# Datasets the toolkit knows: classes and image size (the input pipeline for
# ImageNet is another issue; its configs still validate).
DATASETS = {
    'cifar10': dict(num_classes=10, image_size=32),
    'cifar100': dict(num_classes=100, image_size=32),
    'imagenet2012': dict(num_classes=1000, image_size=224),
}

CHOICES = {
    'search.teacher': teacher.MODES,
    'search.criterion': importance.CRITERIA,
    'search.allocation': ('greedy', 'uniform'),
    'finetune.knowledge': finetune.KNOWLEDGE,
    'search.evaluation': search.EVALUATIONS,
    'model.dtype': ('float32', 'bfloat16'),
    'memory_bank.dtype': ('float32', 'bfloat16', 'float16'),
}
TRAINING = ('pretrain', 'finetune')  # sections made by config.training_recipe
for _section in TRAINING:
  CHOICES[f'{_section}.dtype'] = ('float32', 'bfloat16')
  CHOICES[f'{_section}.program'] = finetune.PROGRAMS


def _get(config, dotted):
  value = config
  for key in dotted.split('.'):
    value = value[key]
  return value


def parse_phases(phases: str) -> list[str]:
  names = [p.strip() for p in phases.split(',') if p.strip()]
  unknown = [p for p in names if p not in config_lib.PHASES]
  if unknown or not names:
    raise ConfigError(f'config.phases={phases!r}: unknown or empty phases '
                      f'{unknown}; allowed: {",".join(config_lib.PHASES)}')
  return names


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad key."""
  def fail(key, why):
    raise ConfigError(f'config.{key}={_get(config, key)!r}: {why}')

  if config.model.name not in MODELS:
    fail('model.name', f'unknown model; allowed: {sorted(MODELS)}')
  if config.data.name not in DATASETS:
    fail('data.name', f'unknown dataset; allowed: {sorted(DATASETS)}')
  parse_phases(config.phases)
  for key, allowed in CHOICES.items():
    if _get(config, key) not in allowed:
      fail(key, f'allowed: {", ".join(allowed)}')
  if not 0 < config.search.target_flops_rate < 1:
    fail('search.target_flops_rate', 'must lie in (0, 1)')
  if not 0 < config.search.step <= 1:
    fail('search.step', 'must lie in (0, 1]')
  positive = ['data.eval_batch_size', 'search.batch_size',
              'search.chunk_size', 'warmup.batch_size',
              'memory_bank.batch_size', 'memory_bank.checkpoint_every_batches',
              'memory_bank.num_teachers', 'data.val_per_class',
              'data.warmup_per_class']
  for section in TRAINING:
    positive += [f'{section}.batch_size', f'{section}.checkpoint_every_steps']
  for key in positive:
    if int(_get(config, key)) < 1:
      fail(key, 'must be a positive integer')
  for section in TRAINING:
    if config[section].epochs < 0:
      fail(f'{section}.epochs', 'must be >= 0')
    recipe = config[section]
    if recipe.learning_rate <= 0:
      fail(f'{section}.learning_rate', 'must be > 0')
    if not 0 < recipe.lr_decay_factor <= 1:
      fail(f'{section}.lr_decay_factor', 'must lie in (0, 1]')
    if any(not 0 <= f <= 1 for f in recipe.lr_decay_epochs_fraction):
      fail(f'{section}.lr_decay_epochs_fraction',
           'every value must lie in [0, 1] (fractions of the epochs)')
    if not 0 <= recipe.momentum < 1:
      fail(f'{section}.momentum', 'must lie in [0, 1)')
    if recipe.weight_decay < 0:
      fail(f'{section}.weight_decay', 'must be >= 0')
  if config.finetune.temperature <= 0:
    fail('finetune.temperature', 'must be > 0')
  for key in ('data.mean', 'data.std'):
    if len(_get(config, key)) != 3:
      fail(key, 'needs one value per RGB channel (3 values)')
  if any(s <= 0 for s in config.data.std):
    fail('data.std', 'every value must be > 0')
  if config.init_checkpoint and not os.path.exists(config.init_checkpoint):
    fail('init_checkpoint', 'no such file or directory')
  num_classes = DATASETS[config.data.name]['num_classes']
  val_size = config.data.val_per_class * num_classes
  if val_size < config.search.batch_size:
    fail('data.val_per_class', f'the validation set ({val_size} images) is '
         f'smaller than one search batch (search.batch_size='
         f'{config.search.batch_size})')


def validate_workdir_path(workdir: str) -> None:
  """The workdir must exist as a writable folder or be creatable."""
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--workdir={workdir!r}: {existing} is a file, so the '
                      'workdir cannot be created; choose another folder')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f'--workdir={workdir!r}: {existing} is not writable; '
                      'choose a folder you can write to')


def validate_devices(config: ml_collections.ConfigDict,
                     device_count: int) -> None:
  """Training batches are sharded over every device."""
  for section in TRAINING:
    config_lib.check_divides_over_devices(config[section].batch_size,
                                          device_count,
                                          f'{section}.batch_size')


def validate_workdir(config: ml_collections.ConfigDict, phases, summary
                     ) -> None:
  """Phases need what earlier phases leave in the workdir (`summary` holds
  the finished ones): refuse before any compute, naming what to run."""
  ready = set(summary) | set(phases)  # phase names are their summary keys
  knowledge = config.finetune.knowledge != 'none'
  needs = {'memory_bank': ['search'],
           'finetune': ['search'] + (['memory_bank'] if knowledge else [])}
  for phase in phases:
    for before in needs.get(phase, []):
      if before not in ready:
        why = (f' (finetune.knowledge={config.finetune.knowledge!r} '
               'distils from it; finetune.knowledge=none needs none)'
               if before == 'memory_bank' else '')
        raise ConfigError(
            f'phase {phase!r} needs a finished {before!r} phase in this '
            f'workdir{why}: run --config.phases={before} first, or add it '
            f'to config.phases')
  if 'search' in summary:  # a finished search is skipped, so it is final
    networks = summary['search']['steps'] + 1
    if 'memory_bank' in phases and config.memory_bank.num_teachers > networks:
      raise ConfigError(
          f'config.memory_bank.num_teachers='
          f'{config.memory_bank.num_teachers}: the search in this workdir '
          f'has {networks} networks in its history; choose 1..{networks}')


def validate_against_model(config: ml_collections.ConfigDict, table) -> None:
  """Checks that need the model's layer table (a shape-only trace)."""
  from ekg_jax import flops, gates
  specs = gates.gate_specs(table)
  smallest = flops.flops_rate(table, flops.min_kept(specs),
                              config.search.flops_include_bn)
  if config.search.target_flops_rate < smallest:
    raise ConfigError(
        f'config.search.target_flops_rate={config.search.target_flops_rate}'
        f': {config.model.name} cannot get below a FLOPs rate of '
        f'{smallest:.4f} even with every gate at one channel')
