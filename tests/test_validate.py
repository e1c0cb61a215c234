"""Bad configs fail before any compute, naming key, value and what is
allowed."""

import pytest

from ekg_jax import gates, pipeline, validate
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


BAD = [
    ('search.target_flops_rate', 0.0, 'must lie in \\(0, 1\\)'),
    ('search.target_flops_rate', 1.2, 'must lie in \\(0, 1\\)'),
    ('search.criterion', 'l3', 'allowed: ekg, l1, l2, fpgm, bn_gamma, random'),
    ('search.allocation', 'even', 'allowed: greedy, uniform'),
    ('search.teacher', 'many', 'allowed: ensemble, single, none'),
    ('search.evaluation', 'gpu', 'allowed: auto, vmap, prefix, loop'),
    ('search.chunk_size', 0, 'positive integer'),
    ('search.step', 0.0, 'must lie in \\(0, 1\\]'),
    ('data.val_per_class', 10, 'smaller than one search batch'),
    ('model.name', 'resnet57', 'unknown model'),
    ('data.name', 'mnist', 'unknown dataset'),
    ('finetune.knowledge', 'all', 'allowed: ensemble, single, none'),
    ('data.std', (1.0, 0.0, 1.0), 'every value must be > 0'),
    ('memory_bank.num_teachers', 0, 'positive integer'),
    ('finetune.epochs', -1, 'must be >= 0'),
    ('finetune.dtype', 'float16', 'allowed: float32, bfloat16'),
    ('finetune.program', 'while', 'allowed: auto, scan, loop'),
    ('memory_bank.dtype', 'int8', 'allowed: float32, bfloat16, float16'),
    ('pretrain.epochs', -2, 'must be >= 0'),
    ('finetune.learning_rate', 0.0, 'must be > 0'),
    ('finetune.batch_size', 0, 'positive integer'),
    ('pretrain.program', 'unrolled', 'allowed: auto, scan, loop'),
    ('data.mean', (1.0, 2.0), 'one value per RGB channel'),
    ('init_checkpoint', '/nonexistent.pkl', 'no such file or directory'),
    ('phases', 'search,dance', "unknown or empty phases \\['dance'\\]"),
    ('finetune.temperature', 0.0, 'must be > 0'),
    ('pretrain.lr_decay_factor', 0.0, 'must lie in \\(0, 1\\]'),
    ('finetune.lr_decay_epochs_fraction', (0.5, 1.5), 'lie in \\[0, 1\\]'),
    ('finetune.momentum', 1.0, 'must lie in \\[0, 1\\)'),
    ('pretrain.weight_decay', -1e-4, 'must be >= 0'),
]


@pytest.mark.parametrize('key,value,match', BAD)
def test_bad_value_is_named(key, value, match):
  with pytest.raises(validate.ConfigError) as e:
    validate.validate_config(with_value(key, value))
  assert f'config.{key}={value!r}' in str(e.value)
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
  monkeypatch.setattr(pipeline.data_lib, 'load_split', no_data)
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
    (['memory_bank'], {'search': {'steps': 3}}, {},
     'num_teachers=5: the search in this workdir has 4 networks'),
])
def test_phase_prerequisites_are_named(phases, summary, overrides, match):
  config = default_config()
  for key, value in overrides.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  with pytest.raises(validate.ConfigError, match=match) as e:
    validate.validate_workdir(config, phases, summary)
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
  validate.validate_workdir(config, phases, summary)


@pytest.mark.parametrize('section,other', [('finetune', 'pretrain'),
                                           ('pretrain', 'finetune')])
def test_batch_must_divide_over_the_devices(section, other):
  config = with_value(f'{other}.batch_size', 96)
  validate.validate_devices(config, 4)
  with pytest.raises(validate.ConfigError,
                     match=f'{section}.batch_size=128: does not divide over '
                     'the 3 devices; use a multiple of 3'):
    validate.validate_devices(config, 3)
