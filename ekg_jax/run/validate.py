"""Whole-config validation, before any data is read or anything compiled.

Each rule names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import ml_collections

from ekg_jax import config as config_lib
from ekg_jax import rules
from ekg_jax.rules import (Rule, boolean, choice, existing, integer,
                           is_int, number, numbers, text)
from ekg_jax.data import datasets as data_lib
from ekg_jax.training import input_pipeline
from ekg_jax.training import options as train_options
from ekg_jax.search import landscape
from ekg_jax.deploy import options as export_options
from ekg_jax.knowledge import options as bank_options
from ekg_jax.data import prepare
from ekg_jax.search import options as search_options
from ekg_jax.search.marking import kept_count
from ekg_jax.models import MODELS
from ekg_jax.supernet.model import COMPUTE_DTYPES


ConfigError = rules.ConfigError  # callers catch validate.ConfigError


# ---------------------------------------------------------------------------
# One rule per config key. A rule returns why a value is refused (None when
# it is fine); `validate_config` names the key, the value and the reason.
# Every leaf of the default config has a rule (tested), and every float
# rule refuses NaN and infinities.

def _phases(v) -> Optional[str]:
  if not isinstance(v, str):
    return 'must be a comma-separated list of phases'
  try:
    parse_phases(v)
  except ConfigError as e:
    return str(e).split(': ', 1)[1]
  return None


def _masks(v) -> Optional[str]:
  if v in MASKS:
    return None
  if not isinstance(v, str) or not v.endswith('.json'):
    return (f'allowed: {", ".join(MASKS)}, or the path of a .json '
            'kept-channels file {gate: [kept channel indices]}')
  return None if os.path.isfile(v) else 'no such file'


def _init_checkpoint(v) -> Optional[str]:
  if v in prepare.WEIGHTS:
    return None
  why = existing(os.path.exists, 'file or directory (or official: the '
                 'authors\' ResNet-56, fetched once)')(v)
  if why or not v or os.path.isfile(v) or os.path.isdir(v):
    return why
  return 'is not a regular file or a directory'


MASKS = ('search', 'dense')  # else a kept-channels file


def _training_rules(section: str) -> dict[str, Rule]:
  """A training section's recipe keys: `training.options`' rules."""
  return {f'{section}.{name}': train_options.RULES[name]
          for name in train_options.RECIPE}


def _architecture(v) -> Optional[str]:
  if not isinstance(v, str):
    return ("must be a string of name=value overrides, e.g. "
            "'depth=2,embed_dim=32' ('' = the registered size)")
  try:
    config_lib.parse_architecture(v)
  except ValueError as e:
    return (f"{e}; use comma-separated name=value items, e.g. "
            "'depth=2,embed_dim=32' ('' = the registered size)")
  return None


def _architecture_names(config) -> Optional[str]:
  """Why config.model.architecture does not fit config.model.name."""
  overrides = config_lib.parse_architecture(config.model.architecture)
  if not overrides:
    return None
  model = MODELS[config.model.name]()
  names = tuple(getattr(type(model), 'architecture', ()))
  if not names:
    return f'{config.model.name} has no architecture attributes to override'
  for name, value in overrides.items():
    if name not in names:
      return (f'{name!r} is not an architecture attribute of '
              f'{config.model.name}; allowed: {", ".join(names)}')
    default = getattr(model, name)
    if isinstance(default, int) and not (is_int(value) and value >= 1):
      return f'{name} must be a positive integer'
    if isinstance(default, str) and not isinstance(value, str):
      return f'{name} must be a name, not a number'
  check = getattr(MODELS[config.model.name](**overrides),
                  'architecture_error', None)
  return check() if check else None


RULES: dict[str, Rule] = {
    'seed': integer(0),
    'phases': _phases,
    'redo': lambda v: _phases(v) if v != '' else None,
    'init_checkpoint': _init_checkpoint,
    'quiet': boolean,
    # A folder, 'auto' ($EKG_JAX_CACHE or ~/.cache/ekg_jax) or '' (none).
    'cache_dir': lambda v: None if isinstance(v, str) else (
        "must be a folder, 'auto' or '' (no caches)"),
    'distributed': boolean,
    'model.name': choice(sorted(MODELS)),
    'model.architecture': _architecture,
    'model.renormalize': boolean,
    'model.straight_through': boolean,
    'model.bn_momentum': train_options.UNIT_OPEN,
    'model.bn_epsilon': number(0, low_open=True),
    'model.dtype': choice(COMPUTE_DTYPES),
    # Known datasets, or (checked with the pipeline below) any TFDS one.
    'data.name': text,
    'data.data_dir': existing(os.path.isdir, 'folder'),
    'data.train_split': text,
    'data.test_split': text,
    'data.image_size': train_options.INPUT_RULES['image_size'],
    'data.mean': train_options.INPUT_RULES['mean'],
    'data.std': train_options.INPUT_RULES['std'],
    'data.val_per_class': integer(1),
    'data.warmup_per_class': integer(1),
    'data.subset_seed': integer(0),
    'data.eval_batch_size': train_options.INPUT_RULES['eval_batch_size'],
    'data.pipeline': choice(input_pipeline.PIPELINES),
    **{f'data.{name}': train_options.INPUT_RULES[name]
       for name in ('decode_workers', 'prefetch', 'crop_scale', 'crop_ratio')},
    'augment.pad': integer(0),
    'augment.color_jitter': boolean,
    'augment.contrast': numbers(2, number(0), ordered=True),
    'augment.saturation': numbers(2, number(0), ordered=True),
    'augment.brightness': number(0, 255),
    'warmup.batch_size': integer(1),
    'warmup.learning_rate': number(0, low_open=True),
    'warmup.momentum': train_options.UNIT_OPEN,
    'warmup.weight_decay': number(0),
    'warmup.loss_divisor': number(0, low_open=True),
    **{f'search.{name}': rule
       for name, rule in search_options.RULES.items() if name != 'seed'},
    'search.batch_size': integer(1),
    'search.warmup': boolean,
    'landscape.lanczos_iterations': integer(2),
    'landscape.num_eigenvalues': integer(1),
    'landscape.trace_samples': integer(2),
    'landscape.slice_points': integer(2),
    'landscape.grid_points': integer(2),
    'landscape.bn': choice(landscape.BN_MODES),
    'landscape.seed': integer(0),
    'landscape.lanczos_tolerance': number(0, 1),
    'landscape.subset': integer(0),
    **{f'memory_bank.{name}': rule
       for name, rule in bank_options.RULES.items()},
    **_training_rules('pretrain'),
    **_training_rules('finetune'),
    **{f'finetune.{name}': train_options.RULES[name]
       for name in ('knowledge', 'views')},
    'finetune.masks': _masks,
    **{f'export.{name}': rule for name, rule in export_options.RULES.items()},
    'finetune.temperature': train_options.RULES['temperature'],
}
TRAINING = ('pretrain', 'finetune')  # sections made by config.training_recipe


def _get(config, dotted):
  value = config
  for key in dotted.split('.'):
    value = value[key]
  return value


def leaves(config) -> list[str]:
  """Every leaf key of a config, dotted."""
  out = []

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(v, f'{prefix}{k}.')
      else:
        out.append(f'{prefix}{k}')
  walk(config, '')
  return out


def parse_phases(phases: str) -> list[str]:
  names = [p.strip() for p in phases.split(',') if p.strip()]
  unknown = [p for p in names if p not in config_lib.PHASES]
  if unknown or not names:
    raise ConfigError(f'config.phases={phases!r}: unknown or empty phases '
                      f'{unknown}; allowed: {",".join(config_lib.PHASES)}')
  return names


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on the first bad key: every key has its rule, then
  the rules that join keys."""
  def fail(key, why):
    raise ConfigError(f'config.{key}={_get(config, key)!r}: {why}')

  for key in leaves(config):
    rule = RULES.get(key)
    if rule is None:
      raise ConfigError(f'config.{key}: not a key this toolkit reads; '
                        'remove it (a typo?)')
    why = rule(_get(config, key))
    if why:
      fail(key, why)
  why = _architecture_names(config)
  if why:
    fail('model.architecture', why)
  resizes = input_pipeline.of(config).resizes
  dataset = data_lib.DATASETS.get(config.data.name)
  if dataset is None and not resizes:
    fail('data.name', f'allowed: {", ".join(sorted(data_lib.DATASETS))}; '
         'another TFDS image-classification dataset needs '
         'data.pipeline=grain (its classes are read from its metadata)')
  if (dataset and config.data.image_size != dataset['image_size']
      and not resizes):
    fail('data.image_size', f'{config.data.name} images are '
         f'{dataset["image_size"]}x{dataset["image_size"]} (FLOPs are '
         'counted at this size); use that value, or data.pipeline=grain, '
         'which resizes')
  if config.augment.pad >= config.data.image_size:
    fail('augment.pad', 'a reflect pad must be smaller than the image '
         f'({config.data.image_size})')
  # Another dataset's class count is in its files: preflight checks it.
  val_size = config.data.val_per_class * (dataset or {}).get(
      'num_classes', config.search.batch_size)
  if val_size < config.search.batch_size:
    fail('data.val_per_class', f'the validation set ({val_size} images) is '
         f'smaller than one search batch (search.batch_size='
         f'{config.search.batch_size})')
  classes = (dataset or {}).get('num_classes')  # else: preflight's check
  if classes and config.memory_bank.top_k > classes:
    fail('memory_bank.top_k', f'{config.data.name} has {classes} classes; '
         f'use 0..{classes} (0 keeps every logit)')
  if config.landscape.num_eigenvalues > config.landscape.lanczos_iterations:
    fail('landscape.num_eigenvalues', 'cannot exceed landscape.'
         f'lanczos_iterations ({config.landscape.lanczos_iterations})')
  if config.search.uniform_fixed and config.search.allocation != 'uniform':
    fail('search.uniform_fixed', 'fixes fractions of the uniform allocation '
         "only; set search.allocation=uniform or leave it ''")
  if (config.search.allocation == 'uniform'
      and config.memory_bank.num_teachers > 1
      and 'memory_bank' in (parse_phases(config.phases)
                            + (parse_phases(config.redo) if config.redo
                               else []))):
    # Its history is the dense network and one step: one possible teacher.
    fail('memory_bank.num_teachers', 'search.allocation=uniform takes one '
         'step, so one network may teach; use 1')


def validate_devices(config: ml_collections.ConfigDict, device_count: int,
                     todo=TRAINING) -> None:
  """Training batches are sharded over every device; only the sections
  of phases that will run (`todo`) are checked, so a finished phase's
  batch size never blocks the rest of a run."""
  for section in TRAINING:
    if section in todo:
      rules.check_divides(config[section].batch_size, device_count,
                          f'{section}.batch_size')


def validate_against_model(config: ml_collections.ConfigDict, table) -> None:
  """Checks that need the model's layer table (a shape-only trace)."""
  from ekg_jax.supernet import flops, gates, slimming
  from ekg_jax.search import importance, warmup
  from ekg_jax.search import options as search_options
  specs = gates.gate_specs(table)
  # BN-only pieces, refused by name for a model without BatchNorm (a ViT).
  if config.search.warmup:
    warmup.check_model(table, config.model.name)
  importance.check_criterion(config.search.criterion, table,
                             config.model.name)
  if config.finetune.masks not in MASKS:
    try:
      slimming.read_kept_channels(config.finetune.masks, specs)
    except ValueError as e:
      raise ConfigError(f'config.finetune.masks: {e}') from None
  s = config.search
  if s.round_to > 1 and all(g.channels <= s.round_to for g in specs.values()):
    # A gate no wider than round_to stays whole: nothing could be pruned.
    raise ConfigError(
        f'config.search.round_to={s.round_to}: every gate of '
        f'{config.model.name} has at most '
        f'{max(g.channels for g in specs.values())} channels and a gate no '
        'wider than round_to stays whole, so nothing can be pruned; use a '
        'smaller value')
  # uniform_fixed's suffixes name gates of this model (one line if not).
  fixed = search_options.fixed_fractions(
      search_options.SearchConfig.from_config(s), specs)
  floor = {g: kept_count(spec.channels, fixed.get(g, 0.0), s.round_to)
           for g, spec in specs.items()}
  rate = lambda kept: flops.flops_rate(table, kept, s.flops_include_bn)
  smallest = rate(floor)
  if s.target_flops_rate < smallest:
    at = ('one channel' if s.round_to == 1
          else f'its minimum (round_to={s.round_to})')
    if fixed:
      at += (f' but those search.uniform_fixed={s.uniform_fixed!r} fixes; '
             'fix smaller fractions or raise the target')
    raise ConfigError(
        f'config.search.target_flops_rate={s.target_flops_rate}'
        f': {config.model.name} cannot get below a FLOPs rate of '
        f'{smallest:.4f} even with every gate at {at}')
  # The next-smallest sub-networks: one gate a step above its minimum.
  wider = [rate({**floor, g: min(spec.channels, floor[g] + s.round_to)})
           for g, spec in specs.items() if floor[g] < spec.channels]
  if wider and s.target_flops_rate < min(wider):
    logging.warning(
        'config.search.target_flops_rate=%s is met only with every gate at '
        'its minimum (FLOPs rate %.4f): the search will cut every gate as '
        'far as it goes', s.target_flops_rate, smallest)
