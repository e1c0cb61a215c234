"""The CIFAR ViT: gates over heads and MLP units, FLOPs and parameters by
hand, slimmed == masked, the weight criteria per head, the BN-only pieces
refused, a search, and export (jax.export; ONNX in the slow suite)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import perturb, require_onnx
from ekg_jax import config as config_lib
from ekg_jax import prune, rules
from ekg_jax.data import datasets
from ekg_jax.deploy import export, export_onnx
from ekg_jax.models import create_model
from ekg_jax.run import validate
from ekg_jax import search
from ekg_jax.search import Batches, importance, warmup
from ekg_jax.supernet import flops, gates, slimming

SHAPE = (32, 32, 3)
# depth 2, width 32, 2 heads of 16, MLP 64 (ratio 2), 8x8 patches + class
# token = 65 tokens, 10 classes.
TINY = dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2)
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def tiny(**kw):
  return create_model('vit_cifar', **{**TINY, **kw})


@pytest.fixture(scope='module')
def table():
  return gates.layer_table(tiny(), SHAPE)


def by_hand(heads, hidden):
  """(MACs, parameters) of the tiny ViT keeping heads[i] heads and
  hidden[i] MLP units in block i. Convention: the multiply-accumulates of
  every matrix product; LayerNorm, softmax and GELU cost nothing."""
  n, d, hd = 65, 32, 16
  macs = 64 * (4 * 4 * 3) * d  # patch embedding: 64 patches of 4x4x3
  params = 4 * 4 * 3 * d + d + n * d  # its kernel (no bias), cls, pos
  for h, m in zip(heads, hidden):
    macs += 4 * n * d * h * hd  # query, key, value, output projections
    macs += 2 * n * n * h * hd  # q k^T and weights v, per kept head
    macs += 2 * n * d * m  # fc1, fc2
    params += 2 * 2 * d  # two LayerNorms (scale, bias)
    params += 4 * d * h * hd + 3 * h * hd + d  # kernels, q/k/v/out biases
    params += d * m + m + m * d + d  # fc1, fc2 with biases
  macs += d * 10  # classifier on the class token
  params += 2 * d + d * 10 + 10  # final LayerNorm, classifier
  return macs, params


def test_gates_are_heads_and_mlp_units(table):
  specs = gates.gate_specs(table)
  assert {g: (s.channels, s.writers) for g, s in specs.items()} == {
      'block0/heads': (2, 1), 'block0/mlp': (64, 1),
      'block1/heads': (2, 1), 'block1/mlp': (64, 1)}


def test_flops_and_params_by_hand(table):
  macs, params = by_hand((2, 2), (64, 64))
  assert (macs, params) == (1_704_384, 21_130)
  assert flops.count_flops(table) == macs
  assert flops.count_params(table) == params
  # No BatchNorm: the normalisation term adds nothing.
  assert flops.count_flops(table, include_bn=True) == macs
  kept = {'block0/heads': 1, 'block0/mlp': 20, 'block1/mlp': 7}
  macs, params = by_hand((1, 2), (20, 7))
  assert (macs, params) == (1_015_904, 12_469)
  assert flops.count_flops(table, kept) == macs
  assert flops.count_params(table, kept) == params


def test_registered_sizes_count_their_flops():
  def count(name):
    return flops.count_flops(gates.layer_table(create_model(name), SHAPE))
  # 6 blocks of 192 with 3 heads and MLP ratio 2: about ResNet-56's 126M.
  n, d = 65, 192
  block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * 2 * d
  assert count('vit_cifar') == 64 * 48 * d + 6 * block + d * 10 == (
      125_341_824)
  assert count('vit_small') > count('vit_tiny') > count('vit_cifar')


@pytest.mark.parametrize('renormalize,pool', [(True, 'cls'), (False, 'mean')])
def test_slimmed_equals_masked(renormalize, pool):
  model = tiny(renormalize=renormalize, pool=pool)
  table = gates.layer_table(model, SHAPE)
  specs = gates.gate_specs(table)
  x = jax.random.normal(jax.random.key(1), (3, *SHAPE))
  variables = perturb(model.init(jax.random.key(0), x), seed=1)
  rng = np.random.default_rng(0)
  kept = {g: int(rng.integers(1, s.channels + 1)) for g, s in specs.items()}
  kept['block0/heads'] = 1
  ranks = {g: jnp.asarray(rng.permutation(s.channels))
           for g, s in specs.items()}
  masks = gates.masks_from_kept(kept, ranks)
  slim_model, slim_vars = slimming.slim(model, variables, masks, table,
                                        input_shape=SHAPE)
  masked = model.apply(variables, x, masks=masks)
  slimmed = slim_model.apply(slim_vars, x)
  np.testing.assert_allclose(slimmed, masked, rtol=1e-4, atol=1e-5)
  # A pruned head really changes the output (the test is not vacuous).
  assert not np.allclose(masked, model.apply(variables, x), atol=1e-3)
  slim_table = gates.layer_table(slim_model, SHAPE)
  assert flops.count_flops(slim_table) == flops.count_flops(table, kept)
  n_params = sum(a.size for a in jax.tree_util.tree_leaves(slim_vars))
  assert n_params == flops.count_params(table, kept)


def test_weight_criteria_score_a_heads_slice_of_all_four_projections(
    table):
  model = tiny()
  variables = perturb(model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))
  p = variables['params']['block1/attention']
  # Head h's filter: its [D, head_dim] slices of query, key and value and
  # its [head_dim, D] slice of the output projection, flattened.
  filters = np.stack([np.concatenate(
      [np.asarray(p[f'{n}_kernel'][:, h]).ravel()
       for n in ('query', 'key', 'value')]
      + [np.asarray(p['out_kernel'][h]).ravel()]) for h in range(2)])
  want = {'l1': np.abs(filters).sum(1),
          'l2': np.sqrt((filters ** 2).sum(1)),
          'fpgm': np.full(2, np.linalg.norm(filters[0] - filters[1]))}
  for criterion, expected in want.items():
    scores = importance.weight_scores(criterion, table, variables)
    np.testing.assert_allclose(scores['block1/heads'], expected, rtol=1e-5)
    assert scores['block1/mlp'].shape == (64,)


def _batches(n=16, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((n, *SHAPE)).astype(np.float32)
  labels = rng.integers(0, 10, n).astype(np.int32)
  return Batches([jnp.asarray(images[:8]), jnp.asarray(images[8:])],
                 [jnp.asarray(labels[:8]), jnp.asarray(labels[8:])])


@pytest.mark.parametrize('criterion', ['gbn', 'bn_gamma'])
def test_bn_criteria_are_refused_by_name(table, criterion):
  model = tiny()
  variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(rules.ConfigError,
                     match=f"criterion='{criterion}'.*CifarViT has no "
                     'BatchNorm'):
    prune(model, variables, _batches(), 0.9, criterion=criterion)


def test_bn_warmup_is_refused_by_name(table):
  with pytest.raises(rules.ConfigError, match='vit_cifar has no BatchNorm'):
    warmup.check_model(table, 'vit_cifar')
  config = config_lib.default_config()
  config.model.name = 'vit_cifar'
  with pytest.raises(rules.ConfigError, match='search.warmup=False'):
    validate.validate_against_model(config, table)
  config.search.warmup = False
  validate.validate_against_model(config, table)
  config.search.criterion = 'gbn'
  with pytest.raises(rules.ConfigError, match="criterion='gbn'"):
    validate.validate_against_model(config, table)


def test_search_prunes_heads_and_mlp_units_and_slims():
  model = tiny()
  variables = perturb(model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))
  table = gates.layer_table(model, SHAPE)
  state = prune(model, variables, _batches(), 0.8)
  kept = state.kept
  assert flops.flops_rate(table, kept, include_bn=True) <= 0.8
  assert all(k >= 1 for k in kept.values())
  assert any(kept[g] < 64 for g in ('block0/mlp', 'block1/mlp')) or any(
      kept[g] < 2 for g in ('block0/heads', 'block1/heads'))
  masks = state.masks()
  slim_model, slim_vars = slimming.slim(model, variables, masks, table)
  x = _batches().images[0]
  np.testing.assert_allclose(slim_model.apply(slim_vars, x),
                             model.apply(variables, x, masks=masks),
                             rtol=1e-4, atol=1e-5)


@pytest.fixture(scope='module')
def slimmed(table):
  model = tiny()
  variables = perturb(model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))
  masks = {'block0/heads': jnp.array([0., 1.]),
           'block1/mlp': (jnp.arange(64) % 3 == 0).astype(jnp.float32)}
  return slimming.slim(model, variables, masks, table)


def _logits(model, variables, images):
  return np.asarray(model.apply(
      variables, datasets.normalize(jnp.asarray(images), MEAN, STD)))


def test_export_of_the_slimmed_vit_runs_and_loads(slimmed, tmp_path):
  model, variables = slimmed
  paths = export.export(model, variables, str(tmp_path), 'vit_cifar', SHAPE,
                        MEAN, STD, platforms=('cpu',))
  images = np.random.default_rng(3).integers(0, 256, (4, *SHAPE), np.uint8)
  want = _logits(model, variables, images)
  program = export.load_program(paths['program'])
  np.testing.assert_allclose(program.call(jnp.asarray(images)), want,
                             rtol=1e-5, atol=1e-5)
  # network.json holds the architecture too: any size is rebuilt.
  rebuilt, rebuilt_variables = export.load(str(tmp_path))
  assert (rebuilt.depth, rebuilt.embed_dim, rebuilt.widths) == (
      2, 32, model.widths)
  np.testing.assert_array_equal(_logits(rebuilt, rebuilt_variables, images),
                                want)


@pytest.mark.slow
def test_onnx_of_the_slimmed_vit_matches_in_onnx_runtime(slimmed, tmp_path):
  require_onnx()
  import onnxruntime as ort
  model, variables = slimmed
  export.export(model, variables, str(tmp_path), 'vit_cifar', SHAPE, MEAN,
                STD, platforms=('cpu',))
  written = export_onnx.export_directory(str(tmp_path))
  session = ort.InferenceSession(written['onnx'],
                                 providers=['CPUExecutionProvider'])
  images = np.random.default_rng(4).integers(0, 256, (5, *SHAPE), np.uint8)
  np.testing.assert_allclose(session.run(['logits'], {'images': images})[0],
                             _logits(model, variables, images), rtol=1e-4,
                             atol=1e-4)


def test_fast_candidate_evaluation_equals_loop(table):
  """vmap (stacked head and MLP masks), prefix and segments (shared
  segments) score the candidates as the plain loop does."""
  model = tiny()
  variables = perturb(model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))
  config = search.SearchConfig(target_flops_rate=0.9, chunk_size=2)
  ev = search.Evaluator(model, table, config)
  specs = gates.gate_specs(table)
  kept = {g: s.channels for g, s in specs.items()}
  kept['block1/mlp'] = 40
  ranks = {g: jnp.asarray(np.random.default_rng(1).permutation(s.channels),
                          jnp.int32) for g, s in specs.items()}
  candidates = {'block0/heads': 1, 'block1/heads': 1, 'block0/mlp': 50,
                'block1/mlp': 30}
  teacher_logits = jax.random.normal(jax.random.key(5), (16, 10))
  args = (variables, _batches(), teacher_logits, ranks, kept, candidates)
  plain = ev.evaluate_candidates('loop', *args)
  objectives = [float(plain[g]['objective']) for g in candidates]
  assert len(set(np.round(objectives, 6))) == len(candidates)
  for mode in ('vmap', 'prefix', 'segments'):
    fast = ev.evaluate_candidates(mode, *args)
    for g in candidates:
      for key in ('objective', 'logits'):
        np.testing.assert_allclose(fast[g][key], plain[g][key], rtol=2e-5,
                                   atol=2e-5, err_msg=f'{mode} {g} {key}')


def test_uniform_allocation_with_a_fixed_head_fraction(table):
  """Torch-Pruning's separate head ratio: every block keeps ceil(0.5 x 2)
  heads, the MLP gates share the largest one fraction meeting the target
  (one more unit each would overshoot it)."""
  model = tiny()
  variables = perturb(model.init(jax.random.key(0), jnp.zeros((1, *SHAPE))))
  state = prune(model, variables, _batches(), 0.6, allocation='uniform',
                criterion='l1', uniform_fixed='heads=0.5')
  kept = state.kept
  assert kept['block0/heads'] == kept['block1/heads'] == 1
  assert kept['block0/mlp'] == kept['block1/mlp'] > 1
  rate = lambda k: flops.flops_rate(table, k, include_bn=True)
  assert rate(kept) <= 0.6 < rate(
      {**kept, 'block0/mlp': kept['block0/mlp'] + 1,
       'block1/mlp': kept['block1/mlp'] + 1})
  # Without it, one fraction for every gate: 1 head and the MLP at 1/2.
  plain = prune(model, variables, _batches(), 0.6, allocation='uniform',
                criterion='l1').kept
  assert plain['block0/heads'] == 1 and plain['block0/mlp'] <= 32


@pytest.mark.parametrize('fixed,match', [
    ('heads=1.5', r"uniform_fixed='heads=1.5': must be '' or suffix="),
    ('heads', r"uniform_fixed='heads': must be"),
    ('heads=nan', r"uniform_fixed='heads=nan': must be"),
    ('attn=0.5', r"'attn' names no gate \(gates: block0/heads"),
])
def test_uniform_fixed_is_checked_before_compute(fixed, match):
  model = tiny()
  variables = model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(rules.ConfigError, match=match):
    prune(model, variables, _batches(), 0.6, allocation='uniform',
          uniform_fixed=fixed)


def test_uniform_fixed_is_checked_against_the_config(table):
  config = config_lib.default_config()
  config.model.name = 'vit_cifar'
  config.search.warmup = False
  config.search.uniform_fixed = 'heads=0.5'
  with pytest.raises(rules.ConfigError, match='search.allocation=uniform'):
    validate.validate_config(config)
  config.search.allocation = 'uniform'
  config.memory_bank.num_teachers = 1
  validate.validate_config(config)
  validate.validate_against_model(config, table)
  config.search.uniform_fixed = 'mlp=1.0,heads=1.0'
  with pytest.raises(rules.ConfigError, match='cannot get below a FLOPs '
                     'rate of 1.0000'):
    validate.validate_against_model(config, table)
