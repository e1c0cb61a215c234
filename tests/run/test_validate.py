"""Bad configs fail before any compute, naming key, value and what is
allowed."""

import pytest

from ekg_jax.data import datasets
from ekg_jax.supernet import gates
from ekg_jax import pipeline
from ekg_jax.run import phases as phases_lib
from ekg_jax.run import validate
from ekg_jax.config import default_config
from ekg_jax.models import create_model


def with_value(key, value):
  config = default_config()
  *sections, leaf = key.split('.')
  node = config
  for s in sections:
    node = node[s]
  node[leaf] = value
  return config


NAN = float('nan')
BAD = [
    ('search.target_flops_rate', 0.0, 'must be in \\(0, 1\\)'),
    ('search.target_flops_rate', 1.2, 'must be in \\(0, 1\\)'),
    ('search.target_flops_rate', NAN, 'finite number in \\(0, 1\\)'),
    ('search.criterion', 'l3',
     'allowed: ekg, gbn, l1, l2, fpgm, bn_gamma, random'),
    ('search.allocation', 'even', 'allowed: greedy, uniform'),
    ('search.teacher', 'many', 'allowed: ensemble, single, none'),
    ('search.evaluation', 'gpu', 'allowed: auto, vmap, prefix, segments, loop'),
    ('search.marking', 'otsu', 'allowed: reference, per_channel'),
    ('search.chunk_size', 0, 'positive integer'),
    ('search.step', 0.0, 'must be in \\(0, 1\\]'),
    ('search.otsu_trim', 0.5, 'must be in \\[0, 0.5\\)'),
    ('data.val_per_class', 10, 'smaller than one search batch'),
    ('model.name', 'resnet57', 'allowed: mobilenet_v2'),
    ('data.name', 'mnist', 'allowed: cifar10, cifar100, imagenet2012'),
    ('data.image_size', 64, 'cifar10 images are 32x32'),
    ('data.pipeline', 'tfdata', 'allowed: memory, grain'),
    ('data.decode_workers', -1, 'integer >= 0'),
    ('data.prefetch', 0, 'positive integer'),
    ('data.crop_scale', (0.0, 1.0), 'every value must be in \\(0, 1\\]'),
    ('data.crop_scale', (0.5, 0.1), 'low <= high'),
    ('data.crop_ratio', (0.75,), 'needs 2 values'),
    ('finetune.knowledge', 'all', 'allowed: ensemble, single, none'),
    ('finetune.views', 3, 'allowed: 0 \\(two views with knowledge'),
    ('finetune.masks', 'searched', 'allowed: search, dense, or the path'),
    ('finetune.masks', '/no/such/kept.json', 'no such file'),
    ('data.std', (1.0, 0.0, 1.0), 'every value must be > 0'),
    ('data.std', (1.0, NAN, 1.0), 'every value must be a finite number'),
    ('data.mean', (1.0, 2.0), 'needs 3 values'),
    ('data.mean', (1.0, 2.0, 300.0), 'must be in \\[0, 255\\]'),
    ('memory_bank.num_teachers', 0, 'positive integer'),
    ('finetune.epochs', -1, 'integer >= 0'),
    ('finetune.dtype', 'float16', 'allowed: float32, bfloat16'),
    ('finetune.program', 'while', 'allowed: auto, scan, loop'),
    ('memory_bank.dtype', 'int8', 'allowed: float32, bfloat16, float16'),
    ('pretrain.epochs', -2, 'integer >= 0'),
    ('finetune.learning_rate', 0.0, 'must be > 0'),
    ('finetune.learning_rate', NAN, 'finite number > 0'),
    ('warmup.learning_rate', float('inf'), 'finite number > 0'),
    ('finetune.batch_size', 0, 'positive integer'),
    ('pretrain.program', 'unrolled', 'allowed: auto, scan, loop'),
    ('init_checkpoint', '/nonexistent.pkl', 'no such file or directory'),
    ('phases', 'search,dance', "unknown or empty phases \\['dance'\\]"),
    ('finetune.temperature', 0.0, 'must be > 0'),
    ('finetune.temperature', NAN, 'finite number > 0'),
    ('pretrain.lr_decay_factor', 0.0, 'must be in \\(0, 1\\]'),
    ('finetune.lr_decay_epochs_fraction', (0.5, 1.5),
     'every value must be in \\[0, 1\\]'),
    ('finetune.momentum', 1.0, 'must be in \\[0, 1\\)'),
    ('pretrain.weight_decay', -1e-4, 'must be >= 0'),
    ('finetune.weight_decay', NAN, 'finite number >= 0'),
    ('augment.contrast', (1.2, 0.8), 'low <= high'),
    ('augment.brightness', -1.0, 'must be in \\[0, 255\\]'),
    ('augment.pad', 32, 'smaller than the image'),
    ('model.bn_epsilon', 0.0, 'must be > 0'),
    ('model.bn_momentum', NAN, 'finite number in \\[0, 1\\)'),
    ('warmup.loss_divisor', 0, 'must be > 0'),
    ('landscape.bn', 'frozen', 'allowed: batch, running'),
    ('landscape.num_eigenvalues', 40, 'cannot exceed'),
    ('data.data_dir', '/nonexistent/tfds', 'no such folder'),
    ('data.test_split', '', 'non-empty string'),
]


def test_every_config_key_has_a_rule_that_refuses_bad_values():
  """Each leaf of the default config is checked: None (which
  ml_collections accepts for any field) is refused with the key's name, and
  so is NaN for every float."""
  config = default_config()
  keys = validate.leaves(config)
  assert set(keys) == set(validate.RULES), set(keys) ^ set(validate.RULES)
  for key in keys:
    default = validate._get(config, key)
    bad = [None] + ([NAN] if isinstance(default, float) else [])
    for value in bad:
      with pytest.raises(validate.ConfigError) as e:
        validate.validate_config(with_value(key, value))
      assert str(e.value).startswith(f'config.{key}={value!r}: '), key


def test_every_shipped_config_validates():
  import importlib.util
  import pathlib
  for path in sorted(pathlib.Path(__file__).parents[2].glob('configs/*.py')):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The shared ImageNet recipe with each model; the per-model files
    # (resnet18/34/50_imagenet.py) take no argument.
    variants = {'resnet_imagenet': ('resnet18', 'resnet34', 'resnet50'),
                'mobilenetv2_cifar': ('cifar10', 'cifar100')}.get(
                    path.stem, (None,))
    for arg in variants:
      config = module.get_config() if arg is None else module.get_config(arg)
      validate.validate_config(config)


@pytest.mark.parametrize('key,value,match', BAD)
def test_bad_value_is_named(key, value, match):
  with pytest.raises(validate.ConfigError) as e:
    validate.validate_config(with_value(key, value))
  assert str(e.value).startswith(f'config.{key}={value!r}: ')
  assert e.match(match)


def test_unreachable_target_names_the_floor():
  config = with_value('search.target_flops_rate', 0.001)
  validate.validate_config(config)  # fine without the model ...
  table = gates.layer_table(create_model('resnet56'), (32, 32, 3))
  with pytest.raises(validate.ConfigError,
                     match='cannot get below a FLOPs rate of 0.0'):
    validate.validate_against_model(config, table)


# The whole table again, through the pipeline: it must refuse before any
# data is read and before the workdir is written. Plus the checks that need
# the model (a shape-only trace) or the workdir.
PIPELINE_BAD = [*BAD,
                ('search.target_flops_rate', 0.001,
                 'cannot get below a FLOPs rate of')]


@pytest.mark.parametrize('key,value,match', PIPELINE_BAD)
def test_pipeline_refuses_before_reading_data(tmp_path, monkeypatch, key,
                                              value, match):
  def no_data(*args, **kwargs):
    raise AssertionError('data was read before validation')
  monkeypatch.setattr(datasets, 'load_split', no_data)
  config = with_value(key, value)
  with pytest.raises(validate.ConfigError, match=match) as e:
    pipeline.run(config, str(tmp_path / 'w'))
  assert f'config.{key}=' in str(e.value)
  assert not (tmp_path / 'w' / 'summary.json').exists()


def test_workdir_that_cannot_be_created(tmp_path):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(validate.ConfigError,
                     match="--workdir=.*a_file is a file"):
    pipeline.run(default_config(), str(tmp_path / 'a_file' / 'w'))


SEARCHED = {'search': {'steps': 9}}  # a workdir whose search has 10 networks


@pytest.mark.parametrize('phases,summary,overrides,match', [
    (['memory_bank'], {}, {}, "'memory_bank' needs a finished 'search'"),
    (['finetune'], {}, {}, "'finetune' needs a finished 'search'"),
    (['finetune'], SEARCHED, {},
     "needs a finished 'memory_bank'.*knowledge='ensemble'"),
    (['finetune'], SEARCHED, {'finetune.knowledge': 'single'},
     "needs a finished 'memory_bank'"),
    (['memory_bank'], {'search': {'steps': 4}}, {},
     'num_teachers=5: the search in this workdir has 4 networks that may '
     'teach'),
])
def test_phase_prerequisites_are_named(phases, summary, overrides, match):
  config = default_config()
  for key, value in overrides.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  with pytest.raises(validate.ConfigError, match=match) as e:
    phases_lib.validate_workdir(config, phases, summary)
  assert 'run --config.phases=' in str(e.value) or 'choose 1..4' in str(
      e.value)


@pytest.mark.parametrize('phases,summary,knowledge', [
    (['search', 'memory_bank', 'finetune'], {}, 'ensemble'),
    (['memory_bank'], SEARCHED, 'ensemble'),
    (['finetune'], SEARCHED, 'none'),  # plain fine-tuning needs no bank
    (['finetune'], {**SEARCHED, 'memory_bank': {}}, 'ensemble'),
])
def test_phase_prerequisites_met(phases, summary, knowledge):
  config = with_value('finetune.knowledge', knowledge)
  phases_lib.validate_workdir(config, phases, summary)


@pytest.mark.parametrize('section,other', [('finetune', 'pretrain'),
                                           ('pretrain', 'finetune')])
def test_batch_must_divide_over_the_devices(section, other):
  config = with_value(f'{other}.batch_size', 96)
  validate.validate_devices(config, 4)
  with pytest.raises(validate.ConfigError,
                     match=f'{section}.batch_size=128: does not divide over '
                     'the 3 devices; use a multiple of 3'):
    validate.validate_devices(config, 3)
