"""Training recipes per model family (ekg_jax/training/optimizers.py): the
default is the chain it always was; AdamW, warm-up then cosine, label
smoothing and clipping by hand; their config rules; a BN-free ViT through
the train step and its checkpoints (configs/vit_cifar.py end to end:
tests/project/test_vit_demo.py)."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO
from ekg_jax import config as config_lib
from ekg_jax.files import checkpoint
from ekg_jax.models import create_model
from ekg_jax.run import validate
from ekg_jax.training import distill, losses, optimizers
from ekg_jax.training import steps as train_lib

TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2)


def recipe(section='finetune', **keys):
  r = config_lib.default_config()[section]
  for k, v in keys.items():
    r[k] = v
  return r


def run_updates(tx, steps=6, seed=0):
  """Parameters after `steps` updates with random gradients: a matrix and
  a vector (a kernel and a bias)."""
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  state = tx.init(params)
  for _ in range(steps):
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize('section', ['pretrain', 'finetune'])
def test_default_recipe_is_the_chain_it_always_was(section):
  """The chain `make_optimizer` built before the registry (Keras-order
  Nesterov SGD on the step schedule), bit for bit, across decay points."""
  r = recipe(section, epochs=2)
  spe = 5
  total = r.epochs * spe
  boundaries = {}
  for f in r.lr_decay_epochs_fraction:
    step = round(f * total)
    boundaries[step] = boundaries.get(step, 1.0) * r.lr_decay_factor
  before = optax.piecewise_constant_schedule(r.learning_rate, boundaries)
  tx = optax.chain(optax.add_decayed_weights(r.weight_decay),
                   optax.scale_by_learning_rate(before),
                   optax.trace(decay=r.momentum, nesterov=True))
  schedule = optimizers.lr_schedule(r, spe)
  for s in range(total + 2):
    assert float(schedule(s)) == float(before(s))
  got, want = (run_updates(t, steps=total) for t in
               (optimizers.make_optimizer(r, spe), tx))
  for k in want:
    np.testing.assert_array_equal(got[k], want[k])


def test_warmup_then_cosine():
  r = recipe(learning_rate=1e-3, epochs=10, lr_schedule='cosine',
             lr_warmup_fraction=0.1)
  schedule = optimizers.lr_schedule(r, steps_per_epoch=10)  # 100 steps
  expect = lambda s: (1e-3 * s / 10 if s < 10 else
                      0.5e-3 * (1 + math.cos(math.pi * (s - 10) / 90)))
  for s in (0, 1, 5, 10, 11, 40, 55, 99, 100):
    assert float(schedule(s)) == pytest.approx(expect(s), rel=1e-5,
                                               abs=1e-9), s
  assert float(schedule(55)) == pytest.approx(5e-4, rel=1e-5)
  # No warm-up: the cosine from the first step.
  r.lr_warmup_fraction = 0.0
  schedule = optimizers.lr_schedule(r, steps_per_epoch=10)
  assert float(schedule(0)) == pytest.approx(1e-3)
  assert float(schedule(50)) == pytest.approx(5e-4, rel=1e-5)


def test_warmup_before_step_decays_keeps_their_points():
  r = recipe(epochs=10, lr_warmup_fraction=0.2)  # 0.01, x0.2 at 30/60/80%
  schedule = optimizers.lr_schedule(r, steps_per_epoch=5)  # 50 steps
  lr = [float(schedule(s)) for s in (0, 5, 10, 14, 15, 30, 40)]
  np.testing.assert_allclose(lr, [0, .005, .01, .01, .002, 4e-4, 8e-5],
                             rtol=1e-5)


def test_adamw_by_hand_decays_matrices_only():
  r = recipe(optimizer='adamw', learning_rate=1e-2, weight_decay=0.1,
             adam_betas=(0.8, 0.99), lr_schedule='cosine', epochs=1)
  spe, n = 4, 3
  got = run_updates(optimizers.make_optimizer(r, spe), steps=n)
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(3, 2)).astype(np.float32),
            'b': rng.normal(size=(2,)).astype(np.float32)}
  params = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v2 = {k: np.zeros_like(v) for k, v in params.items()}
  b1, b2, eps = 0.8, 0.99, 1e-8
  for t in range(1, n + 1):
    lr = 1e-2 * 0.5 * (1 + math.cos(math.pi * (t - 1) / spe))
    for k in ('b', 'w'):  # the order tree_map draws them in
      g = rng.normal(size=params[k].shape).astype(np.float32)
      m[k] = b1 * m[k] + (1 - b1) * g
      v2[k] = b2 * v2[k] + (1 - b2) * g * g
      step = (m[k] / (1 - b1 ** t)) / (np.sqrt(v2[k] / (1 - b2 ** t)) + eps)
      if k == 'w':  # decoupled decay on matrices, not on the bias
        step = step + 0.1 * params[k]
      params[k] = params[k] - lr * step
  for k in params:
    np.testing.assert_allclose(got[k], params[k], rtol=2e-5, atol=1e-6)


def test_clip_grad_norm_bounds_the_first_sgd_step():
  r = recipe(learning_rate=1.0, momentum=0.5, weight_decay=0.0,
             clip_grad_norm=0.5)
  tx = optimizers.make_optimizer(r, steps_per_epoch=10)
  params = jnp.zeros(4)
  grads = jnp.asarray([3.0, 4.0, 0.0, 0.0])  # norm 5 -> 0.5
  updates, _ = tx.update(grads, tx.init(params), params)
  # Nesterov's first step: lr * (1 + momentum) * g_clipped.
  np.testing.assert_allclose(updates, -1.5 * grads / 10, rtol=1e-6)


def test_label_smoothing_is_the_ce_of_the_smoothed_target():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 7)).astype(np.float32) * 3
  labels = rng.integers(0, 7, 5)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  onehot = np.eye(7)[labels]
  for e in (0.0, 0.1, 0.5):
    target = (1 - e) * onehot + e / 7
    np.testing.assert_allclose(
        losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), e),
        -(target * logp).sum(-1), rtol=1e-5)
  # 0 is the plain CE, computed as before, bit for bit.
  plain = jax.nn.log_softmax(jnp.asarray(logits))
  np.testing.assert_array_equal(
      losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
      -jnp.take_along_axis(plain, jnp.asarray(labels)[:, None], -1)[:, 0])
  # The training loss reads it from the recipe; knowledge terms unchanged.
  c = config_lib.default_config()
  c.pretrain.label_smoothing = 0.1
  assert distill.StepConfig.from_config(c, 'pretrain').label_smoothing == 0.1
  assert distill.StepConfig.from_config(c).label_smoothing == 0.0
  sc = distill.StepConfig.from_config(c, 'pretrain')
  loss, metrics = distill.views_loss([jnp.asarray(logits)],
                                     jnp.asarray(labels), None, sc)
  np.testing.assert_allclose(
      loss, (-(((0.9 * onehot + 0.1 / 7) * logp).sum(-1))).mean(), rtol=1e-5)


BAD = [
    ('optimizer', 'adam', 'allowed: sgd_nesterov, adamw'),
    ('lr_schedule', 'linear', 'allowed: step, cosine'),
    ('lr_warmup_fraction', float('nan'), r'in \[0, 1\)'),
    ('lr_warmup_fraction', 1.0, r'in \[0, 1\)'),
    ('label_smoothing', float('nan'), r'in \[0, 1\)'),
    ('label_smoothing', -0.1, r'in \[0, 1\)'),
    ('adam_betas', (0.9, float('nan')), r'every value .* in \[0, 1\)'),
    ('adam_betas', (0.9,), 'needs 2 values'),
    ('clip_grad_norm', float('inf'), '>= 0'),
    ('clip_grad_norm', -1.0, '>= 0'),
]


@pytest.mark.parametrize('section', ['pretrain', 'finetune'])
@pytest.mark.parametrize('key,value,allowed', BAD)
def test_each_bad_recipe_value_is_one_line_naming_key_value_and_rule(
    section, key, value, allowed):
  c = config_lib.default_config()
  c[section][key] = value
  with pytest.raises(validate.ConfigError) as e:
    validate.validate_config(c)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(f'config.{section}.{key}={value!r}: ')
  assert re.search(allowed, message)


@pytest.mark.parametrize('model,value,why', [
    ('vit_cifar', 'depth', 'not name=value'),
    ('vit_cifar', 'width=3', "'width' is not an architecture attribute of "
     'vit_cifar; allowed: depth, embed_dim'),
    ('vit_cifar', 'depth=0', 'depth must be a positive integer'),
    ('vit_cifar', 'pool=3', 'pool must be a name'),
    ('vit_cifar', 'pool=max', "pool must be 'cls' or 'mean'"),
    ('vit_cifar', 'embed_dim=32', 'embed_dim 32 is not a multiple of '
     'num_heads=3'),
    ('resnet56', 'depth=20', 'resnet56 has no architecture attributes'),
])
def test_bad_architecture_overrides_are_refused(model, value, why):
  c = config_lib.default_config()
  c.model.name = model
  c.model.architecture = value
  with pytest.raises(validate.ConfigError, match=f'config.model.architecture'
                     f'={value!r}: .*{why}'):
    validate.validate_config(c)


def test_vit_config_validates_and_sets_the_vit_recipe():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'vit_cifar_config', REPO / 'configs' / 'vit_cifar.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  validate.validate_config(c)
  assert (c.model.name, c.search.warmup, c.search.criterion) == (
      'vit_cifar', False, 'ekg')
  for section in ('pretrain', 'finetune'):
    r = c[section]
    assert (r.optimizer, r.lr_schedule, r.label_smoothing) == (
        'adamw', 'cosine', 0.1)
    assert 0 < r.lr_warmup_fraction < 1
  # The tiny size the end-to-end test runs.
  c.model.architecture = 'depth=2,embed_dim=32,num_heads=2,mlp_ratio=2'
  validate.validate_config(c)
  kw = config_lib.model_kwargs(c, 10)
  assert {k: kw[k] for k in TINY_VIT} == TINY_VIT
  assert create_model(c.model.name, **kw).depth == 2


def test_vit_without_batch_stats_trains_and_checkpoints(tmp_path):
  """A BN-free network: no 'batch_stats' in, none out; the train state
  ({} for them) round-trips through the train checkpoints."""
  model = create_model('vit_cifar', num_classes=10, **TINY_VIT)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert set(variables) == {'params'}
  c = config_lib.default_config()
  c.data.mean, c.data.std = (120.0,) * 3, (60.0,) * 3
  c.finetune.knowledge = 'none'
  c.finetune.optimizer = 'adamw'
  c.finetune.lr_schedule = 'cosine'
  c.finetune.label_smoothing = 0.1
  tx = optimizers.make_optimizer(c.finetune, 10)
  state = train_lib.TrainState.create(variables, tx)
  assert state.batch_stats == {} and set(state.variables) == {'params'}
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (4, 32, 32, 3)), jnp.uint8)
  labels = jnp.asarray(rng.integers(0, 10, 4), jnp.int32)
  step = jax.jit(train_lib.make_step(model, tx,
                                     distill.StepConfig.from_config(c)))
  state, metrics = step(state, jax.random.split(jax.random.key(1), 4),
                        images, labels, None)
  assert int(state.step) == 1 and np.isfinite(float(metrics['loss']))
  assert set(state.variables) == {'params'}
  moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                 state.params, variables['params'])
  assert any(jax.tree_util.tree_leaves(moved))
  saver = checkpoint.TrainCheckpoints(str(tmp_path / 'checkpoints'))
  saver.save(state, {'epoch': 0})
  restored, progress = saver.restore(train_lib.TrainState.create(
      variables, tx))
  saver.close()
  assert progress == {'epoch': 0} and restored.batch_stats == {}
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params,
                         state.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.opt_state,
                         state.opt_state)
