"""Slimmed networks compute what their masked supernets compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import HiddenDenseNet, perturb
from ekg_jax.supernet import flops, gates, slimming
from ekg_jax.models import create_model

FAMILIES = [('resnet20', 32), ('resnet56', 32), ('mobilenet_v2', 32),
            ('resnet18', 32), ('resnet34', 32), ('resnet50', 32),
            ('vgg16', 32)]


# The ImageNet ResNets', MobileNet-v2's and ResNet-56's checks (about 190 s
# of the fast suite's work; the bottleneck block is resnet50's) run with the
# slow suite; the fast one keeps ResNet-20 (ResNet-56's blocks, fewer of
# them) and VGG-16.
SLOW = ('resnet18', 'resnet34', 'resnet50', 'mobilenet_v2', 'resnet56')


@pytest.mark.parametrize('name,size,seed', [
    *[pytest.param(name, size, 0, marks=[pytest.mark.slow] * (name in SLOW))
      for name, size in FAMILIES], ('resnet20', 32, 1)])
def test_slimmed_equals_masked(name, size, seed):
  model = create_model(name, num_classes=10)
  shape = (size, size, 3)
  table = gates.layer_table(model, shape)
  specs = gates.gate_specs(table)
  x = jax.random.normal(jax.random.key(seed), (3, *shape))
  variables = perturb(model.init(jax.random.key(0), x), seed)
  rng = np.random.default_rng(seed)
  kept = {g: int(rng.integers(1, s.channels + 1)) for g, s in specs.items()}
  ranks = {g: jnp.asarray(rng.permutation(s.channels))
           for g, s in specs.items()}
  masks = gates.masks_from_kept(kept, ranks)

  slim_model, slim_vars = slimming.slim(model, variables, masks, table)
  masked = jax.jit(model.apply)(variables, x, masks=masks)
  slimmed = jax.jit(slim_model.apply)(slim_vars, x)
  scale = float(jnp.abs(masked).max())
  np.testing.assert_allclose(slimmed, masked, rtol=1e-4, atol=1e-5 * scale)

  slim_table = gates.layer_table(slim_model, shape)
  assert flops.count_flops(slim_table) == flops.count_flops(table, kept)
  assert flops.count_flops(slim_table, include_bn=True) == flops.count_flops(
      table, kept, include_bn=True)
  n_params = sum(a.size for a in jax.tree_util.tree_leaves(
      slim_vars['params']))
  assert n_params == flops.count_params(table, kept)
  assert flops.count_params(slim_table) == n_params


def test_slim_rejects_empty_gate():
  model = create_model('resnet20')
  table = gates.layer_table(model, (32, 32, 3))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match='keep no channel'):
    slimming.slim(model, variables, {'stage0': jnp.zeros(16)}, table)
  with pytest.raises(KeyError, match='unknown gates'):
    slimming.slim(model, variables, {'stage7': jnp.ones(16)}, table)


@pytest.mark.parametrize('renormalize', [True, False])
def test_hidden_dense_layers_slim_on_both_axes(renormalize):
  """Dense layers with an out_gate (kernel outputs and bias) and a layer
  kind known only by its description (ChannelScale) slim exactly."""
  model = HiddenDenseNet(renormalize=renormalize)
  table = gates.layer_table(model, (8,))
  x = jax.random.normal(jax.random.key(1), (4, 8))
  variables = perturb(model.init(jax.random.key(0), x))
  masks = {'h1': jnp.array([0., 1, 1, 0, 1, 0]),
           'h2': jnp.array([1., 0, 0, 1, 1])}
  slim_model, slim_vars = slimming.slim(model, variables, masks, table)
  params = slim_vars['params']
  assert params['fc1']['kernel'].shape == (8, 3)
  assert params['fc1']['bias'].shape == (3,)
  assert params['fc2']['kernel'].shape == (3, 3)
  assert params['scale']['scale'].shape == (3,)
  assert params['fc3']['kernel'].shape == (3, 10)
  np.testing.assert_array_equal(
      params['fc1']['bias'],
      np.asarray(variables['params']['fc1']['bias'])[[1, 2, 4]])
  np.testing.assert_allclose(
      slim_model.apply(slim_vars, x),
      model.apply(variables, x, masks=masks), rtol=1e-5, atol=1e-6)
  assert flops.count_params(table, gates.kept_from_masks(masks)) == sum(
      a.size for a in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize('name,kw', [
    ('resnet20', {}), pytest.param('mobilenet_v2', {}, marks=pytest.mark.slow),
    ('vit_cifar', dict(depth=2, embed_dim=32, num_heads=8, mlp_ratio=2))])
def test_padding_narrow_gates_keeps_the_slimmed_logits(name, kw):
  """Inference padding (`pad_narrow`): gates under 8 wide grow to 8 (or
  their full width) with zero channels, and the logits do not move."""
  model = create_model(name, num_classes=10, **kw)
  shape = (32, 32, 3)
  table = gates.layer_table(model, shape)
  specs = gates.gate_specs(table)
  x = jax.random.normal(jax.random.key(0), (2, *shape))
  variables = perturb(model.init(jax.random.key(0), x))
  rng = np.random.default_rng(0)
  kept = {g: int(rng.integers(1, min(s.channels, 6) + 1)) if i % 2 else
          int(rng.integers(1, s.channels + 1))
          for i, (g, s) in enumerate(specs.items())}
  masks = gates.masks_from_kept(kept, {g: jnp.arange(s.channels)
                                       for g, s in specs.items()})
  slim_model, slim_vars = slimming.slim(model, variables, masks, table)
  wide_model, wide_vars = slimming.pad_narrow(slim_model, slim_vars, shape, 8)
  widths = {g: dict(wide_model.widths).get(g, s.channels)
            for g, s in specs.items()}
  assert widths == {g: max(k, min(8, specs[g].channels))
                    for g, k in kept.items()}
  assert any(k < 8 for k in kept.values())
  slimmed = jax.jit(slim_model.apply)(slim_vars, x)
  padded = jax.jit(wide_model.apply)(wide_vars, x)
  scale = float(jnp.abs(slimmed).max())
  np.testing.assert_allclose(padded, slimmed, rtol=1e-5, atol=1e-6 * scale)
  # Already wide enough: nothing changes.
  same_model, same_vars = slimming.pad_narrow(wide_model, wide_vars, shape, 8)
  assert same_model.widths == wide_model.widths
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, same_vars,
                                          wide_vars)))
