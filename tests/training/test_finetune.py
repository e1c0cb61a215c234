"""Fine-tuning: the distillation filter, the loss, the step runners, resume
and numerical faults. The 4-device equivalence runs in a subprocess
(`data_parallel_check.py`)."""

import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import HELPERS, REPO
from small import random_split, tiny_config, tiny_model
from ekg_jax.data import datasets as data_lib
from ekg_jax.files import checkpoint
from ekg_jax.training import distill, loop
from ekg_jax.training import optimizers
from ekg_jax.training import steps as train_lib
from ekg_jax.training import losses
from ekg_jax.run.phases.common import trainer_records


def test_distillation_target_uses_teachers_closer_than_the_student():
  rng = np.random.default_rng(0)
  top = rng.normal(size=(6, 5)) * 3
  near = top + 0.1 * rng.normal(size=top.shape)
  far = -top
  bank = jnp.asarray(np.stack([top, near, far], axis=1), jnp.float32)
  student = top + 1.0 * rng.normal(size=top.shape)
  target, used = distill.distillation_target(bank, student, 4.0)
  np.testing.assert_array_equal(used, [True, True, False])
  np.testing.assert_allclose(target, (top + near) / 2, rtol=1e-6)
  # A student that matches teacher 0 exactly: only teacher 0 remains.
  target, used = distill.distillation_target(bank, top, 4.0)
  np.testing.assert_array_equal(used, [True, False, False])
  np.testing.assert_allclose(target, top, rtol=1e-6)


def test_learning_rate_steps_down_at_the_configured_fractions():
  c = tiny_config(epochs=10)
  # The reference pipeline's recipe: 0.01, x0.2 at 30/60/80% of the steps.
  schedule = optimizers.lr_schedule(c.finetune, steps_per_epoch=5)
  lr = [float(schedule(s)) for s in (0, 14, 15, 29, 30, 39, 40, 49)]
  np.testing.assert_allclose(
      lr, [.01, .01, .002, .002, 4e-4, 4e-4, 8e-5, 8e-5], rtol=1e-5)
  # One epoch keeps the shape (step-granular points).
  c = tiny_config(epochs=1)
  schedule = optimizers.lr_schedule(c.finetune, steps_per_epoch=10)
  lr = [float(schedule(s)) for s in (0, 2, 3, 5, 6, 7, 8, 9)]
  np.testing.assert_allclose(
      lr, [.01, .01, .002, .002, 4e-4, 4e-4, 8e-5, 8e-5], rtol=1e-5)


def test_optimizer_is_keras_nesterov_sgd_with_decay_in_the_gradient():
  """Keras: v = m * v - lr * (g + wd * w); w += m * v - lr * (g + wd * w);
  the velocity carries lr-scaled steps across a rate change."""
  c = tiny_config(epochs=1)
  tx = optimizers.make_optimizer(c.finetune, steps_per_epoch=10)
  schedule = optimizers.lr_schedule(c.finetune, steps_per_epoch=10)
  rng = np.random.default_rng(0)
  w = np.asarray(rng.normal(size=3), np.float64)
  params, state = jnp.asarray(w, jnp.float32), tx.init(jnp.zeros(3))
  v = np.zeros(3)
  for step in range(6):  # across the boundary at step 3
    g = rng.normal(size=3)
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    params = params + updates
    lr, m, wd = float(schedule(step)), 0.9, c.finetune.weight_decay
    d = g + wd * w
    v = m * v - lr * d
    w = w + m * v - lr * d
  np.testing.assert_allclose(params, w, rtol=1e-5)


# views 0: as the reference (two with knowledge, one without); 1 and 2 set
# the views apart from the knowledge (the two-view control without it).
@pytest.mark.parametrize('knowledge,num_views', [
    *((k, 0) for k in distill.KNOWLEDGE), ('none', 2), ('ensemble', 1)])
def test_step_loss_is_the_mean_over_views_of_ce_plus_kd(knowledge, num_views):
  model, variables = tiny_model()
  c = tiny_config(knowledge=knowledge, views=num_views)
  sc = distill.StepConfig.from_config(c)
  tx = optimizers.make_optimizer(c.finetune, 10)
  split = random_split(8, 1)
  bank = jnp.asarray(np.random.default_rng(2).normal(size=(8, 3, 10)),
                     jnp.float32)
  keys = jax.random.split(jax.random.key(3), 8)
  state, metrics = jax.jit(train_lib.make_step(model, tx, sc))(
      train_lib.TrainState.create(variables, tx), keys, split.images,
      split.labels, bank)

  total, kd_total = 0.0, 0.0
  augment = dict(sc.augment, color_jitter=sc.views == 2)  # as the reference
  views = [data_lib.augment_each(jax.vmap(jax.random.fold_in, (0, None))(
      keys, v), split.images, sc.mean, sc.std, **augment)
           for v in range(sc.views)]
  # Both views in ONE batch: BN statistics over both, one update.
  z, upd = model.apply(variables, jnp.concatenate(views), train=True,
                       mutable=['batch_stats'])
  logits = list(jnp.split(z, sc.views))
  target = {'single': bank[:, 0], 'none': None,
            'ensemble': distill.distillation_target(
                bank, sum(logits) / len(logits), 4.0)[0]}[knowledge]
  for z in logits:
    ce = losses.cross_entropy(z, split.labels).mean()
    kd = 0.0 if target is None else losses.kl_divergence(target, z, 4.0).mean()
    total += (ce + kd) / len(logits)
    kd_total += kd / len(logits)
  assert sc.views == (num_views or (1 if knowledge == 'none' else 2))
  np.testing.assert_allclose(metrics['loss'], total, rtol=1e-5)
  np.testing.assert_allclose(metrics['kd'], kd_total, rtol=1e-5, atol=1e-7)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      state.batch_stats, upd['batch_stats'])


@pytest.mark.parametrize('program', ['loop', 'scan'])
def test_step_runner_equals_plain_steps(program):
  model, variables = tiny_model()
  c = tiny_config()
  sc = distill.StepConfig.from_config(c)
  tx = optimizers.make_optimizer(c.finetune, 10)
  split = random_split(24, 4)
  bank = np.random.default_rng(5).normal(size=(24, 3, 10)).astype(np.float32)
  key = jax.random.key(6)
  indices = np.arange(24, dtype=np.int32)[::-1].reshape(3, 8)

  plain_step = jax.jit(train_lib.make_step(model, tx, sc))
  plain = train_lib.TrainState.create(variables, tx)
  for i, idx in enumerate(indices):
    keys = jax.random.split(jax.random.fold_in(key, i), 8)
    plain, _ = plain_step(plain, keys, split.images[idx], split.labels[idx],
                          bank[idx])

  runner = train_lib.StepRunner(train_lib.data_parallel(
      train_lib.make_step(model, tx, sc, train_lib.DATA_AXIS),
      train_lib.data_mesh()), program)
  data = train_lib.TrainData(jnp.asarray(split.images),
                             jnp.asarray(split.labels), jnp.asarray(bank))
  state, metrics = runner(train_lib.TrainState.create(variables, tx), data,
                          indices, key)
  assert metrics['loss'].shape == (3,) and int(state.step) == 3
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      state.variables, plain.variables)


def _run(folder, config, train, bank, test):
  model, variables = tiny_model()
  return loop.train(model, variables, train, bank, test, folder=str(folder),
                    progress=False, **trainer_records(config, 'finetune'))


def test_resume_from_a_mid_epoch_checkpoint_ends_where_a_straight_run_ends(
    tmp_path):
  config = tiny_config()  # 4 steps per epoch, checkpoints every 2 steps
  train, test = random_split(32, 7), random_split(16, 8)
  bank = np.random.default_rng(9).normal(size=(32, 3, 10)).astype(
      jnp.bfloat16)
  straight = _run(tmp_path / 'a', config, train, bank, test)
  assert [e['epoch'] for e in straight.history] == [1, 2]
  lines = (tmp_path / 'a' / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 2 and '"teachers_used"' in lines[0]
  assert list((tmp_path / 'a' / 'tensorboard').iterdir())

  # The run killed after step 6 (mid-epoch 2): its last checkpoint is 6.
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '8')
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints')) == ['6']
  resumed = _run(tmp_path / 'b', config, train, bank, test)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.variables,
                         straight.variables)
  assert resumed.history == straight.history

  # A damaged newest checkpoint (8) is reported; the run resumes from 6.
  shutil.copytree(tmp_path / 'a', tmp_path / 'c')
  for f in (tmp_path / 'c' / 'checkpoints' / '8' / 'state').rglob('*'):
    if f.is_file() and f.stat().st_size > 100:
      f.write_bytes(f.read_bytes()[:50])
  resumed = _run(tmp_path / 'c', config, train, bank, test)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.variables,
                         straight.variables)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path):
  train, test = random_split(32, 7), random_split(8, 8)
  # One good epoch (4 steps, a checkpoint every 2) ...
  good = tiny_config(knowledge='none', epochs=1, learning_rate=0.01)
  _run(tmp_path, good, train, None, test)
  # ... then the run is extended with an absurd learning rate: the update
  # of step 5 blows the weights up, step 6's loss is not finite.
  bad = tiny_config(knowledge='none', epochs=2, learning_rate=1e30)
  with pytest.raises(loop.NonFiniteError,
                     match=r'at step (\d+).*lower') as e:
    _run(tmp_path, bad, train, None, test)
  bad_step = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  kept = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert max(kept) == 4 < bad_step, (kept, bad_step)
  # The kept checkpoint is finite ...
  model, variables = tiny_model()
  template = train_lib.TrainState.create(
      variables, optimizers.make_optimizer(bad.finetune, 4))
  restored, _ = checkpoint.TrainCheckpoints(
      str(tmp_path / 'checkpoints')).restore(template)
  assert int(restored.step) == 4
  assert all(np.all(np.isfinite(a)) for a in
             jax.tree_util.tree_leaves(restored.variables))
  # ... and, as the message says, a rerun with a lower learning rate
  # resumes from it and finishes.
  bad.finetune.learning_rate = 0.01
  result = _run(tmp_path, bad, train, None, test)
  assert [e['epoch'] for e in result.history] == [1, 2]
  assert all(np.all(np.isfinite(a)) for a in
             jax.tree_util.tree_leaves(result.variables))


def test_bfloat16_compute_keeps_float32_parameters():
  model, variables = tiny_model()
  c = tiny_config(knowledge='none')
  sc = distill.StepConfig.from_config(c)
  tx = optimizers.make_optimizer(c.finetune, 10)
  split = random_split(8, 1)
  keys = jax.random.split(jax.random.key(3), 8)
  state = train_lib.TrainState.create(variables, tx)
  out = {}
  for dtype in (None, jnp.bfloat16):
    step = jax.jit(train_lib.make_step(model.clone(dtype=dtype), tx, sc))
    new, metrics = step(state, keys, split.images, split.labels, None)
    out[dtype] = metrics['loss']
    assert all(a.dtype == jnp.float32
               for a in jax.tree_util.tree_leaves(new.variables))
  np.testing.assert_allclose(out[jnp.bfloat16], out[None], rtol=5e-2)


def test_data_parallel_step_equals_single_device_on_4_fake_devices():
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, str(HELPERS.joinpath(
          'data_parallel_check.py'))], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert 'sync BN: equal' in result.stdout
  assert 'per-device BN: equal' in result.stdout
