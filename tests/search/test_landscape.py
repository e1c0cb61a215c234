"""Landscape measures against closed-form Hessians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ekg_jax.search import landscape


def quadratic():
  """0.5 p^T A p + b^T p over a two-leaf pytree: the Hessian is A."""
  rng = np.random.default_rng(0)
  m = rng.normal(size=(12, 12))
  a = (m + m.T) / 2 + np.diag(np.linspace(-3, 8, 12))  # indefinite
  b = rng.normal(size=12)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            'v': jnp.asarray(rng.normal(size=6), jnp.float32)}

  def loss(p):
    flat = jnp.concatenate([p['v'], p['w'].ravel()])  # ravel_pytree order
    return 0.5 * flat @ jnp.asarray(a, jnp.float32) @ flat + flat @ b
  return loss, params


def least_squares():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)
  y = jnp.asarray(rng.normal(size=50), jnp.float32)
  params = {'w': jnp.asarray(rng.normal(size=8), jnp.float32)}
  return (lambda p: 0.5 * jnp.mean((x @ p['w'] - y) ** 2)), params


def dense_hessian(loss, params):
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  return np.asarray(jax.hessian(lambda f: loss(unravel(f)))(flat), np.float64)


@pytest.mark.parametrize('problem', [quadratic, least_squares])
def test_eigenvalues_and_trace_match_jax_hessian(problem):
  loss, params = problem()
  h = dense_hessian(loss, params)
  exact = np.sort(np.linalg.eigvalsh(h))[::-1]
  matvec, dim = landscape.flat_hvp(loss, params)
  np.testing.assert_allclose(matvec(np.eye(dim)[3]), h[3], rtol=1e-4,
                             atol=1e-4)
  ritz = landscape.lanczos(matvec, dim, dim, seed=0)
  np.testing.assert_allclose(ritz, exact, rtol=1e-4, atol=1e-4)
  # Fewer iterations: the extreme eigenvalues converge first.
  few = landscape.lanczos(matvec, dim, max(dim - 4, 4), seed=0)
  np.testing.assert_allclose([few[0], few[-1]], [exact[0], exact[-1]],
                             rtol=2e-2, atol=2e-2)
  trace, error = landscape.hutchinson_trace(matvec, dim, 3000, seed=0)
  assert abs(trace - np.trace(h)) < max(4 * error, 1e-3)
  assert error < 0.1 * max(abs(np.trace(h)), 1.0)


def test_analyse_is_deterministic_for_a_seed():
  loss, params = quadratic()
  config = landscape.LandscapeConfig(lanczos_iterations=8, trace_samples=5,
                                     slice_points=5, grid_points=3, seed=3)
  a = landscape.analyse(loss, params, config)
  b = landscape.analyse(loss, params, config)
  assert a == b
  c = landscape.analyse(loss, params,
                        landscape.LandscapeConfig(**{**a['config'],
                                                     'seed': 4}))
  assert c['trace'] != a['trace']
  # The slices pass through the point itself.
  assert a['slice_1d']['loss'][2] == pytest.approx(a['loss'], rel=1e-6)
  assert np.asarray(a['slice_2d']['loss'])[1, 1] == pytest.approx(
      a['loss'], rel=1e-6)


def test_filter_normalized_direction():
  params = {'kernel': jnp.arange(48.0).reshape(2, 2, 3, 4),
            'bias': jnp.ones(4)}
  d = landscape.filter_normalized_direction(params, jax.random.key(0))
  np.testing.assert_array_equal(d['bias'], 0.0)
  np.testing.assert_allclose(jnp.sqrt((d['kernel'] ** 2).sum((0, 1, 2))),
                             jnp.sqrt((params['kernel'] ** 2).sum((0, 1, 2))),
                             rtol=1e-5)


def test_lanczos_with_a_tolerance_stops_once_lambda_min_settles():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
  h = q @ np.diag(np.r_[np.linspace(-2.0, 5.0, 59), 40.0]) @ q.T
  matvec = lambda v: h @ v
  fixed = landscape.lanczos(matvec, 60, 60, seed=1)
  trajectory = []
  early = landscape.lanczos(matvec, 60, 60, seed=1, tolerance=1e-3,
                            trajectory=trajectory)
  assert 3 <= len(trajectory) < 60  # stopped before the full space
  assert trajectory[-1] == early[-1]  # the last step's lambda_min
  last = [abs(trajectory[i] - trajectory[i - 1]) / abs(trajectory[i])
          for i in (-1, -2)]
  assert max(last) <= 1e-3
  assert abs(early[-1] - fixed[-1]) < 0.05 * abs(fixed[-1])
  # Without a tolerance: every step, the same Ritz values as before.
  plain = []
  np.testing.assert_array_equal(
      landscape.lanczos(matvec, 60, 20, seed=1, trajectory=plain),
      landscape.lanczos(matvec, 60, 20, seed=1))
  assert len(plain) == 20


def test_held_out_subsets_are_disjoint_from_the_search_and_each_other():
  from ekg_jax.data import datasets
  labels = np.repeat(np.arange(3), 20)
  val = datasets.class_subset_indices(labels, 4, from_end=True)
  held = [datasets.class_subset_indices(labels, 4, from_end=True, offset=4 * k)
          for k in (1, 2)]
  warmup = datasets.class_subset_indices(labels, 5, from_end=False)
  for subset in held:
    assert len(subset) == 12 and np.bincount(labels[subset]).tolist() == [4] * 3
    assert not np.intersect1d(subset, val).size
    assert not np.intersect1d(subset, warmup).size
  assert not np.intersect1d(*held).size
  with pytest.raises(ValueError, match='fewer than the 24 per class'):
    datasets.class_subset_indices(labels, 4, from_end=True, offset=20)
