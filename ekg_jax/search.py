"""EKG sub-network search (ekg_algorithm.md sections 3-5).

Greedy: each step recomputes channel importance, marks the cheapest gates
(trimmed Otsu), shrinks each marked gate by its step size in a candidate,
evaluates every candidate against the ensemble teacher in one compiled call,
and accepts the candidate with the lowest objective, until the FLOPs rate
reaches the target.

State is data: `SearchState` holds rates, ranks, the teacher and the history;
`search_step(problem, state) -> state` is pure given the problem's compiled
functions, and `run_search` loops, logs and checkpoints.

Candidate evaluation has three interchangeable implementations that return
the same numbers (tested):
- `vmap`: candidates' kept counts stacked on a leading axis, `jax.vmap` over
  chunks of `chunk_size`, chunks mapped with `lax.map`; chunks without an
  active candidate are skipped. The stack has a fixed size (one slot per
  gate), so the whole search compiles once. Best where wide vmaps are cheap
  (GPU/TPU).
- `prefix`: a candidate differs from the current network in one gate only, so
  the segments before that gate's first layer are shared: the current
  network's activation at every segment boundary (taken from the importance
  pass's forward when the step's new ranks keep the same channels, else one
  extra pass), and each candidate runs only the rest of the network
  (`lax.cond` skips unmarked gates). Best on CPU, where compute is the
  bottleneck.
- `loop`: a Python loop over one jitted single-candidate evaluation (the
  plain version the others are tested against).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax import checkpoint
from ekg_jax import data as data_lib
from ekg_jax import flops as flops_lib
from ekg_jax import gates as gates_lib
from ekg_jax import importance as importance_lib
from ekg_jax import losses
from ekg_jax import teacher as teacher_lib

EVALUATIONS = ('auto', 'vmap', 'prefix', 'loop')


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  target_flops_rate: float = 0.45
  step: float = 0.2
  teacher: str = 'ensemble'
  criterion: str = 'ekg'
  allocation: str = 'greedy'
  chunk_size: int = 4
  otsu_trim: float = 0.2
  marking: str = 'reference'
  flops_include_bn: bool = True
  evaluation: str = 'auto'
  seed: int = 0

  def __post_init__(self):
    """The config file's rules hold for library calls too: `prune(...,
    target_flops_rate=1.5)` fails here, before any compute."""
    from ekg_jax import validate  # validate reads this module's choices
    for field in dataclasses.fields(self):
      rule = validate.RULES.get(f'search.{field.name}')
      value = getattr(self, field.name)
      why = rule(value) if rule else None
      if why:
        raise validate.ConfigError(f'{field.name}={value!r}: {why}')

  @classmethod
  def from_config(cls, search, seed=0) -> 'SearchConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in search.items() if k in names}, seed=seed)


@dataclasses.dataclass
class SearchState:
  """Everything a resumed search needs. `rates` and `ranks` describe the
  current network; `ranks_history[i]` are the ranks of history entry i (its
  masks are `rank < kept`), kept for the memory bank."""
  rates: dict[str, float]
  ranks: dict[str, np.ndarray]
  teacher: teacher_lib.Teacher
  step: int
  history: list[dict]
  ranks_history: list[dict[str, np.ndarray]]

  @property
  def kept(self) -> dict[str, int]:
    """Kept channels per gate of the current network."""
    return dict(self.history[-1]['kept'])

  def masks(self, index: int = -1) -> dict[str, jax.Array]:
    """0/1 masks of history entry `index` (default: the current network)."""
    return gates_lib.masks_from_kept(self.history[index]['kept'],
                                     self.ranks_history[index])


# ---------------------------------------------------------------------------
# Rates, kept counts and candidate marking (host-side, exact arithmetic).


def kept_count(channels: int, rate: float) -> int:
  """Channels kept at `rate`: those whose rank r satisfies
  r < max(C * rate, 1), in float32 as the reference's masks compute it."""
  bound = max(np.float32(channels) * np.float32(rate), np.float32(1.0))
  return min(int(np.ceil(bound)), channels)


def kept_from_rates(specs: Mapping[str, gates_lib.GateSpec],
                    rates: Mapping[str, float]) -> dict[str, int]:
  return {g: kept_count(specs[g].channels, r) for g, r in rates.items()}


def step_size(spec: gates_lib.GateSpec, step: float) -> float:
  """delta = max(1/C, s/u), a fraction of the gate's width."""
  return max(1.0 / spec.channels, step / spec.writers)


def _next_slice(scores, rate: float, delta: float):
  """Scores sorted ascending, and the slice [round((1-r)C),
  round((1-r+delta)C)) of the channels the next step would remove."""
  c = len(scores)
  s = np.sort(np.asarray(scores, np.float64))
  return s, slice(round((1.0 - rate) * c), round((1.0 - rate + delta) * c))


def per_channel_cost(scores, rate: float, delta: float) -> float:
  """The sum of the scores of the channels the next step would remove (the
  reference's evident intent)."""
  s, next_slice = _next_slice(scores, rate, delta)
  return float(s[next_slice].sum())


def reference_cost(scores, rate: float, delta: float) -> float:
  """What the reference computes: it slices its [1, 1, 1, C] score array,
  whose FIRST axis has length 1, so an untouched gate (slice start 0) costs
  the sum of all its scores and a gate pruned at least once costs 0 (it is
  marked at every later step). This produced the authors' results."""
  s, next_slice = _next_slice(scores, rate, delta)
  return float(s[None, :][next_slice].sum())


# search.marking -> removal cost (ekg_algorithm.md section 4).
MARKINGS: dict[str, Callable[[Any, float, float], float]] = {
    'reference': reference_cost,
    'per_channel': per_channel_cost,
}


def otsu_threshold(costs: Sequence[float], trim: float = 0.2) -> float:
  """Trimmed Otsu, as the reference loop: drop ceil(trim * n) values at each
  end of the sorted finite costs (n' remain), maximise
  t * (n' - t) * (mean_low - mean_high)^2 over t = 1 .. n' - 2, and return
  the midpoint of the two values at the first maximiser (inf if there are
  too few values to split)."""
  v = np.sort(np.asarray([c for c in costs if np.isfinite(c)], np.float64))
  cut = math.ceil(trim * len(v))
  if len(v) - 2 * cut >= 3:
    v = v[cut:len(v) - cut]
  if len(v) < 3:
    return math.inf
  n = len(v)
  t = np.arange(1, n - 1)
  csum = np.cumsum(v)
  low = csum[t - 1] / t
  high = (csum[-1] - csum[t - 1]) / (n - t)
  split = int(t[np.argmax(t * (n - t) * (low - high) ** 2)])
  return float((v[split - 1] + v[split]) / 2.0)


def mark_candidates(specs, rates, scores, config: 'SearchConfig') -> list[str]:
  """Gates worth evaluating this step: rate > 0 (a gate already at one
  channel included: its step retires it) and removal cost <= the
  trimmed-Otsu threshold."""
  cost_of = MARKINGS[config.marking]
  costs = {g: cost_of(np.asarray(scores[g]), rates[g],
                      step_size(spec, config.step))
           for g, spec in specs.items() if rates[g] > 0}
  threshold = otsu_threshold(list(costs.values()), config.otsu_trim)
  return [g for g, c in costs.items() if c <= threshold]


def candidate_rate(spec, rate: float, flops_rate_of: Callable[[float], float],
                   config: 'SearchConfig') -> float:
  """The rate after one step, as the reference: rate - delta; when that
  falls below the FLOPs target, the fine search walks w = r, r + 1/C, ...
  (below r + s), trying round(w, 2), and at the first w that overshoots the
  target takes round(w - 1/C, 5) (the rounding is the reference's)."""
  new = round(rate - step_size(spec, config.step), 5)
  target = config.target_flops_rate
  if flops_rate_of(new) >= target:
    return new
  fine = 1.0 / spec.channels
  for w in np.arange(new, new + config.step, fine):
    tried = round(float(w), 2)
    if flops_rate_of(tried) > target:
      return round(float(w) - fine, 5)
  return tried


# ---------------------------------------------------------------------------
# The compiled functions.


class Batches(NamedTuple):
  """The fixed validation batches (normalised images, labels), in order.
  A pytree, so jitted functions take it as an argument."""
  images: tuple[jax.Array, ...]
  labels: tuple[jax.Array, ...]

  @classmethod
  def from_split(cls, split, batch_size: int, mean, std) -> 'Batches':
    """Consecutive batches of a `data.Split`, normalised, on device."""
    slices = data_lib.batches(len(split), batch_size)
    return cls(tuple(data_lib.normalize(split.images[s], mean, std)
                     for s in slices),
               tuple(jnp.asarray(split.labels[s]) for s in slices))

  @property
  def sizes(self) -> list[int]:
    return [len(y) for y in self.labels]

  def split(self, per_sample: jax.Array) -> list[jax.Array]:
    """Cuts an array over all validation samples into per-batch pieces."""
    bounds = np.cumsum([0, *self.sizes])
    return [per_sample[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class Evaluator:
  """Jitted evaluation of sub-networks on the validation batches.

  Built once per search; every function takes the variables and batches as
  arguments (not constants), so compiles stay small and happen once.
  """

  def __init__(self, model, table, config: SearchConfig,
               objective: Optional[Callable] = None):
    """`objective(logits, labels, teacher_logits) -> per-sample values`
    replaces the EKG objective (CE + soft CE against the teacher)."""
    self.model = model
    self.objective = objective
    self.table = table
    self.specs = gates_lib.gate_specs(table)
    self.gate_names = list(self.specs)
    self.first_segment = gates_lib.first_segments(table)
    self.config = config
    self.use_teacher = config.teacher != 'none'
    self.starts = sorted(set(self.first_segment.values()) - {0})
    self.importance = jax.jit(self._importance)
    self.boundaries = jax.jit(self._boundaries)
    self.gbn = jax.jit(self._gbn)
    self.logits = jax.jit(self._logits)
    self.summarise = jax.jit(self._summarise)
    self.evaluate_one = jax.jit(self._evaluate_one)
    self.evaluate_vmap = jax.jit(self._evaluate_vmap)
    self.evaluate_prefix = jax.jit(self._evaluate_prefix)

  # -- one network ---------------------------------------------------------

  def _apply(self, variables, x, masks, start=0, stop=None):
    # Batch statistics; the updated running statistics are dropped.
    return self.model.apply(variables, x, masks=masks, train=True,
                            start=start, stop=stop,
                            mutable=['batch_stats'])[0]

  def _forward_with_boundaries(self, variables, x, masks):
    """(logits, {segment: activation entering it}) for every segment where
    some gate's layers start: what the `prefix` path shares."""
    acts, at = {}, 0
    for start in self.starts:
      x = self._apply(variables, x, masks, start=at, stop=start)
      acts[start], at = x, start
    return self._apply(variables, x, masks, start=at), acts

  def _boundaries(self, variables, images, masks):
    return [self._forward_with_boundaries(variables, x, masks)[1]
            for x in images]

  def _logits(self, variables, images, masks):
    return jnp.concatenate([self._apply(variables, x, masks) for x in images])

  def _terms(self, logits, labels, teacher_logits):
    """Per-sample CE and objective (CE + soft CE against the teacher)."""
    ce = losses.cross_entropy(logits, labels)
    if self.objective is not None:
      return ce, self.objective(logits, labels, teacher_logits)
    if not self.use_teacher:
      return ce, ce
    return ce, ce + losses.soft_cross_entropy(logits, teacher_logits)

  def _summarise(self, logits, labels, teacher_logits):
    ce, objective = self._terms(logits, labels, teacher_logits)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return dict(objective=objective.mean(), loss=ce.mean(),
                accuracy=accuracy, logits=logits)

  def _evaluate_one(self, variables, batches, teacher_logits, ranks, kept):
    masks = gates_lib.masks_from_kept(kept, ranks)
    logits = self._logits(variables, batches.images, masks)
    return self._summarise(logits, jnp.concatenate(batches.labels),
                           teacher_logits)

  def _importance(self, variables, batches, teacher_logits, masks):
    # Section 3: each batch's objective is its SUM over the nominal batch
    # size, so a partial last batch (64 of 320) weighs 64/256 of a full one.
    nominal = max(batches.sizes)

    # With `prefix` evaluation the forward pass's segment inputs come out
    # too, and are reused when this step's ranks keep the same channels
    # (other paths do not need them: they would only hold memory).
    keep = resolve_evaluation(self.config.evaluation) == 'prefix'

    def objective(masks, batch):
      x, y, t = batch
      logits, acts = self._forward_with_boundaries(variables, x, masks)
      _, obj = self._terms(logits, y, t)
      return obj.sum() / nominal, acts if keep else None
    scores, acts = importance_lib.gate_gradient_scores(
        objective, masks, list(zip(batches.images, batches.labels,
                                   batches.split(teacher_logits))),
        has_aux=True)
    return scores, acts if keep else None

  def _gbn(self, variables, batches, masks):
    nominal = max(batches.sizes)

    def loss(params, batch):
      x, y = batch
      logits = self._apply({**variables, 'params': params}, x, masks)
      return losses.cross_entropy(logits, y).sum() / nominal
    return importance_lib.bn_taylor_scores(
        loss, variables['params'], self.table, masks,
        list(zip(batches.images, batches.labels)))

  # -- many candidates -------------------------------------------------------

  def _evaluate_vmap(self, variables, batches, teacher_logits, ranks,
                     kept_stack, active):
    """kept_stack: gate -> [P] kept counts, P a multiple of chunk_size;
    active: [P] bools. Returns the `_evaluate_one` fields with a leading P."""
    chunk = self.config.chunk_size
    p = active.shape[0]
    one = functools.partial(self._evaluate_one, variables, batches,
                            teacher_logits, ranks)
    shapes = jax.eval_shape(one, {g: k[0] for g, k in kept_stack.items()})

    def run_chunk(args):
      kept, act = args
      return jax.lax.cond(
          act.any(), jax.vmap(one), lambda _: jax.tree_util.tree_map(
              lambda s: jnp.zeros((chunk, *s.shape), s.dtype), shapes), kept)

    chunks = jax.tree_util.tree_map(
        lambda a: a.reshape(p // chunk, chunk, *a.shape[1:]),
        (kept_stack, active))
    out = jax.lax.map(run_chunk, chunks)
    return jax.tree_util.tree_map(lambda a: a.reshape(p, *a.shape[2:]), out)

  def _evaluate_prefix(self, variables, batches, boundaries, teacher_logits,
                       ranks, kept, new_kept, active):
    """boundaries: per batch, the current network's activation entering
    each of `self.starts` (`_boundaries`); kept: the current network's
    counts; new_kept/active: gate -> the candidate's count for that gate /
    whether it is a candidate. Returns the `_evaluate_one` fields with a
    leading axis in `gate_names` order."""
    masks = gates_lib.masks_from_kept(kept, ranks)
    boundaries = [{0: x, **acts} for x, acts in zip(batches.images,
                                                  boundaries)]
    labels = jnp.concatenate(batches.labels)
    shapes = jax.eval_shape(
        lambda: self._summarise(
            jnp.zeros((labels.shape[0], self.model.num_classes)), labels,
            teacher_logits))
    outs = []
    for g in self.gate_names:
      def run(g=g):
        cand = dict(masks)
        cand[g] = (ranks[g] < new_kept[g]).astype(masks[g].dtype)
        start = self.first_segment[g]
        logits = jnp.concatenate([self._apply(variables, acts[start], cand,
                                              start=start)
                                  for acts in boundaries])
        return self._summarise(logits, labels, teacher_logits)
      zeros = lambda: jax.tree_util.tree_map(
          lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      outs.append(jax.lax.cond(active[g], run, zeros))
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)

  def evaluate_candidates(self, mode: str, variables, batches, teacher_logits,
                          ranks, kept: Mapping[str, int],
                          candidates: Mapping[str, int],
                          boundaries=None) -> dict[str, dict]:
    """Evaluates each candidate (the current network with one gate's kept
    count changed). Returns gate -> {objective, loss, accuracy, logits}.
    `boundaries`: the current network's segment inputs (`prefix` only),
    computed here when not given."""
    names = list(candidates)
    if mode == 'loop':
      out = {}
      for g in names:
        out[g] = jax.device_get(self.evaluate_one(
            variables, batches, teacher_logits, ranks,
            _as_int32({**kept, g: candidates[g]})))
      return out
    if mode == 'prefix':
      new_kept = {g: jnp.int32(candidates.get(g, kept[g]))
                  for g in self.gate_names}
      active = {g: jnp.bool_(g in candidates) for g in self.gate_names}
      if boundaries is None:
        boundaries = self.boundaries(
            variables, batches.images,
            gates_lib.masks_from_kept(_as_int32(kept), ranks))
      res = jax.device_get(self.evaluate_prefix(
          variables, batches, boundaries, teacher_logits, ranks,
          _as_int32(kept), new_kept, active))
      index = {g: i for i, g in enumerate(self.gate_names)}
      return {g: jax.tree_util.tree_map(lambda a: a[index[g]], res)
              for g in names}
    if mode == 'vmap':
      chunk = self.config.chunk_size
      slots = -(-len(self.gate_names) // chunk) * chunk  # fixed: compile once
      stack = {h: np.full(slots, kept[h], np.int32) for h in self.gate_names}
      for i, g in enumerate(names):
        stack[g][i] = candidates[g]
      active = np.arange(slots) < len(names)
      res = jax.device_get(self.evaluate_vmap(
          variables, batches, teacher_logits, ranks, stack, active))
      return {g: jax.tree_util.tree_map(lambda a: a[i], res)
              for i, g in enumerate(names)}
    raise ValueError(f'search.evaluation={mode!r}; allowed: {EVALUATIONS}')


def _as_int32(kept):
  return {g: jnp.int32(k) for g, k in kept.items()}


def resolve_evaluation(mode: str) -> str:
  """'auto': shared prefixes on CPU, wide vmaps on accelerators."""
  if mode != 'auto':
    return mode
  return 'prefix' if jax.default_backend() == 'cpu' else 'vmap'


# ---------------------------------------------------------------------------
# The search proper.


@dataclasses.dataclass
class SearchProblem:
  """What stays fixed during a search."""
  evaluator: Evaluator
  variables: Any
  batches: Batches
  config: SearchConfig

  @property
  def specs(self):
    return self.evaluator.specs

  def flops_rate(self, kept) -> float:
    return flops_lib.flops_rate(self.evaluator.table, kept,
                                self.config.flops_include_bn)

  def scores(self, state: SearchState, masks) -> dict[str, jax.Array]:
    return self.scores_and_boundaries(state, masks)[0]

  def scores_and_boundaries(self, state: SearchState, masks):
    """(channel scores, the segment inputs of the network `masks` describe
    when the criterion's pass computed them, else None)."""
    result = importance_lib.CRITERIA[self.config.criterion](
        importance_lib.ScoreInputs(
            self.evaluator.table, self.variables, masks, self.config.seed,
            self.evaluator, self.batches, state.teacher.logits))
    return result if isinstance(result, tuple) else (result, None)

  def evaluate(self, kept, ranks, teacher_logits):
    return self.evaluator.evaluate_one(self.variables, self.batches,
                                       teacher_logits, _np_to_jnp(ranks),
                                       _as_int32(kept))


def _same_channels(kept, old_ranks, new_ranks) -> bool:
  """Whether the kept counts select the same channels under both ranks
  (they do unless a kept channel scored exactly 0 and tied with masked
  ones)."""
  return all(np.array_equal(np.asarray(old_ranks[g]) < k,
                            np.asarray(new_ranks[g]) < k)
             for g, k in kept.items())


def _np_to_jnp(tree):
  return {g: jnp.asarray(v) for g, v in tree.items()}


def _entry(step, gate, kept, result, flops_rate, flops, candidates, seconds):
  return {'step': step, 'gate': gate, 'kept': dict(kept),
          'val_loss': float(result['loss']),
          'val_accuracy': float(result['accuracy']),
          'objective': float(result['objective']),
          'flops_rate': flops_rate, 'flops': flops,
          'candidates': candidates, 'seconds': round(seconds, 3)}


def init_state(problem: SearchProblem) -> SearchState:
  """The starting network: full rates, T_0 = its validation logits."""
  specs = problem.specs
  rates = {g: 1.0 for g in specs}
  ranks = {g: np.arange(s.channels, dtype=np.int32) for g, s in specs.items()}
  kept = kept_from_rates(specs, rates)
  start = time.time()
  logits = problem.evaluator.logits(problem.variables,
                                    problem.batches.images, None)
  teacher = teacher_lib.init(logits)
  result = problem.evaluator.summarise(
      logits, jnp.concatenate(problem.batches.labels), teacher.logits)
  table = problem.evaluator.table
  entry = _entry(0, None, kept, result, 1.0,
                 flops_lib.count_flops(table, kept), 0, time.time() - start)
  return SearchState(rates, ranks, teacher, 0, [entry], [ranks])


def done(problem: SearchProblem, state: SearchState) -> bool:
  kept = kept_from_rates(problem.specs, state.rates)
  return problem.flops_rate(kept) <= problem.config.target_flops_rate


def search_step(problem: SearchProblem, state: SearchState,
                evaluation: str) -> SearchState:
  """One greedy step: importance, marking, candidate evaluation, accept."""
  start = time.time()
  specs, config = problem.specs, problem.config
  kept = kept_from_rates(specs, state.rates)
  masks = gates_lib.masks_from_kept(kept, _np_to_jnp(state.ranks))
  scores, boundaries = problem.scores_and_boundaries(state, masks)
  scores = jax.device_get(scores)
  ranks = gates_lib.ranks_from_scores(scores)
  if boundaries is not None and not _same_channels(kept, state.ranks, ranks):
    boundaries = None  # the new ranks keep other channels: recompute
  marked = mark_candidates(specs, state.rates, scores, config)
  if not marked:
    raise RuntimeError(
        f'search step {state.step + 1}: no gate can shrink further, but the '
        f'FLOPs rate is still above {config.target_flops_rate}')
  new_rates = {}
  for g in marked:
    rate_of = lambda r, g=g: problem.flops_rate(
        {**kept, g: kept_count(specs[g].channels, r)})
    new_rates[g] = candidate_rate(specs[g], state.rates[g], rate_of, config)
  candidates = {g: kept_count(specs[g].channels, r)
                for g, r in new_rates.items()}
  results = problem.evaluator.evaluate_candidates(
      evaluation, problem.variables, problem.batches, state.teacher.logits,
      _np_to_jnp(ranks), kept, candidates, boundaries)
  objectives = {g: float(r['objective']) for g, r in results.items()}
  best = min(marked, key=lambda g: (objectives[g], marked.index(g)))
  rates = {**state.rates, best: new_rates[best]}
  kept = kept_from_rates(specs, rates)
  teacher = teacher_lib.update(state.teacher, results[best]['logits'],
                               config.teacher)
  step = state.step + 1
  entry = _entry(step, best, kept, results[best], problem.flops_rate(kept),
                 flops_lib.count_flops(problem.evaluator.table, kept),
                 len(marked), time.time() - start)
  return SearchState(rates, ranks, teacher, step, [*state.history, entry],
                     [*state.ranks_history, ranks])


def uniform_allocation(problem: SearchProblem,
                       state: SearchState) -> SearchState:
  """Baseline: the same fraction of every gate, the largest that meets the
  target; channels ranked once by the criterion on the full network."""
  start = time.time()
  specs = problem.specs
  kept_of = lambda r: {g: kept_count(s.channels, r) for g, s in specs.items()}
  lo, hi = 0.0, 1.0  # flops_rate(kept_of(lo)) <= target < flops_rate(hi)
  if problem.flops_rate(kept_of(lo)) > problem.config.target_flops_rate:
    raise RuntimeError('the FLOPs target is below the one-channel network')
  for _ in range(40):
    mid = (lo + hi) / 2
    if problem.flops_rate(kept_of(mid)) <= problem.config.target_flops_rate:
      lo = mid
    else:
      hi = mid
  kept = kept_of(lo)
  masks = gates_lib.masks_from_kept(kept_from_rates(specs, state.rates),
                                    _np_to_jnp(state.ranks))
  ranks = gates_lib.ranks_from_scores(
      jax.device_get(problem.scores(state, masks)))
  result = problem.evaluate(kept, ranks, state.teacher.logits)
  entry = _entry(1, None, kept, result, problem.flops_rate(kept),
                 flops_lib.count_flops(problem.evaluator.table, kept),
                 1, time.time() - start)
  return SearchState({g: lo for g in specs}, ranks,
                     teacher_lib.update(state.teacher, result['logits'],
                                        problem.config.teacher),
                     1, [*state.history, entry],
                     [*state.ranks_history, ranks])


# ---------------------------------------------------------------------------
# Checkpoints of the search state (atomic, previous copy kept).


def save_state(path: str, state: SearchState,
               gate_names: Sequence[str]) -> None:
  arrays = {'teacher_logits': np.asarray(state.teacher.logits),
            'teacher_count': np.asarray(state.teacher.count),
            'rates': np.asarray([state.rates[g] for g in gate_names]),
            'step': np.asarray(state.step),
            'history': np.asarray(json.dumps(state.history))}
  for i, ranks in enumerate(state.ranks_history):
    arrays[f'ranks_{i}'] = np.concatenate([ranks[g] for g in gate_names])
  checkpoint.write_npz_atomic(path, **arrays)


def load_state(path: str, specs) -> SearchState:
  """The newest readable state (the previous one if the newest is
  damaged)."""
  return checkpoint.read_npz_with_fallback(
      path, lambda p: _read_state(p, specs))


def _read_state(path: str, specs) -> SearchState:
  names = list(specs)
  with np.load(path) as z:
    history = json.loads(str(z['history']))
    bounds = np.cumsum([0] + [specs[g].channels for g in names])
    ranks_history = [
        {g: z[f'ranks_{i}'][a:b].astype(np.int32)
         for g, a, b in zip(names, bounds[:-1], bounds[1:])}
        for i in range(len(history))]
    return SearchState(
        rates={g: float(r) for g, r in zip(names, z['rates'])},
        ranks=ranks_history[-1],
        teacher=teacher_lib.Teacher(jnp.asarray(z['teacher_logits']),
                                    jnp.asarray(z['teacher_count'])),
        step=int(z['step']), history=history, ranks_history=ranks_history)


def run_search(problem: SearchProblem, state: SearchState,
               on_step: Optional[Callable[[SearchState], None]] = None,
               progress: bool = True) -> SearchState:
  """Steps until the FLOPs target; `on_step` sees each accepted state
  (checkpointing, logging)."""
  from tqdm import tqdm
  evaluation = resolve_evaluation(problem.config.evaluation)
  if problem.config.allocation == 'uniform':
    if state.step == 0:
      state = uniform_allocation(problem, state)
      if on_step:
        on_step(state)
    return state
  target = problem.config.target_flops_rate
  start_rate = state.history[-1]['flops_rate']
  bar = tqdm(total=round(1.0 - target, 4), initial=round(1.0 - start_rate, 4),
             disable=not progress, desc='search (FLOPs removed)',
             bar_format='{l_bar}{bar}| {n:.3f}/{total:.3f} [{elapsed}]')
  while not done(problem, state):
    state = search_step(problem, state, evaluation)
    e = state.history[-1]
    line = (f"search step {e['step']}: {e['gate']} -> {e['kept'][e['gate']]} "
            f"channels | FLOPs rate {e['flops_rate']:.4f} | val loss "
            f"{e['val_loss']:.4f} acc {e['val_accuracy']:.3f} objective "
            f"{e['objective']:.4f} | {e['candidates']} candidates | "
            f"{e['seconds']:.1f}s")
    if progress:
      bar.write(line)
    else:
      logging.info(line)
    bar.update(round((1.0 - e['flops_rate']) - bar.n, 4))
    if on_step:
      on_step(state)
  bar.close()
  return state


def prune(model, variables: Any, batches: Batches, target_flops_rate: float,
          *, objective: Optional[Callable] = None, progress: bool = False,
          **options: Any) -> SearchState:
  """The EKG search on any model that follows the gate protocol.

  Args:
    model: a Flax module taking `masks=` and `train=` (see `gates.py`).
    variables: its variables ({'params': ..., 'batch_stats': ...}).
    batches: the validation data the search scores sub-networks on.
    target_flops_rate: stop at FLOPs(sub-network) / FLOPs(dense) <= this.
    objective: optional `(logits, labels, teacher_logits) -> per-sample`
      loss replacing CE + soft CE against the ensemble teacher.
    **options: any other `SearchConfig` field (criterion, teacher, ...).
  Returns:
    The final `SearchState`: `.kept`, `.masks()`, `.history`.
  """
  config = SearchConfig(target_flops_rate=target_flops_rate, **options)
  table = gates_lib.layer_table(model, batches.images[0].shape[1:])
  problem = SearchProblem(Evaluator(model, table, config, objective),
                          variables, batches, config)
  return run_search(problem, init_state(problem), progress=progress)
