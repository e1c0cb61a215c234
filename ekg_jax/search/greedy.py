"""The greedy search (ekg_algorithm.md sections 3-5) and the uniform
baseline.

Each step recomputes channel importance, marks the cheapest gates (trimmed
Otsu), shrinks each marked gate by its step size in a candidate, evaluates
every candidate against the ensemble teacher in one compiled call, and
accepts the candidate with the lowest objective, until the FLOPs rate
reaches the target. `search_step(problem, state) -> state` is pure given the
problem's compiled functions; `run_search` loops, logs and checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax.supernet import flops as flops_lib
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.supernet import protocol
from ekg_jax.search import importance as importance_lib
from ekg_jax.search import teacher as teacher_lib
from ekg_jax.search.evaluate import Evaluator
from ekg_jax.search.inputs import Batches, kept_as_int32
from ekg_jax.search.marking import (candidate_rate, kept_count,
                                    kept_from_rates, mark_candidates)
from ekg_jax.search import options as options_lib
from ekg_jax.search.options import ALLOCATIONS, SearchConfig
from ekg_jax.search.state import SearchState, history_entry

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
                                       kept_as_int32(kept))


def _same_channels(kept, old_ranks, new_ranks) -> bool:
  """Whether the kept counts select the same channels under both ranks
  (they do unless a kept channel scored exactly 0 and tied with masked
  ones)."""
  return all(np.array_equal(np.asarray(old_ranks[g]) < k,
                            np.asarray(new_ranks[g]) < k)
             for g, k in kept.items())


def _np_to_jnp(tree):
  return {g: jnp.asarray(v) for g, v in tree.items()}


def init_state(problem: SearchProblem) -> SearchState:
  """The starting network: full rates, T_0 = its validation logits."""
  specs = problem.specs
  rates = {g: 1.0 for g in specs}
  ranks = {g: np.arange(s.channels, dtype=np.int32) for g, s in specs.items()}
  kept = kept_from_rates(specs, rates, problem.config.round_to)
  start = time.time()
  logits = problem.evaluator.logits(problem.variables,
                                    problem.batches.images, None)
  teacher = teacher_lib.init(logits)
  result = problem.evaluator.summarise(
      logits, jnp.concatenate(problem.batches.labels), teacher.logits)
  table = problem.evaluator.table
  entry = history_entry(0, None, kept, result, 1.0,
                        flops_lib.count_flops(table, kept), 0,
                        time.time() - start)
  return SearchState(rates, teacher, (entry,), (ranks,))


def done(problem: SearchProblem, state: SearchState) -> bool:
  kept = kept_from_rates(problem.specs, state.rates,
                         problem.config.round_to)
  return problem.flops_rate(kept) <= problem.config.target_flops_rate


class SearchError(RuntimeError):
  """The search cannot go on (named with the step and the reason)."""


def search_step(problem: SearchProblem, state: SearchState,
                evaluation: str) -> SearchState:
  """One greedy step: importance, marking, candidate evaluation, accept."""
  start = time.time()
  specs, config = problem.specs, problem.config
  kept = kept_from_rates(specs, state.rates, config.round_to)
  masks = gates_lib.masks_from_kept(kept, _np_to_jnp(state.ranks))
  scores, boundaries = problem.scores_and_boundaries(state, masks)
  scores = jax.device_get(scores)  # waits: the boundaries come with them
  importance_seconds = time.time() - start
  ranks = gates_lib.ranks_from_scores(scores)
  if boundaries is not None and not _same_channels(kept, state.ranks, ranks):
    boundaries = None  # the new ranks keep other channels: recompute
  marked = mark_candidates(specs, state.rates, scores, config)
  if not marked:
    raise SearchError(
        f'search step {state.step + 1}: no gate can shrink further, but the '
        f'FLOPs rate is still above {config.target_flops_rate}')
  new_rates = {}
  for g in marked:
    rate_of = lambda r, g=g: problem.flops_rate(
        {**kept, g: kept_count(specs[g].channels, r, config.round_to)})
    new_rates[g] = candidate_rate(specs[g], state.rates[g], rate_of, config)
  candidates = {g: kept_count(specs[g].channels, r, config.round_to)
                for g, r in new_rates.items()}
  evaluating = time.time()
  results = problem.evaluator.evaluate_candidates(
      evaluation, problem.variables, problem.batches, state.teacher.logits,
      _np_to_jnp(ranks), kept, candidates, boundaries)
  candidates_seconds = time.time() - evaluating
  objectives = {g: float(r['objective']) for g, r in results.items()}
  bad = [g for g in marked if not np.isfinite(objectives[g])]
  if bad:
    raise SearchError(
        f'search step {state.step + 1}: the objective is '
        f'{objectives[bad[0]]} for candidate {bad[0]} ({len(bad)} of '
        f'{len(marked)} candidates): the validation data or the weights give '
        'non-finite losses (images not normalised? labels outside the '
        'classes? diverged weights?)')
  best = min(marked, key=lambda g: (objectives[g], marked.index(g)))
  rates = {**state.rates, best: new_rates[best]}
  kept = kept_from_rates(specs, rates, problem.config.round_to)
  teacher = teacher_lib.update(state.teacher, results[best]['logits'],
                               config.teacher)
  step = state.step + 1
  entry = history_entry(step, best, kept, results[best],
                        problem.flops_rate(kept),
                        flops_lib.count_flops(problem.evaluator.table, kept),
                        len(marked), time.time() - start,
                        importance_seconds, candidates_seconds)
  return state.accept(rates, ranks, teacher, entry)


def uniform_allocation(problem: SearchProblem,
                       state: SearchState) -> SearchState:
  """Baseline: the same fraction of every gate, the largest that meets the
  target; channels ranked once by the criterion on the full network. The
  gates `uniform_fixed` names keep their own fixed fraction instead."""
  start = time.time()
  specs = problem.specs
  fixed = options_lib.fixed_fractions(problem.config, specs)
  rates_of = lambda r: {g: fixed.get(g, r) for g in specs}
  kept_of = lambda r: {g: kept_count(specs[g].channels, rate,
                                     problem.config.round_to)
                       for g, rate in rates_of(r).items()}
  lo, hi = 0.0, 1.0  # flops_rate(kept_of(lo)) <= target < flops_rate(hi)
  if problem.flops_rate(kept_of(lo)) > problem.config.target_flops_rate:
    raise RuntimeError('the FLOPs target is below the one-channel network'
                       + (' with search.uniform_fixed' if fixed else ''))
  for _ in range(40):
    mid = (lo + hi) / 2
    if problem.flops_rate(kept_of(mid)) <= problem.config.target_flops_rate:
      lo = mid
    else:
      hi = mid
  kept = kept_of(lo)
  masks = gates_lib.masks_from_kept(
      kept_from_rates(specs, state.rates, problem.config.round_to),
      _np_to_jnp(state.ranks))
  ranks = gates_lib.ranks_from_scores(
      jax.device_get(problem.scores(state, masks)))
  result = problem.evaluate(kept, ranks, state.teacher.logits)
  entry = history_entry(1, None, kept, result, problem.flops_rate(kept),
                        flops_lib.count_flops(problem.evaluator.table, kept),
                        1, time.time() - start)
  return state.accept(rates_of(lo), ranks,
                      teacher_lib.update(state.teacher, result['logits'],
                                         problem.config.teacher), entry)


# ---------------------------------------------------------------------------
def _run_uniform(problem, state, on_step, progress) -> SearchState:
  del progress  # one step
  if state.step == 0:
    state = uniform_allocation(problem, state)
    if on_step:
      on_step(state)
  return state


def _run_greedy(problem, state, on_step, progress) -> SearchState:
  from tqdm import tqdm
  evaluation = problem.evaluator.evaluation
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


# search.allocation -> how a run spends the FLOPs reduction.
ALLOCATIONS.update(greedy=_run_greedy, uniform=_run_uniform)


def run_search(problem: SearchProblem, state: SearchState,
               on_step: Optional[Callable[[SearchState], None]] = None,
               progress: bool = True) -> SearchState:
  """Runs the configured allocation to the FLOPs target (or resumes it);
  `on_step` sees each accepted state (checkpointing, logging)."""
  return ALLOCATIONS[problem.config.allocation](problem, state, on_step,
                                                progress)


def prune(model, variables: Any, batches: Batches, target_flops_rate: float,
          *, objective: Optional[Callable] = None, progress: bool = False,
          **options: Any) -> SearchState:
  """The EKG search on any model that follows the gate protocol.

  Args:
    model: a `PrunableModel` (a Flax module taking `masks=` and `train=`;
      `start=`/`stop=` too if it has segments).
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
  input_shape = batches.images[0].shape[1:]
  logits_shape = protocol.check_variables(model, variables, input_shape)
  batches.check_labels(logits_shape[-1])
  table = gates_lib.layer_table(model, input_shape)
  options_lib.fixed_fractions(config, gates_lib.gate_specs(table))
  problem = SearchProblem(Evaluator(model, table, config, objective),
                          variables, batches, config)
  return run_search(problem, init_state(problem), progress=progress)
