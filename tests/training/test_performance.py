"""The speed-ups change no numbers: segment materialisation, XLA flags."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ekg_jax.supernet import ops
from ekg_jax.runtime import xla_config
from ekg_jax.models import create_model

from conftest import random_variables


# MobileNet-v2's 43 s in the slow suite: the fast one stays within its time.
@pytest.mark.parametrize('name', [
    'resnet20', pytest.param('mobilenet_v2', marks=pytest.mark.slow)])
def test_materialized_segments_equal_plain_graph(name):
  """The optimisation barrier between segments (on by default on CPU) gives
  the same logits, BN updates and gradients as the plain graph."""
  plain = create_model(name, materialize_segments=False)
  barrier = create_model(name, materialize_segments=True)
  variables = random_variables(plain, jnp.zeros((1, 32, 32, 3)))
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))

  def loss(model, params):
    z, updates = model.apply({**variables, 'params': params}, x, train=True,
                             mutable=['batch_stats'])
    return (z ** 2).mean(), (z, updates)

  outs = [jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p), has_aux=True))(
      variables['params']) for m in (plain, barrier)]
  # Same ops, same order: equal to float rounding of fusion differences.
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      outs[0], outs[1])
  jaxpr = jax.make_jaxpr(lambda p: loss(barrier, p))(variables['params'])
  assert 'optimization_barrier' in str(jaxpr)
  jaxpr = jax.make_jaxpr(lambda p: loss(plain, p))(variables['params'])
  assert 'optimization_barrier' not in str(jaxpr)


def test_fast_cpu_flags_are_added_once_and_keep_the_users(monkeypatch):
  monkeypatch.setattr('jax._src.xla_bridge.backends_are_initialized',
                      lambda: False)
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert xla_config.set_fast_cpu_flags(env)
  assert env['XLA_FLAGS'].split() == [
      '--xla_force_host_platform_device_count=4', *xla_config.FAST_CPU_FLAGS]
  assert not xla_config.set_fast_cpu_flags(env)  # already there
  # A user's own value of the same flag wins.
  name = xla_config.FAST_CPU_FLAGS[0].split('=')[0]
  env = {'XLA_FLAGS': f'{name}=-reduce'}
  assert not xla_config.set_fast_cpu_flags(env)
  assert env['XLA_FLAGS'] == f'{name}=-reduce'


def test_flags_this_xla_does_not_know_are_left_out(monkeypatch, tmp_path):
  """XLA aborts on an unknown flag: it is tried in a child process (which
  dies, not this one), left out, and the answer kept in the cache."""
  monkeypatch.setattr('jax._src.xla_bridge.backends_are_initialized',
                      lambda: False)
  monkeypatch.setenv('EKG_JAX_CACHE', str(tmp_path))
  monkeypatch.setattr(xla_config, '_known', {})
  unknown = ('--xla_ekg_jax_no_such_flag=1',)
  monkeypatch.setattr(xla_config, 'FAST_CPU_FLAGS', unknown)
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert not xla_config.set_fast_cpu_flags(env)
  assert env == {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  cached = json.loads((tmp_path / xla_config.PROBE_FILE).read_text())
  assert list(cached.values()) == [False]
  # The shipped flag is known to the main environment's XLA (should a
  # release drop it, this fails: the speed-up is gone, see xla_config).
  assert xla_config.flags_known(
      ('--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',))


def test_fast_cpu_flags_refused_after_backend_start():
  jax.devices()  # starts the backend
  env = {}
  assert not xla_config.set_fast_cpu_flags(env)
  assert env == {}


@pytest.mark.parametrize('strides,depthwise', [(1, False), (2, False),
                                               (1, True)])
def test_sliced_kernel_gradient_conv_equals_plain_conv(strides, depthwise):
  """ops.conv2d (kernel gradient summed over batch slices on CPU) has the
  plain conv's value and gradients, also under vmap."""
  batch = 3 * ops.KERNEL_GRAD_SLICE  # three slices: the sliced path
  c_in, c_out = 8, 8 if depthwise else 12
  groups = c_in if depthwise else 1
  x = jax.random.normal(jax.random.key(0), (batch, 8, 8, c_in))
  kernel = jax.random.normal(jax.random.key(1),
                             (3, 3, 1 if depthwise else c_in, c_out))
  target = jax.random.normal(jax.random.key(2),
                             (batch, 8 // strides, 8 // strides, c_out))

  def loss(conv, x, kernel):
    return jnp.sum(conv(x, kernel, strides, groups) * target)

  fast = jax.jit(jax.value_and_grad(lambda x, k: loss(ops.conv2d, x, k),
                                    argnums=(0, 1)))
  plain = jax.jit(jax.value_and_grad(lambda x, k: loss(ops._conv, x, k),
                                     argnums=(0, 1)))
  assert 'custom_vjp' in str(jax.make_jaxpr(
      lambda x, k: loss(ops.conv2d, x, k))(x, kernel))
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-4),
      fast(x, kernel), plain(x, kernel))
  stacked = jnp.stack([kernel, 2 * kernel])
  grads = [jax.vmap(jax.grad(lambda k, f=f: loss(f, x, k)))(stacked)
           for f in (ops.conv2d, ops._conv)]
  np.testing.assert_allclose(grads[0], grads[1], rtol=2e-5, atol=2e-4)
