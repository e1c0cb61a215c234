import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ekg_jax.supernet import gates
from ekg_jax.models import create_model

from conftest import random_variables


def resnet_gates(depth):
  model = create_model(f'resnet{depth}')
  return gates.gate_specs(gates.layer_table(model, (32, 32, 3)))


@pytest.mark.parametrize('depth,n', [(20, 3), (32, 5), (56, 9), (110, 18)])
def test_cifar_resnet_gate_structure(depth, n):
  specs = resnet_gates(depth)
  # One inner gate per block plus one residual-stream gate per stage.
  assert len(specs) == 3 * n + 3
  for stage, width in enumerate((16, 32, 64)):
    assert specs[f'stage{stage}'] == gates.GateSpec(f'stage{stage}', width,
                                                    1 + n)
    for b in range(n):
      assert specs[f'stage{stage}/block{b}'].writers == 1
      assert specs[f'stage{stage}/block{b}'].channels == width


def test_layer_table_lists_readers_and_writers():
  model = create_model('resnet20')
  table = {l.name: l for l in gates.layer_table(model, (32, 32, 3))}
  proj = table['BasicBlock1.0/conv3']
  assert (proj.in_gate, proj.out_gate, proj.kernel_size, proj.out_hw) == (
      'stage0', 'stage1', (1, 1), (16, 16))
  assert table['fc'].in_gate == 'stage2' and table['fc'].out_gate is None
  assert table['conv'].in_gate is None  # image channels are not prunable
  assert table['BasicBlock2.2/bn1'].out_gate == 'stage2/block2'


def test_masks_from_kept_and_ranks():
  ranks = {'a': jnp.array([2, 0, 3, 1])}
  masks = gates.masks_from_kept({'a': 2}, ranks)
  np.testing.assert_array_equal(masks['a'], [0, 1, 0, 1])
  # A stack of kept counts gives a stack of masks (what vmap sees).
  stacked = gates.masks_from_kept({'a': jnp.array([1, 4])}, ranks)
  np.testing.assert_array_equal(stacked['a'], [[0, 1, 0, 0], [1, 1, 1, 1]])


def test_ranks_from_scores_most_important_first():
  ranks = gates.ranks_from_scores({'a': jnp.array([0.1, 5.0, 0.0, 2.0])})
  np.testing.assert_array_equal(ranks['a'], [2, 0, 3, 1])


def test_mask_of_wrong_length_is_rejected():
  model = create_model('resnet20')
  x = jnp.zeros((1, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="gate 'stage0' has shape \\(5,\\)"):
    model.apply(variables, x, masks={'stage0': jnp.ones(5)})


def test_mask_for_unknown_gate_is_rejected():
  specs = resnet_gates(20)
  with pytest.raises(KeyError, match="unknown gates \\['nope'\\]"):
    gates.validate_gate_names(specs, {'nope': 1}, 'masks')


def test_all_ones_masks_equal_dense_network():
  model = create_model('resnet20')
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  specs = resnet_gates(20)
  ones = gates.masks_from_kept(gates.full_kept(specs),
                               gates.identity_ranks(specs))
  chex.assert_trees_all_close(model.apply(variables, x, masks=ones),
                              model.apply(variables, x), atol=1e-6)


@pytest.mark.parametrize('straight_through', [True, False])
def test_gate_gradients(straight_through):
  x = jnp.arange(6.0).reshape(1, 2, 3)
  mask = jnp.array([1.0, 0.0, 1.0])
  f = lambda x, m: jnp.sum(gates.apply_gate(x, {'g': m}, 'g',
                                            straight_through) * 2.0)
  dx, dm = jax.grad(f, argnums=(0, 1))(x, mask)
  np.testing.assert_allclose(dm, 2.0 * x.sum(axis=(0, 1)))
  expected_dx = 2.0 * (jnp.ones_like(x) if straight_through
                       else jnp.broadcast_to(mask, x.shape))
  np.testing.assert_allclose(dx, expected_dx)


@pytest.mark.parametrize('renormalize', [True, False])
def test_masked_apply_equals_op_with_masked_kernel(renormalize):
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 5))
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
  in_mask, out_mask = jnp.array([1., 0, 1, 1]), jnp.array([0., 1, 1, 0, 1])
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  masked = kernel * in_mask[:, None] * out_mask
  if renormalize:  # section 7: keep the full kernel's L2 norm
    masked = masked * jnp.linalg.norm(kernel) / jnp.linalg.norm(masked)
  np.testing.assert_allclose(
      gates.masked_apply(conv, x, kernel, in_mask, out_mask, renormalize),
      conv(x, masked), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', [
    'resnet20', pytest.param('mobilenet_v2', marks=pytest.mark.slow),
    'vgg16'])
def test_segments_compose_to_the_whole_network(name):
  """Running segments [0, 1), [1, n/2), [n/2, n-1), [n-1, end) one after
  the other equals one full pass, with masks and BN in batch-statistics
  mode: split after the stem, mid-network and before the head, in one
  chain (each boundary hands its activations to the next segment, as the
  separate [0, k) + [k, end) passes did, and a segment both starts and
  stops mid-network; one network's compilation instead of three)."""
  model = create_model(name, num_classes=10)
  table = gates.layer_table(model, (32, 32, 3))
  specs = gates.gate_specs(table)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = random_variables(model, x)
  rng = np.random.default_rng(0)
  masks = gates.masks_from_kept(
      {g: int(rng.integers(1, s.channels + 1)) for g, s in specs.items()},
      gates.identity_ranks(specs))

  def run(x, start=0, stop=None):
    return model.apply(variables, x, masks=masks, train=True, start=start,
                       stop=stop, mutable=['batch_stats'])[0]

  n = gates.num_segments(table)
  bounds = [0, 1, n // 2, n - 1, None]
  assert 1 < n // 2 < n - 1  # three distinct inner boundaries

  def chain(x):
    for start, stop in zip(bounds[:-1], bounds[1:]):
      x = run(x, start, stop)
    return x

  full = jax.jit(run)(x)
  np.testing.assert_allclose(jax.jit(chain)(x), full, rtol=1e-5, atol=1e-5)


def test_first_segments_of_resnet20():
  table = gates.layer_table(create_model('resnet20'), (32, 32, 3))
  first = gates.first_segments(table)
  assert gates.num_segments(table) == 1 + 9 + 1
  assert first['stage0'] == 0  # the stem writes it
  assert first['stage0/block1'] == 2  # block 0.1 is segment 2
  assert first['stage1'] == 4  # created at block 1.0's projection
  assert first['stage2/block2'] == 9


def test_vgg16_has_a_gate_per_conv_and_one_for_the_hidden_layer():
  table = gates.layer_table(create_model('vgg16'), (32, 32, 3))
  specs = gates.gate_specs(table)
  widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
  assert specs == {
      **{f'conv{i}': gates.GateSpec(f'conv{i}', w, 1)
         for i, w in enumerate(widths)},
      'fc1': gates.GateSpec('fc1', 512, 1)}
  # One segment per conv block, then the hidden layer and the classifier;
  # each gate starts in the segment of the layer writing it.
  assert gates.num_segments(table) == 13 + 2
  assert gates.first_segments(table) == {
      **{f'conv{i}': i for i in range(13)}, 'fc1': 13}
  by_name = {l.name: l for l in table}
  assert (by_name['fc1'].in_gate, by_name['fc1'].out_gate) == ('conv12',
                                                               'fc1')
  assert (by_name['fc2'].in_gate, by_name['fc2'].out_gate) == ('fc1', None)


@pytest.mark.parametrize('renormalize', [True, False])
def test_dense_out_gate_masks_kernel_outputs_and_bias(renormalize):
  layer = gates.GatedDense(5, in_gate='a', out_gate='b',
                           renormalize=renormalize)
  x = jax.random.normal(jax.random.key(1), (3, 4))
  variables = layer.init(jax.random.key(0), x)
  kernel = variables['params']['kernel']
  bias = jnp.arange(1.0, 6.0)
  variables = {'params': {'kernel': kernel, 'bias': bias}}
  a, b = jnp.array([1., 0, 1, 1]), jnp.array([0., 1, 1, 0, 1])
  masked = kernel * a[:, None] * b
  if renormalize:
    masked = masked * jnp.linalg.norm(kernel) / jnp.linalg.norm(masked)
  np.testing.assert_allclose(
      layer.apply(variables, x, {'a': a, 'b': b}),
      x @ masked + bias * b, rtol=1e-5, atol=1e-6)


def test_description_that_disagrees_with_the_variables_is_refused():
  class Mislabelled(gates.GatedDense):
    def describe_layer(self, x, y):
      spec = super().describe_layer(x, y)
      return dataclasses.replace(spec, variables=spec.variables[:1])

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return Mislabelled(3, name='fc')(x)

  with pytest.raises(ValueError, match="fc: describe_layer lists"):
    gates.layer_table(Net(), (4,))
