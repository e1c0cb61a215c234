"""The whole method as a library (issue 26, item 6): a model written outside
the package runs through prune, the memory bank, slim and fine-tuning with
ensemble knowledge, from numpy arrays; the options records refuse what the
config file's rules refuse."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ekg_jax

SHAPE = (16, 16, 3)


class UserNet(ekg_jax.Supernet):
  """A user's model: two gated convs and the classifier, one __call__."""

  @nn.compact
  def __call__(self, x, masks=None, train=False):
    gate = None
    for i, features in enumerate((8, 16)):
      x = self.conv(self.width(f'c{i}', features), 3, in_gate=gate,
                    out_gate=f'c{i}', name=f'conv{i}')(x, masks)
      gate = f'c{i}'
      x = self.gate(nn.relu(self.bn(gate, train, name=f'bn{i}')(x)), masks,
                    gate)
    return self.dense(gate)(x.mean(axis=(1, 2)), masks)


@pytest.fixture(scope='module')
def method():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (96, *SHAPE), dtype=np.uint8)
  labels = rng.integers(0, 10, 96)
  inputs = ekg_jax.InputOptions(mean=(120.0,) * 3, std=(60.0,) * 3)
  net = UserNet(num_classes=10)
  variables = net.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  val = (images[-32:] - np.float32(inputs.mean)) / np.float32(inputs.std)
  search = ekg_jax.prune(net, variables, ekg_jax.Batches(
      (jnp.asarray(val),), (jnp.asarray(labels[-32:]),)), 0.5,
      evaluation='loop')
  bank = ekg_jax.build_memory_bank(net, variables, search, images,
                                   mean=inputs.mean, std=inputs.std,
                                   num_teachers=2, batch_size=32)
  table = ekg_jax.layer_table(net, SHAPE)
  student, student_variables = ekg_jax.slim(net, variables, search.masks(),
                                            table, input_shape=SHAPE)
  return dict(images=images, labels=labels, inputs=inputs, net=net,
              table=table, search=search, bank=bank, student=student,
              student_variables=student_variables)


def test_prune_bank_slim_and_finetune_with_ensemble_knowledge(method):
  m = method
  bank, search = m['bank'], m['search']
  assert bank.complete and bank.logits.shape == (96, 2, 10)
  assert bank.logits.dtype == jnp.bfloat16  # BankOptions' default storage
  losses = [e['val_loss'] for e in search.history[:-1]]
  assert bank.teacher_val_loss[0] == min(losses)  # teacher 0 is the best
  assert ekg_jax.count_flops(ekg_jax.layer_table(m['student'], SHAPE)) == (
      ekg_jax.count_flops(m['table'], search.kept))
  result = ekg_jax.finetune(
      m['student'], m['student_variables'], m['images'], m['labels'], bank,
      epochs=2, batch_size=32, inputs=m['inputs'],
      test=(m['images'][:32], m['labels'][:32]))
  assert [e['epoch'] for e in result.history] == [1, 2]
  for entry in result.history:
    assert np.isfinite(entry['train_loss']) and entry['kd_loss'] > 0
    assert 1 <= entry['teachers_used'] <= 2  # the filtered ensemble
    assert 0 <= entry['test_accuracy'] <= 100
  logits = m['student'].apply(result.variables, jnp.zeros((4, *SHAPE)))
  assert logits.shape == (4, 10)
  changed = jax.tree_util.tree_map(
      lambda a, b: not np.array_equal(a, b), result.variables['params'],
      m['student_variables']['params'])
  assert any(jax.tree_util.tree_leaves(changed))


def test_finetune_without_a_test_split_or_knowledge(method, tmp_path):
  m = method
  result = ekg_jax.finetune(
      m['student'], m['student_variables'], m['images'], m['labels'],
      knowledge='none', epochs=1, batch_size=48, inputs=m['inputs'],
      folder=str(tmp_path))
  assert result.history[0]['test_accuracy'] is None
  assert result.history[0]['kd_loss'] == 0
  assert (tmp_path / 'metrics.jsonl').exists()  # a rerun resumes from here


def test_finetune_refuses_a_bank_that_does_not_fit(method):
  m = method
  args = (m['student'], m['student_variables'], m['images'], m['labels'])
  with pytest.raises(ekg_jax.rules.ConfigError, match='build_memory_bank'):
    ekg_jax.finetune(*args, epochs=1)
  with pytest.raises(ValueError, match='logits of 10 images for 96'):
    ekg_jax.finetune(*args, np.zeros((10, 2, 10), np.float32), epochs=1)
  with pytest.raises(ValueError, match=r'labels must be in \[0, 10\)'):
    ekg_jax.finetune(*args[:3], m['labels'] + 10, knowledge='none')


def test_bank_and_finetune_refuse_another_models_variables(method):
  """At the door, as prune and slim: the dense network's variables are not
  the slimmed student's, nor a plain function a model."""
  m = method
  with pytest.raises(ValueError, match='has shape'):
    dense = m['net'].init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
    ekg_jax.finetune(m['student'], dense, m['images'], m['labels'],
                     knowledge='none')
  with pytest.raises(TypeError, match='must be'):
    ekg_jax.finetune(lambda x: x, m['student_variables'], m['images'],
                     m['labels'], knowledge='none')
  with pytest.raises(ValueError, match='has shape'):
    ekg_jax.build_memory_bank(m['net'], m['student_variables'], m['search'],
                              m['images'], mean=m['inputs'].mean,
                              std=m['inputs'].std)


@pytest.mark.parametrize('record, field, value, why', [
    (ekg_jax.TrainOptions, 'epochs', -1, 'an integer >= 0'),
    (ekg_jax.TrainOptions, 'knowledge', 'all', 'allowed: ensemble'),
    (ekg_jax.TrainOptions, 'learning_rate', float('nan'), 'finite'),
    (ekg_jax.InputOptions, 'std', (1.0, 0.0, 1.0), 'every value'),
    (ekg_jax.BankOptions, 'dtype', 'int8', 'allowed: float32'),
    (ekg_jax.BankOptions, 'top_k', -1, 'integer >= 0'),
])
def test_options_records_own_the_config_rules(record, field, value, why):
  with pytest.raises(ekg_jax.rules.ConfigError, match=f'{field}=.*{why}'):
    record(**{field: value})


def test_a_config_converts_to_the_records_with_its_defaults():
  from ekg_jax import config as config_lib
  c = config_lib.default_config()
  assert ekg_jax.TrainOptions.from_config(c.finetune) == (
      ekg_jax.TrainOptions())
  assert ekg_jax.BankOptions.from_config(c.memory_bank) == (
      ekg_jax.BankOptions())
  assert ekg_jax.InputOptions.from_config(c) == ekg_jax.InputOptions()
  assert ekg_jax.InputOptions(augment=dict(c.augment)) == (
      ekg_jax.InputOptions())
  pretrain = ekg_jax.TrainOptions.from_config(c.pretrain, seed=3)
  assert (pretrain.knowledge, pretrain.num_views, pretrain.seed) == (
      'none', 1, 3)
