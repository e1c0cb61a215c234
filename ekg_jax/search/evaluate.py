"""Candidate evaluation: the compiled functions that score sub-networks on
the validation batches.

Three interchangeable strategies return the same numbers (tested), entries
of `Evaluator.STRATEGIES`:
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
  (`lax.cond` skips unmarked gates). One large program: its tracing and
  lowering dominate the search's start-up on CPU.
- `segments`: the same sharing as `prefix`, but as one small program per
  segment (traced and compiled once, shared by every candidate that runs
  it; the masks are arguments) and a summarising program, a candidate's
  suffix chained from the host. Start-up compiles a few small programs
  instead of one program holding every candidate's suffix. The CPU default
  (compute is the bottleneck there, and sharing halves it).
- `loop`: a Python loop over one jitted single-candidate evaluation (the
  plain version the others are tested against).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax.search import importance as importance_lib
from ekg_jax.search.inputs import Batches, kept_as_int32
from ekg_jax.search.options import EVALUATIONS, SearchConfig, resolve_evaluation
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.supernet import model as model_lib
from ekg_jax.training import losses


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
    self.custom_objective = objective
    self.table = table
    self.specs = gates_lib.gate_specs(table)
    self.gate_names = list(self.specs)
    self.first_segment = gates_lib.first_segments(table)
    self.config = config
    importance_lib.check_criterion(config.criterion, table,
                                   type(model).__name__)
    self.use_teacher = config.teacher != 'none'
    # Segments are declared by the model (`Supernet.enter_segment`); a model
    # without them runs whole, and `auto` evaluation never picks `prefix`
    # or `segments`.
    self.segmented = gates_lib.num_segments(table) > 1
    self.starts = sorted(set(self.first_segment.values()) - {0})
    self.evaluation = resolve_evaluation(config.evaluation, self.segmented)
    # With `prefix` / `segments` evaluation the importance pass's forward
    # gives the segment inputs too, reused when the step's ranks keep the
    # same channels (other paths do not need them: they would only hold
    # memory).
    self.keeps_boundaries = self.evaluation in ('prefix', 'segments')
    self._compiled = {}
    self.importance = self.compiled(importance_lib.ekg_scores)
    self.boundaries = jax.jit(self._boundaries)
    self.gbn = self.compiled(importance_lib.gbn_scores)
    self.logits = jax.jit(self._logits)
    self.summarise = jax.jit(self._summarise)
    self.evaluate_one = jax.jit(self._evaluate_one)
    self.evaluate_vmap = jax.jit(self._evaluate_vmap)
    self.evaluate_prefix = jax.jit(self._evaluate_prefix)
    # `segments`: segment index -> its program over all the batches.
    self.segment_programs = [
        jax.jit(functools.partial(self._run_segment, k))
        for k in range(gates_lib.num_segments(table))]
    self.summarise_batches = jax.jit(self._summarise_batches)

  # -- one network ---------------------------------------------------------

  def _apply(self, variables, x, masks, start=0, stop=None):
    # Batch statistics; the updated running statistics are dropped.
    segment = {'start': start, 'stop': stop} if self.segmented else {}
    return model_lib.forward_train(self.model, variables, x, masks=masks,
                                   **segment)[0]

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
    if self.custom_objective is not None:
      return ce, self.custom_objective(logits, labels, teacher_logits)
    if not self.use_teacher:
      return ce, ce
    return ce, ce + losses.soft_cross_entropy(logits, teacher_logits)

  def _summarise(self, logits, labels, teacher_logits):
    ce, objective = self._terms(logits, labels, teacher_logits)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return dict(objective=objective.mean(), loss=ce.mean(),
                accuracy=accuracy, logits=logits)

  def _run_segment(self, k, variables, xs, masks):
    """Segment k of the network over each batch's activation."""
    return tuple(self._apply(variables, x, masks, start=k, stop=k + 1)
                 for x in xs)

  def _summarise_batches(self, logits, labels, teacher_logits):
    return self._summarise(jnp.concatenate(logits), jnp.concatenate(labels),
                           teacher_logits)

  def _evaluate_one(self, variables, batches, teacher_logits, ranks, kept):
    masks = gates_lib.masks_from_kept(kept, ranks)
    logits = self._logits(variables, batches.images, masks)
    return self._summarise(logits, jnp.concatenate(batches.labels),
                           teacher_logits)

  # -- the objectives, for the criteria (importance.Objectives) ------------

  def objective(self, variables, nominal: int):
    def objective(masks, batch):
      x, y, t = batch
      logits, acts = self._forward_with_boundaries(variables, x, masks)
      _, obj = self._terms(logits, y, t)
      return obj.sum() / nominal, acts if self.keeps_boundaries else None
    return objective

  def compiled(self, fn):
    if fn not in self._compiled:
      self._compiled[fn] = jax.jit(functools.partial(fn, self))
    return self._compiled[fn]

  def loss(self, variables, masks, nominal: int):
    def loss(params, batch):
      x, y = batch
      logits = self._apply({**variables, 'params': params}, x, masks)
      return losses.cross_entropy(logits, y).sum() / nominal
    return loss

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
    logits_shape = jax.eval_shape(self._logits, variables, batches.images,
                                  masks).shape
    shapes = jax.eval_shape(
        lambda: self._summarise(jnp.zeros(logits_shape), labels,
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
    count changed) with strategy `mode`. Returns gate -> {objective, loss,
    accuracy, logits}. `boundaries`: the current network's segment inputs
    (`prefix` only), computed there when not given."""
    if mode not in STRATEGIES:
      raise ValueError(f'search.evaluation={mode!r}; allowed: {EVALUATIONS}')
    return STRATEGIES[mode](self, _Candidates(
        variables, batches, teacher_logits, ranks, kept, candidates,
        boundaries))


class _Candidates(NamedTuple):
  """One step's candidate evaluation, as every strategy receives it."""
  variables: Any
  batches: Batches
  teacher_logits: jax.Array
  ranks: Mapping[str, jax.Array]
  kept: Mapping[str, int]
  candidates: Mapping[str, int]
  boundaries: Any


def _loop(ev: Evaluator, c: _Candidates) -> dict[str, dict]:
  return {g: jax.device_get(ev.evaluate_one(
      c.variables, c.batches, c.teacher_logits, c.ranks,
      kept_as_int32({**c.kept, g: k}))) for g, k in c.candidates.items()}


def _prefix(ev: Evaluator, c: _Candidates) -> dict[str, dict]:
  new_kept = {g: jnp.int32(c.candidates.get(g, c.kept[g]))
              for g in ev.gate_names}
  active = {g: jnp.bool_(g in c.candidates) for g in ev.gate_names}
  boundaries = c.boundaries
  if boundaries is None:
    boundaries = ev.boundaries(
        c.variables, c.batches.images,
        gates_lib.masks_from_kept(kept_as_int32(c.kept), c.ranks))
  res = jax.device_get(ev.evaluate_prefix(
      c.variables, c.batches, boundaries, c.teacher_logits, c.ranks,
      kept_as_int32(c.kept), new_kept, active))
  index = {g: i for i, g in enumerate(ev.gate_names)}
  return {g: jax.tree_util.tree_map(lambda a: a[index[g]], res)
          for g in c.candidates}


def _segments(ev: Evaluator, c: _Candidates) -> dict[str, dict]:
  """Each candidate's suffix chained from the host through the per-segment
  programs, starting from the current network's activation entering the
  first segment its gate touches."""
  # On the device once: the programs run ~300 times a step, and host
  # (NumPy) variables or masks would be copied in at every call.
  variables = jax.device_put(c.variables)
  ranks = {g: np.asarray(r) for g, r in c.ranks.items()}
  masks = jax.device_put({g: (ranks[g] < c.kept[g]).astype(np.float32)
                          for g in ev.gate_names})
  programs = ev.segment_programs
  inputs = {0: tuple(c.batches.images)}
  if c.boundaries is not None:
    inputs.update({s: tuple(acts[s] for acts in c.boundaries)
                   for s in ev.starts})
  else:  # the current network's forward, chained: the same programs
    xs = inputs[0]
    for k in range(max(ev.starts, default=0)):
      xs = programs[k](variables, xs, masks)
      if k + 1 in ev.starts:
        inputs[k + 1] = xs
  results = {}
  for g, k in c.candidates.items():
    cand = {**masks, g: jax.device_put((ranks[g] < k).astype(np.float32))}
    start = ev.first_segment[g]
    xs = inputs[start]
    for index in range(start, len(programs)):
      xs = programs[index](variables, xs, cand)
    results[g] = ev.summarise_batches(xs, c.batches.labels, c.teacher_logits)
  return jax.device_get(results)


def _vmap(ev: Evaluator, c: _Candidates) -> dict[str, dict]:
  names = list(c.candidates)
  chunk = ev.config.chunk_size
  slots = -(-len(ev.gate_names) // chunk) * chunk  # fixed: compile once
  stack = {h: np.full(slots, c.kept[h], np.int32) for h in ev.gate_names}
  for i, g in enumerate(names):
    stack[g][i] = c.candidates[g]
  active = np.arange(slots) < len(names)
  res = jax.device_get(ev.evaluate_vmap(
      c.variables, c.batches, c.teacher_logits, c.ranks, stack, active))
  return {g: jax.tree_util.tree_map(lambda a: a[i], res)
          for i, g in enumerate(names)}


# search.evaluation -> strategy ('auto' resolves to one of them).
STRATEGIES: dict[str, Callable[[Evaluator, _Candidates], dict]] = {
    'vmap': _vmap, 'prefix': _prefix, 'segments': _segments, 'loop': _loop}

