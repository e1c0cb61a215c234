"""The search: marking arithmetic, importance, candidate evaluation paths,
compile-once, resume."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

import ekg_jax
from conftest import perturb
from small import search_problem
from ekg_jax.supernet import gates
from ekg_jax.search import importance, teacher
from ekg_jax.training import losses
from ekg_jax import search
from ekg_jax.models import create_model
from ekg_jax.supernet.model import Supernet
from ekg_jax.search import greedy
from ekg_jax.supernet.slimming import slim


# --- host-side arithmetic ----------------------------------------------------

def test_kept_count_is_the_reference_float32_mask():
  # The reference keeps channels with rank < max(C * rate, 1) in float32.
  assert search.kept_count(16, round(1.0 - 0.2, 5)) == 13  # 12.8 -> 13
  assert search.kept_count(10, 0.3) == 3  # float32 10 * 0.3 == 3.0
  assert search.kept_count(16, 0.0) == 1
  assert search.kept_count(16, -0.2) == 1
  assert search.kept_count(16, 1.0) == 16
  for c in (3, 10, 16, 32, 64):
    for rate in np.round(np.linspace(-0.1, 1.0, 223), 5):
      ranks = np.arange(c, dtype=np.float32)
      bound = np.maximum(np.float32(c) * np.float32(rate), np.float32(1))
      assert search.kept_count(c, rate) == int((ranks < bound).sum())


def test_step_size():
  spec = gates.GateSpec('g', 16, 10)
  assert search.step_size(spec, 0.2) == 1 / 16  # max(1/C, s/u)
  assert search.step_size(gates.GateSpec('h', 64, 1), 0.2) == 0.2


def test_per_channel_cost_sums_next_slice_of_sorted_scores():
  scores = np.array([5., 0., 0., 1., 3., 2., 4., 0.])
  # rate 0.625: 3 channels gone (the zeros); delta 0.25 removes the next 2.
  assert search.per_channel_cost(scores, 0.625, 0.25) == 1. + 2.


def test_reference_cost_is_all_scores_until_pruned_then_zero():
  scores = np.array([5., 0., 0., 1., 3., 2., 4., 0.])
  # Untouched gate: the reference's [1,1,1,C] slice [0:k] keeps everything.
  assert search.reference_cost(scores, 1.0, 0.25) == scores.sum()
  # Pruned at least once: the slice [lo:hi] with lo >= 1 on an axis of
  # length 1 is empty.
  assert search.reference_cost(scores, 0.625, 0.25) == 0.0
  assert search.reference_cost(scores, 0.875, 0.125) == 0.0


def test_marking_default_is_reference_and_keeps_one_channel_gates():
  specs = {g: gates.GateSpec(g, 8, 1) for g in 'abcdefg'}
  rates = {'a': 1.0, 'b': 1.0, 'c': 1.0, 'd': 1.0, 'e': 0.75, 'f': 0.1,
           'g': 0.0}
  rng = np.random.default_rng(0)
  scores = {g: rng.random(8) + i for i, g in enumerate(specs)}
  marked = search.mark_candidates(specs, rates, scores,
                                  search.SearchConfig())
  # e and f were pruned: cost 0, always marked; f is at one channel (rate
  # 0.1 > 0) and stays a candidate; g (rate 0) is retired.
  assert 'e' in marked and 'f' in marked and 'g' not in marked
  assert search.kept_count(8, 0.1) == 1
  per_channel = search.mark_candidates(
      specs, rates, scores, search.SearchConfig(marking='per_channel'))
  assert per_channel != marked


def test_otsu_threshold_splits_two_clusters():
  costs = [0.1, 0.12, 0.11, 0.13, 5.0, 5.2, 5.1, 4.9, 100.0, -50.0]
  threshold = search.otsu_threshold(costs, trim=0.2)
  # Trimmed: drop ceil(2) at each end -> [0.11, 0.12, 0.13, 4.9, 5.0, 5.1];
  # split between 0.13 and 4.9.
  assert threshold == pytest.approx((0.13 + 4.9) / 2)
  assert search.otsu_threshold([1.0]) == math.inf


def test_otsu_never_tries_the_last_split():
  # After trimming [0, 0, 0, 10] stays; the best split (t = 3: {0,0,0} |
  # {10}) is t = n' - 1, which the reference loop range(1, n' - 1) never
  # tries; t = 2 ({0, 0} | {0, 10}) wins, threshold (0 + 0) / 2.
  assert search.otsu_threshold([0., 0., 0., 10.], trim=0.0) == 0.0


def test_candidate_rate_fine_search_as_the_reference():
  spec = gates.GateSpec('g', 10, 1)
  # FLOPs rate proportional to the rate: the target 0.45 lies inside a step.
  rate_of = lambda r: r
  cfg = search.SearchConfig(target_flops_rate=0.45, step=0.5)
  # 0.3 < target: walk 0.3, 0.4, 0.5 (> 0.45) -> round(0.5 - 0.1, 5).
  assert search.candidate_rate(spec, 0.8, rate_of, cfg) == pytest.approx(0.4)
  cfg = search.SearchConfig(target_flops_rate=0.45, step=0.2)
  # 0.6 is above the target: no fine search.
  assert search.candidate_rate(spec, 0.8, rate_of, cfg) == pytest.approx(0.6)
  # The reference tries round(w, 2): with C = 64 from 0.3, w = 0.3 + 2/64
  # = 0.33125 is tried as 0.33 (<= 0.331) and w = 0.346875 as 0.35
  # (> 0.331), so the result is round(0.346875 - 1/64, 5) = 0.33125.
  spec = gates.GateSpec('g', 64, 1)
  cfg = search.SearchConfig(target_flops_rate=0.331, step=0.2)
  assert search.candidate_rate(spec, 0.5, rate_of, cfg) == 0.33125


def test_teacher_is_running_mean_of_logits():
  t = teacher.init(jnp.ones((2, 3)))
  logits = [jnp.full((2, 3), v) for v in (2.0, 6.0)]
  for z in logits:
    t = teacher.update(t, z, 'ensemble')
  np.testing.assert_allclose(t.logits, jnp.full((2, 3), 3.0))
  assert int(t.count) == 3
  single = teacher.update(teacher.init(jnp.ones((2, 3))), logits[0], 'single')
  np.testing.assert_allclose(single.logits, jnp.ones((2, 3)))


# --- a tiny problem on ResNet-20 ---------------------------------------------

@pytest.fixture(scope='module')
def problem():
  return search_problem()


def random_network(problem, seed):
  rng = np.random.default_rng(seed)
  specs = problem.specs
  kept = {g: int(rng.integers(2, s.channels + 1)) for g, s in specs.items()}
  ranks = {g: jnp.asarray(rng.permutation(s.channels), jnp.int32)
           for g, s in specs.items()}
  return kept, ranks


@pytest.mark.parametrize('mode', ['vmap', 'prefix', 'segments'])
def test_fast_candidate_evaluation_equals_loop(problem, mode):
  kept, ranks = random_network(problem, 0)
  rng = np.random.default_rng(1)
  names = list(problem.specs)
  chosen = [names[i] for i in rng.choice(len(names), 6, replace=False)]
  candidates = {g: kept[g] - 1 for g in chosen}
  ev = problem.evaluator
  teacher_logits = jax.random.normal(jax.random.key(5), (40, 10))
  args = (problem.variables, problem.batches, teacher_logits, ranks, kept,
          candidates)
  plain = ev.evaluate_candidates('loop', *args)
  fast = ev.evaluate_candidates(mode, *args)
  assert set(fast) == set(chosen)
  for g in chosen:
    for key in ('objective', 'loss', 'accuracy', 'logits'):
      np.testing.assert_allclose(fast[g][key], plain[g][key], rtol=2e-5,
                                 atol=2e-5, err_msg=f'{mode} {g} {key}')
  # Candidates really differ from each other (the test can fail).
  objectives = [float(plain[g]['objective']) for g in chosen]
  assert len(set(np.round(objectives, 6))) > 1


def test_prefix_reuses_the_importance_pass_boundaries(problem):
  """The importance pass's forward gives the current network's segment
  inputs; `prefix` and `segments` fed with them equal the loop."""
  kept, ranks = random_network(problem, 6)
  ev = problem.evaluator
  masks = gates.masks_from_kept(kept, ranks)
  teacher_logits = jax.random.normal(jax.random.key(8), (40, 10))
  _, boundaries = ev.importance(problem.variables, problem.batches,
                                teacher_logits, masks)
  fresh = ev.boundaries(problem.variables, problem.batches.images, masks)
  jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
      boundaries, fresh)
  candidates = {g: max(kept[g] - 2, 1) for g in list(problem.specs)[::3]}
  args = (problem.variables, problem.batches, teacher_logits, ranks, kept,
          candidates)
  plain = ev.evaluate_candidates('loop', *args)
  for mode in ('prefix', 'segments'):
    fast = ev.evaluate_candidates(mode, *args, boundaries=boundaries)
    for g in candidates:
      np.testing.assert_allclose(fast[g]['objective'],
                                 plain[g]['objective'], rtol=2e-5,
                                 err_msg=f'{mode} {g}')


def test_same_channels_detects_ties_that_move_the_kept_set():
  old = {'g': np.array([0, 1, 2, 3])}  # channels 0, 1 kept
  assert greedy._same_channels({'g': 2}, old, {'g': np.array([1, 0, 3, 2])})
  assert not greedy._same_channels({'g': 2},
                                   old, {'g': np.array([0, 2, 1, 3])})


def finite_difference_scores(problem, masks, teacher_logits, gate, eps=1e-2):
  """m_c * dObj/dm_c by central differences, per batch, |.| summed; each
  batch's objective is its sum over the nominal (largest) batch size."""
  ev = problem.evaluator
  nominal = max(problem.batches.sizes)

  @jax.jit
  def obj(m, x, y, t):
    logits = ev._apply(problem.variables, x, {**masks, gate: m})
    return ev._terms(logits, y, t)[1].sum() / nominal

  total = np.zeros(masks[gate].shape[0])
  for x, y, t in zip(problem.batches.images, problem.batches.labels,
                     problem.batches.split(teacher_logits)):
    for c in range(masks[gate].shape[0]):
      up = masks[gate].at[c].multiply(1 + eps)
      down = masks[gate].at[c].multiply(1 - eps)
      total[c] += abs(float(obj(up, x, y, t) - obj(down, x, y, t)) / (2 * eps))
  return total


def test_ekg_importance_matches_finite_differences(problem):
  kept, ranks = random_network(problem, 3)
  masks = gates.masks_from_kept(kept, ranks)
  teacher_logits = jax.random.normal(jax.random.key(7), (40, 10))
  scores, _ = problem.evaluator.importance(problem.variables, problem.batches,
                                        teacher_logits, masks)
  gate = 'stage2/block1'
  expected = finite_difference_scores(problem, masks, teacher_logits, gate)
  np.testing.assert_allclose(scores[gate], expected, rtol=2e-2, atol=1e-4)
  # Masked channels score exactly 0 (and so stay last).
  assert float(jnp.abs(scores[gate] * (1 - masks[gate])).max()) == 0.0


def test_gbn_is_gamma_times_its_gradient_per_batch(problem):
  """|gamma_c * dL_b/dgamma_c| summed over batches, for an inner gate (one
  BN writes it) and a stream gate (every bn2/bn3 and the stem BN of its
  stage), against per-layer gradients of a plainly written loss; masked
  channels 0."""
  kept, ranks = random_network(problem, 4)
  masks = gates.masks_from_kept(kept, ranks)
  ev, variables = problem.evaluator, problem.variables
  scores = ev.gbn(variables, problem.batches, masks)
  nominal = max(problem.batches.sizes)

  def loss(params, x, y):
    logits = ev.model.apply({**variables, 'params': params}, x,
                            masks=masks, train=True,
                            mutable=['batch_stats'])[0]
    return losses.cross_entropy(logits, y).sum() / nominal

  grads = [jax.grad(loss)(variables['params'], x, y)
           for x, y in zip(problem.batches.images, problem.batches.labels)]
  writers = {'stage1/block2': ['BasicBlock1.2/bn1'],
             'stage2': ['BasicBlock2.0/bn3'] + [f'BasicBlock2.{b}/bn2'
                                                for b in range(3)]}
  for gate, layers in writers.items():
    expected = sum(
        np.abs(np.asarray(variables['params'][l]['scale'])
               * np.asarray(g[l]['scale'])) for g in grads for l in layers)
    expected = expected * np.asarray(masks[gate])
    np.testing.assert_allclose(scores[gate], expected, rtol=1e-4,
                               atol=1e-7, err_msg=gate)
    assert float(jnp.abs(scores[gate] * (1 - masks[gate])).max()) == 0.0
    assert float(scores[gate].max()) > 0.0


def test_weight_criteria(problem):
  table, variables = problem.evaluator.table, problem.variables
  l1 = importance.weight_scores('l1', table, variables)
  kernel = variables['params']['BasicBlock0.1/conv1']['kernel']
  np.testing.assert_allclose(l1['stage0/block1'],
                             np.abs(kernel).sum(axis=(0, 1, 2)), rtol=1e-5)
  # A stream gate sums over all its writers (stem + conv2 of each block).
  writers = ['conv'] + [f'BasicBlock0.{b}/conv2' for b in range(3)]
  expected = sum(np.sqrt((variables['params'][w]['kernel'] ** 2).sum(
      axis=(0, 1, 2))) for w in writers)
  np.testing.assert_allclose(importance.weight_scores(
      'l2', table, variables)['stage0'], expected, rtol=1e-5)
  # FPGM, by hand: each filter's summed Euclidean distance to the others.
  filters = np.moveaxis(np.asarray(kernel), -1, 0).reshape(16, -1)
  fpgm = [sum(np.linalg.norm(filters[i] - filters[j]) for j in range(16))
          for i in range(16)]
  np.testing.assert_allclose(importance.weight_scores(
      'fpgm', table, variables)['stage0/block1'], fpgm, rtol=1e-4)
  # |BN scale|, summed over every BN writing the gate (stem + bn2 of each
  # block for the stage-0 stream).
  bns = ['bn'] + [f'BasicBlock0.{b}/bn2' for b in range(3)]
  np.testing.assert_allclose(importance.weight_scores(
      'bn_gamma', table, variables)['stage0'],
      sum(np.abs(variables['params'][b]['scale']) for b in bns), rtol=1e-6)
  random = importance.weight_scores('random', table, variables, seed=0)
  assert random['stage1'].shape == (32,)
  assert not np.array_equal(random['stage1'], importance.weight_scores(
      'random', table, variables, seed=1)['stage1'])
  np.testing.assert_array_equal(
      importance.weight_scores('random', table, variables, seed=0)['stage1'],
      importance.weight_scores('random', table, variables, seed=0)['stage1'])


@pytest.mark.parametrize('mode', ['prefix', 'segments'])
def test_search_compiles_once_and_resumes_identically(problem, tmp_path,
                                                      mode):
  names = list(problem.specs)
  state = search.init_state(problem)
  # Uninterrupted: three steps.
  straight = state
  for _ in range(3):
    straight = search.search_step(problem, straight, mode)
  ev = problem.evaluator
  assert ev.importance._cache_size() == 1
  if mode == 'prefix':
    assert ev.evaluate_prefix._cache_size() == 1
  else:  # every segment's program ran, and compiled once
    assert [p._cache_size() for p in ev.segment_programs] == \
        [1] * len(ev.segment_programs)
    assert ev.summarise_batches._cache_size() == 1
  # Interrupted after one step: save, load, continue.
  path = str(tmp_path / 'state.npz')
  resumed = search.search_step(problem, state, mode)
  search.save_state(path, resumed, names)
  resumed = search.load_state(path, problem.specs)
  for _ in range(2):
    resumed = search.search_step(problem, resumed, mode)
  assert [e['kept'] for e in resumed.history] == \
      [e['kept'] for e in straight.history]
  assert [e['gate'] for e in resumed.history] == \
      [e['gate'] for e in straight.history]
  np.testing.assert_allclose(resumed.teacher.logits, straight.teacher.logits,
                             rtol=1e-6)
  assert straight.history[-1]['flops_rate'] < 1.0


def test_search_trajectory_is_the_same_on_every_evaluation_path(problem):
  """Whole steps (importance, marking, candidates, teacher), not single
  evaluations: loop, vmap, prefix and segments choose the same gates and
  widths."""
  histories = {}
  for mode in ('loop', 'vmap', 'prefix', 'segments'):
    state = search.init_state(problem)
    for _ in range(3):
      state = search.search_step(problem, state, mode)
    histories[mode] = state.history
  for mode in ('vmap', 'prefix', 'segments'):
    assert [(e['gate'], e['kept']) for e in histories[mode]] == \
        [(e['gate'], e['kept']) for e in histories['loop']], mode
    np.testing.assert_allclose([e['objective'] for e in histories[mode]],
                               [e['objective'] for e in histories['loop']],
                               rtol=2e-5)


def test_vmap_search_compiles_once(problem):
  state = search.init_state(problem)
  for _ in range(2):
    state = search.search_step(problem, state, 'vmap')
  assert problem.evaluator.evaluate_vmap._cache_size() == 1


def test_run_search_reaches_target_and_uniform_allocation(problem):
  state = search.run_search(problem, search.init_state(problem),
                            progress=False)
  last = state.history[-1]['flops_rate']
  assert last <= 0.9
  for e in state.history[1:]:  # where each step's seconds went
    assert 0 < e['importance_seconds'] and 0 < e['candidates_seconds']
    assert e['importance_seconds'] + e['candidates_seconds'] <= e['seconds']
  # Fine search: one more channel on the last gate would overshoot.
  uniform = search.SearchProblem(
      problem.evaluator, problem.variables, problem.batches,
      search.SearchConfig(target_flops_rate=0.9, allocation='uniform',
                          criterion='l1'))
  state = search.run_search(uniform, search.init_state(uniform),
                            progress=False)
  assert state.step == 1 and state.history[-1]['flops_rate'] <= 0.9
  rates = set(state.rates.values())
  assert len(rates) == 1


@pytest.mark.parametrize('options,match', [
    ({'target_flops_rate': 1.5}, r'target_flops_rate=1.5: must be in'),
    ({'target_flops_rate': 0.5, 'marking': 'otsu'}, r"marking='otsu'"),
    ({'target_flops_rate': 0.5, 'step': float('nan')}, r'step=nan'),
])
def test_prune_refuses_bad_options_before_compute(options, match):
  from ekg_jax.config import ConfigError
  model = create_model('resnet20')
  batches = search.Batches((jnp.zeros((4, 32, 32, 3)),),
                           (jnp.zeros(4, jnp.int32),))
  with pytest.raises(ConfigError, match=match):
    search.prune(model, None, batches, **options)


def test_a_criterion_registered_outside_the_package_runs_through_prune():
  """As from a notebook: register, then name it in prune()."""
  @importance.register('last_channels_first')
  def last_channels_first(inputs):
    # Higher index = more important, so pruning removes the first channels.
    return {g: jnp.arange(s.channels, dtype=jnp.float32)
            for g, s in gates.gate_specs(inputs.table).items()}

  try:
    model = create_model('resnet20')
    x = jax.random.normal(jax.random.key(0), (24, 32, 32, 3))
    variables = perturb(model.init(jax.random.key(1), x[:1]), seed=2)
    batches = search.Batches((x,), (jnp.asarray(np.arange(24) % 10),))
    state = search.prune(model, variables, batches, 0.9,
                         criterion='last_channels_first', evaluation='loop')
    assert state.history[-1]['flops_rate'] <= 0.9
    pruned = [g for g, k in state.kept.items()
              if k < gates.gate_specs(gates.layer_table(
                  model, (32, 32, 3)))[g].channels]
    assert pruned
    masks = state.masks()
    for g in pruned:  # the kept channels are the last ones
      m = np.asarray(masks[g])
      assert m[-1] == 1 and m[0] == 0 and np.all(np.diff(m) >= 0), g
  finally:
    del importance.CRITERIA['last_channels_first']


class _TwoConvNet(Supernet):
  """A model written outside the package: no segments (it runs whole),
  as a user would first write one."""

  @nn.compact
  def __call__(self, x, masks=None, train=False):
    x = self.conv(self.width('a', 8), 3, out_gate='a', name='c1')(x, masks)
    x = nn.relu(self.gate(self.bn('a', train, name='b1')(x), masks,
                          'a'))
    x = self.conv(self.width('b', 8), 3, in_gate='a', out_gate='b',
                  name='c2')(x, masks)
    x = nn.relu(self.gate(self.bn('b', train, name='b2')(x), masks,
                          'b'))
    return self.dense('b')(x.mean(axis=(1, 2)), masks)


def test_a_model_without_segments_runs_through_prune_and_slim():
  model = _TwoConvNet(num_classes=5)
  x = jax.random.normal(jax.random.key(0), (20, 8, 8, 3))
  variables = perturb(model.init(jax.random.key(1), x[:1]), seed=3)
  batches = search.Batches((x[:16], x[16:]),
                           (jnp.arange(16) % 5, jnp.arange(4) % 5))
  table = gates.layer_table(model, (8, 8, 3))
  assert gates.num_segments(table) == 1
  state = search.prune(model, variables, batches, 0.6)  # 'auto' evaluation
  assert state.history[-1]['flops_rate'] <= 0.6
  slim_model, slim_vars = slim(model, variables, state.masks(), table)
  assert dict(slim_model.widths) == state.kept
  masked = model.apply(variables, x, masks=state.masks())
  np.testing.assert_allclose(slim_model.apply(slim_vars, x), masked,
                             rtol=1e-5, atol=1e-5)


def test_round_to_keeps_multiples_and_one_means_the_reference():
  for c in (16, 32, 64):
    for rate in np.round(np.linspace(-0.1, 1.0, 111), 5):
      assert search.kept_count(c, rate, 1) == search.kept_count(c, rate)
      k = search.kept_count(c, rate, 8)
      assert k == c or (k % 8 == 0 and 8 <= k <= max(8, search.kept_count(
          c, rate)))
  assert search.kept_count(12, 0.5, 16) == 12  # narrower than N: whole
  spec = gates.GateSpec('g', 32, 10)
  assert search.step_size(spec, 0.2, 8) == 8 / 32  # a step removes >= N


@pytest.mark.parametrize('evaluation', ['loop'])
def test_search_with_round_to_meets_the_target_with_multiples_of_n(
    problem, evaluation):
  config = dataclasses.replace(problem.config, round_to=8, step=0.3,
                               target_flops_rate=0.7)
  rounded = search.SearchProblem(
      search.Evaluator(problem.evaluator.model, problem.evaluator.table,
                       config), problem.variables, problem.batches, config)
  state = search.init_state(rounded)
  while not search.done(rounded, state):
    state = search.search_step(rounded, state, evaluation)
  assert state.history[-1]['flops_rate'] <= 0.7
  for entry in state.history:
    for g, k in entry['kept'].items():
      assert k % 8 == 0, (entry['step'], g, k)  # ResNet-20: widths 16..64
  assert any(k < rounded.specs[g].channels for g, k in state.kept.items())


def test_a_criterion_and_a_model_from_outside_run_through_prune_and_slim():
  """Both written here, as a researcher would in a notebook."""
  @importance.register('first_channels_first')
  def first_channels_first(inputs):
    return {g: -jnp.arange(s.channels, dtype=jnp.float32)
            for g, s in gates.gate_specs(inputs.table).items()}

  try:
    model = _TwoConvNet(num_classes=5)
    x = jax.random.normal(jax.random.key(4), (16, 8, 8, 3))
    variables = perturb(model.init(jax.random.key(5), x[:1]), seed=6)
    batches = search.Batches((x,), (jnp.arange(16) % 5,))
    state = ekg_jax.prune(model, variables, batches, 0.7,
                          criterion='first_channels_first')
    assert state.history[-1]['flops_rate'] <= 0.7
    assert any(k < 8 for k in state.kept.values())
    for g, m in state.masks().items():  # the first channels are kept
      m = np.asarray(m)
      assert np.all(np.diff(m) <= 0) and m[0] == 1, g
    table = ekg_jax.layer_table(model, (8, 8, 3))
    small, small_vars = ekg_jax.slim(model, variables, state.masks(), table)
    np.testing.assert_allclose(
        small.apply(small_vars, x),
        model.apply(variables, x, masks=state.masks()), rtol=1e-5, atol=1e-5)
  finally:
    del importance.CRITERIA['first_channels_first']
