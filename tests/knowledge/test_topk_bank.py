"""Top-k memory bank (issue 17, item 4): storage, rebuilt logits, the KD
target, file format, resume, config."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ekg_jax.files import checkpoint
from ekg_jax.training import distill, losses
from ekg_jax.knowledge import memory_bank, topk
from ekg_jax.run import validate
from ekg_jax.training import optimizers
from ekg_jax.training import steps as train_lib
from ekg_jax.run import workdir
from ekg_jax.run.phases import PHASES
from ekg_jax.config import default_config
from conftest import needs_cifar10
from small import (MEAN, PIPELINE, STD, model_and_history, random_split,
                   run_cli, tiny_config, tiny_model)

T = 4.0


def _logits(shape=(16, 3, 10), seed=0, scale=3.0):
  return (scale * np.random.default_rng(seed).normal(size=shape)).astype(
      np.float32)


def _top_k_bank(logits, k, dtype=jnp.bfloat16, temperature=T):
  bank = topk.TopKLogits.zeros(logits.shape, k, dtype, temperature)
  values, indices, tail = topk.compress(logits, k, temperature)
  return bank.replace(values=np.asarray(values.astype(dtype)),
                      indices=np.asarray(indices.astype(bank.indices.dtype)),
                      tail=np.asarray(tail.astype(dtype)))


def _views_loss(bank, student, labels, knowledge='ensemble'):
  sc = distill.StepConfig(knowledge, T)
  return distill.views_loss([student, student[::-1]], labels, bank, sc)[0]


def test_k_equal_to_classes_rebuilds_the_dense_bank_and_target_exactly():
  z = _logits()
  dense = z.astype(jnp.bfloat16)
  bank = _top_k_bank(z, 10)
  np.testing.assert_array_equal(topk.expand(bank), dense.astype(np.float32))
  student, labels = _logits((16, 10), 1), np.arange(16) % 10
  for knowledge in ('ensemble', 'single'):
    assert float(_views_loss(bank, student, labels, knowledge)) == float(
        _views_loss(jnp.asarray(dense), student, labels, knowledge))
  kl = losses.kl_divergence(dense.astype(np.float32), topk.expand(bank), T)
  np.testing.assert_array_equal(kl, 0.0)


@pytest.mark.parametrize('k', [1, 3, 7])
def test_rebuilt_softmax_keeps_top_k_and_spreads_the_rest_uniformly(k):
  z = _logits(seed=k)
  rebuilt = topk.expand(_top_k_bank(z, k, jnp.float32))
  p = jax.nn.softmax(z / T)
  q = np.asarray(jax.nn.softmax(rebuilt / T))
  top = np.argsort(-z, axis=-1)[..., :k]
  np.testing.assert_allclose(np.take_along_axis(q, top, -1),
                             np.take_along_axis(p, top, -1), rtol=1e-5)
  rest = 1 - np.take_along_axis(p, top, -1).sum(-1)
  tail = np.ones(z.shape, bool)
  np.put_along_axis(tail, top, False, -1)
  np.testing.assert_allclose(q[tail].reshape(*z.shape[:2], -1),
                             np.broadcast_to((rest / (10 - k))[..., None],
                                             (*z.shape[:2], 10 - k)),
                             rtol=1e-4)
  # KL(p || q) = r * KL(tail / r || uniform) <= r * log(C - k), and > 0.
  kl = losses.kl_divergence(z, rebuilt, T) / T
  assert np.all(kl <= rest * np.log(10 - k) + 1e-6) and kl.max() > 1e-4


def test_kl_is_small_for_a_peaked_teacher():
  z = _logits(scale=0.5)
  z[..., 3] += 40.0  # one class far ahead at T = 4 too
  kl = losses.kl_divergence(z, topk.expand(_top_k_bank(z, 1, jnp.float32)),
                            T) / T
  assert float(kl.max()) < 1e-3


def test_stored_bytes_shrink_as_computed():
  z = _logits((16, 5, 10))
  bank = _top_k_bank(z, 3)
  # Per teacher: 3 bfloat16 values, 3 uint8 classes, one bfloat16 tail.
  assert topk.bytes_per_image(5, 10, 3, 2) == 5 * (3 * 3 + 2) == 55
  assert bank.nbytes == 16 * 55 < z.astype(jnp.bfloat16).nbytes == 16 * 100
  # ImageNet, 5 teachers, top 20 (uint16 classes): 410 bytes an image,
  # against 10,000 for the dense bfloat16 bank.
  assert topk.index_dtype(1000) == np.uint16
  assert topk.bytes_per_image(5, 1000, 20, 2) == 410
  assert topk.bytes_per_image(5, 1000, 0, 2) == 10_000


def _build(model, variables, split, masks, bank, **kwargs):
  return memory_bank.build(model, variables, split, masks, 8, MEAN, STD,
                           memory_bank.MemoryBank(bank, [1, 2], [0.5, 0.6],
                                                  done=0), progress=False,
                           **kwargs)


def test_top_k_zero_writes_todays_dense_file(tmp_path):
  bank = memory_bank.MemoryBank(_logits((4, 2, 10)).astype(jnp.bfloat16),
                                [1, 2], [0.5, 0.6], done=4, seconds=1.5)
  path = str(tmp_path / 'bank.npz')
  bank.save(path)
  with np.load(path) as z:
    assert z.files == ['logits', 'dtype', 'meta']  # format 1, no new entry
    np.testing.assert_array_equal(z['logits'], bank.logits.view(np.uint16))
    assert json.loads(str(z['meta'])) == {
        'teachers': [1, 2], 'teacher_val_loss': [0.5, 0.6], 'done': 4,
        'seconds': 1.5}
  assert memory_bank.MemoryBank.load(path).top_k == 0


def test_partial_top_k_bank_resumes_to_the_same_arrays(tmp_path):
  model, variables, history, ranks_history = model_and_history()
  masks = memory_bank.teacher_masks(history, ranks_history, [1, 2])
  split = random_split(20, 2)
  empty = lambda: topk.TopKLogits.zeros((20, 2, 10), 3, jnp.bfloat16, T)
  whole = _build(model, variables, split, masks, empty())
  path = str(tmp_path / 'bank.npz')

  class Killed(Exception):
    pass

  def save_then_die(bank):
    bank.save(path)
    raise Killed

  with pytest.raises(Killed):
    _build(model, variables, split, masks, empty(),
           on_checkpoint=save_then_die, checkpoint_every=1)
  partial = memory_bank.MemoryBank.load(path)
  assert (partial.done, partial.top_k) == (8, 3)
  resumed = memory_bank.build(model, variables, split, masks, 8, MEAN, STD,
                              partial, progress=False)
  resumed.save(path)
  loaded = memory_bank.MemoryBank.load(path)
  for got in (resumed.logits, loaded.logits):
    assert (got.num_classes, got.temperature, got.k) == (10, T, 3)
    for a, b in zip(jax.tree_util.tree_leaves(got),
                    jax.tree_util.tree_leaves(whole.logits)):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
  # The stored top 3 are the dense bank's largest logits, as bfloat16.
  dense = _build(model, variables, split, masks,
                 np.zeros((20, 2, 10), jnp.bfloat16)).logits
  np.testing.assert_array_equal(
      loaded.logits.values.astype(np.float32),
      -np.sort(-dense.astype(np.float32), axis=-1)[..., :3])


def _damaged(path, **changes):
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files}
  arrays.update(changes)
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize('change,match', [
    ({'format': np.asarray(3)}, 'bank format 3; this toolkit reads 1'),
    ({'indices': None}, "not a memory bank: no 'indices"),
    ({'dtype': np.asarray('int8')}, "logits stored as 'int8'"),
    ({'indices': np.full((4, 2, 3), 10, np.uint8)}, 'do not match'),
    ({'tail': np.zeros((4, 3), np.uint16)}, 'do not match'),
])
def test_a_wrong_bank_file_is_one_clear_error(tmp_path, change, match):
  path = str(tmp_path / 'bank.npz')
  memory_bank.MemoryBank(_top_k_bank(_logits((4, 2, 10)), 3), [1, 2],
                         [0.5, 0.6], done=4).save(path)
  _damaged(path, **change)
  with pytest.raises(checkpoint.CheckpointError, match=match) as e:
    memory_bank.MemoryBank.load(path)
  assert '\n' not in str(e.value)


def test_step_runner_with_a_full_top_k_bank_equals_the_dense_one():
  model, variables = tiny_model()
  c = tiny_config()
  sc = distill.StepConfig.from_config(c)
  tx = optimizers.make_optimizer(c.finetune, 10)
  split = random_split(16, 4)
  z = _logits((16, 3, 10), 5)
  indices = np.arange(16, dtype=np.int32).reshape(2, 8)
  out = []
  for bank in (z.astype(jnp.bfloat16), _top_k_bank(z, 10, temperature=4.0)):
    runner = train_lib.StepRunner(train_lib.data_parallel(
        train_lib.make_step(model, tx, sc, train_lib.DATA_AXIS),
        train_lib.data_mesh()), 'loop')
    data = train_lib.TrainData(jnp.asarray(split.images),
                               jnp.asarray(split.labels),
                               jax.device_put(bank))
    out.append(runner(train_lib.TrainState.create(variables, tx), data,
                      indices, jax.random.key(0)))
  for a, b in zip(jax.tree_util.tree_leaves(out[0]),
                  jax.tree_util.tree_leaves(out[1])):
    np.testing.assert_array_equal(a, b)


def test_a_top_k_bank_refuses_another_temperature():
  bank = _top_k_bank(_logits(), 3, temperature=10.0)
  with pytest.raises(ValueError, match='built for temperature 10.0, not 4.0'):
    _views_loss(bank, _logits((16, 10), 1), np.arange(16) % 10)


@pytest.mark.parametrize('value', [-1, 11, True, None, float('nan'), 2.5])
def test_invalid_top_k_is_one_config_error(value):
  config = default_config()
  if isinstance(value, float):  # ml_collections refuses a float for an int
    why = validate.RULES['memory_bank.top_k'](value)
    assert why.startswith('must be an integer >= 0')
    return
  config.memory_bank.top_k = value
  with pytest.raises(validate.ConfigError) as e:
    validate.validate_config(config)
  assert str(e.value).startswith(f'config.memory_bank.top_k={value!r}: ')
  assert ('cifar10 has 10 classes; use 0..10' if value == 11
          else 'must be an integer >= 0') in str(e.value)


def test_a_workdir_from_before_top_k_resumes_with_the_default(tmp_path):
  old = default_config()
  with old.unlocked():
    del old.memory_bank['top_k']
  workdir.save_config(old, str(tmp_path))
  workdir.check_config(default_config(), str(tmp_path),
                       [PHASES['memory_bank']])
  changed = default_config()
  changed.memory_bank.top_k = 3
  with pytest.raises(workdir.WorkdirError, match='memory_bank.top_k: 0 -> 3'):
    workdir.check_config(changed, str(tmp_path), [PHASES['memory_bank']])


def test_memory_bank_page_shows_the_committed_measurement():
  import importlib.util
  from conftest import REPO
  spec = importlib.util.spec_from_file_location(
      'topk_bank', REPO / 'experiments' / 'topk_bank.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  results = REPO / 'experiments' / 'results'
  result = json.loads((results / 'topk_bank_r56_cifar10.json').read_text())
  table = module.table(result)
  assert (results / 'topk_bank_r56_cifar10.md').read_text() == table + '\n'
  assert table in (REPO / 'docs' / 'memory-bank.md').read_text()


def test_measurement_script_on_a_small_bank(tmp_path):
  import importlib.util
  from conftest import REPO
  spec = importlib.util.spec_from_file_location(
      'topk_bank', REPO / 'experiments' / 'topk_bank.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  path = str(tmp_path / 'bank.npz')
  memory_bank.MemoryBank(_logits((32, 3, 10)).astype(jnp.bfloat16), [0, 1, 2],
                         [0.1, 0.2, 0.3], done=32).save(path)
  out = str(tmp_path / 'r.json')
  module.main(['--bank', path, '--ks', '1,3', '--batch_size', '8',
               '--out', out])
  rows = {row['k']: row for row in json.load(open(out))['per_k']}
  far = 'far student (all teachers)'
  assert rows[10]['max_logit_change'] == 0.0
  assert rows[10]['target_kl'][far]['max'] == 0.0
  assert 0 < rows[3]['target_kl'][far]['mean'] < rows[1]['target_kl'][far][
      'mean']
  assert rows[1]['bound_holds'] and rows[1]['target_kl'][far][
      'teachers_used_mean'] == 3


def test_fine_tuning_with_a_top_k_bank_runs_and_equals_dense_at_k_classes(
    tmp_path):
  from ekg_jax.training import loop
  from ekg_jax.run.phases.common import trainer_records
  config = tiny_config(epochs=1)
  train, test = random_split(16, 7), random_split(8, 8)
  z = _logits((16, 3, 10), 9)
  runs = []
  for name, bank in [('dense', z.astype(jnp.bfloat16)),
                     ('k10', _top_k_bank(z, 10)), ('k2', _top_k_bank(z, 2))]:
    model, variables = tiny_model()
    runs.append(loop.train(model, variables, train, bank, test,
                           folder=str(tmp_path / name), progress=False,
                           **trainer_records(config, 'finetune')))
  dense, full, top2 = runs
  jax.tree_util.tree_map(np.testing.assert_array_equal, full.variables,
                         dense.variables)
  assert full.history == dense.history
  assert top2.history[0]['kd_loss'] != dense.history[0]['kd_loss']


@pytest.mark.slow  # search, bank and fine-tune through the CLI: minutes
@needs_cifar10
def test_cli_top_k_bank_then_finetune_at_its_temperature_only(tmp_path):
  args = (*PIPELINE, f'--workdir={tmp_path}', '--config.memory_bank.top_k=3')
  result = run_cli(*args, '--config.phases=search,memory_bank')
  assert result.returncode == 0, result.stderr[-3000:]
  bank = json.loads((tmp_path / 'summary.json').read_text())['memory_bank']
  assert (bank['top_k'], bank['bytes']) == (3, 1000 * topk.bytes_per_image(
      3, 10, 3, 2))
  result = run_cli(*args, '--config.phases=finetune',
                   '--config.finetune.temperature=10.0')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(
      'ekg_jax: error: config.finetune.temperature=10.0: the memory bank '
      'keeps its top 3 logits with a tail computed at temperature 4.0')
  result = run_cli(*args, '--config.phases=finetune')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['finetune']['epochs'] == 1
