"""Section 3: the importance of a gate applied at several places."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import HiddenDenseNet, perturb
from ekg_jax.supernet import gates
from ekg_jax.search import importance


def two_place_objective(masks, batch):
  """One gate `g` applied at two places; the objective is linear in both
  gated activations, so dObj/dy is p at the first place and q at the
  second."""
  x, p, q = batch
  y1 = gates.apply_gate(x, masks, 'g', straight_through=True)
  y2 = gates.apply_gate(-2.0 * x, masks, 'g', straight_through=True)
  return jnp.sum(y1 * p) + jnp.sum(y2 * q)


@pytest.fixture
def problem():
  rng = np.random.default_rng(0)
  channels = 6
  mask = jnp.asarray([1., 1., 0., 1., 1., 1.])
  batches = []
  for size in (4, 3):
    x = jnp.asarray(rng.normal(size=(size, channels)) + 1.0, jnp.float32)
    p = jnp.asarray(rng.normal(size=(size, channels)), jnp.float32)
    # Same sign of x * p and x * q at both places: y1 = x, y2 = -2x, so the
    # two places' contributions have opposite signs and partly cancel.
    q = 0.4 * p
    batches.append((x, p, q))
  return {'g': mask}, batches


def hand_scores(masks, batches):
  total = np.zeros(masks['g'].shape)
  m = np.asarray(masks['g'])
  for x, p, q in batches:
    x, p, q = map(np.asarray, (x, p, q))
    total += np.abs((p * x * m).sum(0))  # place 1: |sum dy * y|
    total += np.abs((q * -2 * x * m).sum(0))  # place 2
  return total


def test_score_sums_absolute_contributions_per_place_and_batch(problem):
  masks, batches = problem
  scores = jax.jit(lambda m: importance.gate_gradient_scores(
      two_place_objective, m, batches))(masks)
  expected = hand_scores(masks, batches)
  np.testing.assert_allclose(scores['g'], expected, rtol=1e-5)
  assert scores['g'][2] == 0.0  # a masked channel scores 0

  # The old formula, |m * dObj/dm| per batch, adds the places' signed
  # contributions first; they cancel, so it cannot pass this test.
  old = sum(np.abs(np.asarray(masks['g'])
                   * np.asarray(jax.grad(two_place_objective)(masks, b)['g']))
            for b in batches)
  assert not np.allclose(old, expected, rtol=1e-3)
  assert np.all(old[np.asarray(masks['g']) > 0]
                < expected[np.asarray(masks['g']) > 0])


def test_plain_gradient_with_respect_to_the_mask_is_unchanged(problem):
  """A probe changes nothing for users who differentiate the mask."""
  masks, batches = problem
  x, p, q = batches[0]
  grad = jax.grad(two_place_objective)(masks, batches[0])['g']
  np.testing.assert_allclose(
      grad, np.sum(np.asarray(p * x - 2 * q * x), axis=0), rtol=1e-5)


def test_weight_criteria_read_each_layers_description():
  """Hidden dense layers' filters (kernel columns) score their out_gate, and
  a layer kind known only by its description (ChannelScale) gives bn_gamma
  and gbn its per-channel scale, as a BN does."""
  model = HiddenDenseNet()
  table = gates.layer_table(model, (8,))
  x = jax.random.normal(jax.random.key(1), (4, 8))
  variables = perturb(model.init(jax.random.key(0), x))
  params = jax.tree_util.tree_map(np.asarray, variables['params'])
  l1 = importance.weight_scores('l1', table, variables)
  np.testing.assert_allclose(l1['h1'], np.abs(params['fc1']['kernel']).sum(0),
                             rtol=1e-6)
  np.testing.assert_allclose(l1['h2'], np.abs(params['fc2']['kernel']).sum(0),
                             rtol=1e-6)
  gamma = importance.weight_scores('bn_gamma', table, variables)
  np.testing.assert_allclose(gamma['h1'], np.abs(params['fc1_bn']['scale']))
  np.testing.assert_allclose(gamma['h2'], np.abs(params['scale']['scale']))

  def loss(p, x):
    return model.apply({**variables, 'params': p}, x, train=True,
                       mutable=['batch_stats'])[0].sum()
  grads = jax.grad(loss)(variables['params'], x)
  gbn = importance.bn_taylor_scores(loss, variables['params'], table, {},
                                    [x])
  np.testing.assert_allclose(
      gbn['h2'], np.abs(params['scale']['scale']
                        * np.asarray(grads['scale']['scale'])), rtol=1e-6)
