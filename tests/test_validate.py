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


def test_pipeline_refuses_before_reading_data(tmp_path, monkeypatch):
  def no_data(*args, **kwargs):
    raise AssertionError('data was read before validation')
  monkeypatch.setattr(pipeline.data_lib, 'load_split', no_data)
  config = with_value('search.target_flops_rate', 0.001)
  config.phases = 'search'
  with pytest.raises(validate.ConfigError):
    pipeline.run(config, str(tmp_path))
