"""Channel importance per gate (ekg_algorithm.md section 3) and baselines.

`ekg`: the gate-gradient score. The gate multiplies activations, y = x * m;
at one place where the gate is applied, channel c contributes
|sum over batch, height, width of dObj/dy * y|; the score sums these over
every place the gate is applied and every validation batch (absolute value
first, as the reference's custom gradient does). Masked channels therefore
score 0 and stay last.

`gbn` (Gate Decorator, You et al. 2019): the Taylor score |gamma *
dL/dgamma| of the BN scales writing the gate (L the validation CE, BN with
batch statistics), absolute value per batch, summed over the validation
batches; recomputed at every step on the current sub-network, masked
channels 0.

Weight-based baselines score each gate's channels from the filters and
per-channel scales that write them, as each layer's description names them
(`LayerSpec.filters`, `.channel_scale`): `l1`, `l2` (filter norms), `fpgm`
(distance to the other filters: near the geometric median = redundant),
`bn_gamma` (|BN scale|) and `random` (seeded, fixed for the whole search).
`gbn` likewise takes its gammas from `LayerSpec.channel_scale`.
"""

from __future__ import annotations

from typing import (Any, Callable, Mapping, NamedTuple, Optional, Protocol,
                    Sequence)

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax import rules
from ekg_jax.supernet import gates as gates_lib

class Objectives(Protocol):
  """The search's objectives as pure functions of one batch, what the
  data-driven criteria differentiate (`search.Evaluator` offers them). Both
  weigh a batch as its sum over the nominal batch size `nominal`."""
  table: Sequence[gates_lib.LayerSpec]
  # Whether `objective`'s aux is the network's segment inputs (the `prefix`
  # evaluation reuses them), else None.
  keeps_boundaries: bool

  def objective(self, variables: Mapping, nominal: int
                ) -> Callable[[Mapping, Any], tuple[jax.Array, Any]]:
    """`fn(masks, (images, labels, teacher logits)) -> (value, aux)`: the
    search objective (CE + soft CE against the teacher)."""

  def loss(self, variables: Mapping, masks: Mapping, nominal: int
           ) -> Callable[[Mapping, Any], jax.Array]:
    """`fn(params, (images, labels)) -> CE`, batch statistics."""

  def compiled(self, fn: Callable) -> Callable:
    """`jax.jit(functools.partial(fn, self))`, built once per search, so a
    criterion's pass compiles once for all the steps."""


class ScoreInputs(NamedTuple):
  """What a criterion may use at a search step."""
  table: Sequence[gates_lib.LayerSpec]
  variables: Mapping
  masks: Mapping  # the current network's 0/1 masks
  seed: int = 0
  objectives: Optional[Objectives] = None  # the search's, as functions
  batches: Any = None  # search.Batches, the validation set
  teacher_logits: Any = None  # the ensemble teacher's current logits


# A criterion maps ScoreInputs to {gate: channel scores} (higher = more
# important), or to (scores, segment inputs of the current network) when its
# pass computed them, so the `prefix` evaluation can reuse them.
Criterion = Callable[[ScoreInputs], Any]
CRITERIA: dict[str, Criterion] = {}


def register(name: str) -> Callable[[Criterion], Criterion]:
  """Adds a criterion under `name` (usable as search.criterion and in
  `prune(criterion=name)`); works from a notebook, no package edit."""
  def add(fn: Criterion) -> Criterion:
    CRITERIA[name] = fn
    return fn
  return add


@register('ekg')
def _ekg(inputs: ScoreInputs):
  return inputs.objectives.compiled(ekg_scores)(
      inputs.variables, inputs.batches, inputs.teacher_logits, inputs.masks)


@register('gbn')
def _gbn(inputs: ScoreInputs):
  return inputs.objectives.compiled(gbn_scores)(
      inputs.variables, inputs.batches, inputs.masks)


def ekg_scores(objectives: Objectives, variables, batches, teacher_logits,
               masks):
  """(the `ekg` score of every gate's channels over the validation
  `batches`, the segment inputs of the network `masks` describe or None).
  Each batch's objective is its SUM over the nominal batch size, so a
  partial last batch (64 of 320) weighs 64/256 of a full one. Jit the
  caller (`objectives.compiled(ekg_scores)`)."""
  objective = objectives.objective(variables, max(batches.sizes))
  scores, auxes = gate_gradient_scores(
      objective, masks, list(zip(batches.images, batches.labels,
                                 batches.split(teacher_logits))),
      has_aux=True)
  return scores, auxes if objectives.keeps_boundaries else None


def gbn_scores(objectives: Objectives, variables, batches, masks):
  """The `gbn` score (module docstring) on the validation `batches`."""
  loss = objectives.loss(variables, masks, max(batches.sizes))
  return bn_taylor_scores(loss, variables['params'], objectives.table, masks,
                          list(zip(batches.images, batches.labels)))


def gate_gradient_scores(objective: Callable[..., Any], masks: Mapping,
                         batches: Sequence[Any], has_aux: bool = False):
  """The section-3 score of every gate's channels; jit the caller.

  `objective(masks, batch)` is the search objective on one batch. Each gate
  gets a zero probe (`gates.Probed`); the probe's gradient is the sum over
  the gate's places of |sum(dObj/dy * y)|, taken per batch and summed over
  batches, so a gate applied at several places (a residual stream) scores
  the absolute contribution of each place. With `has_aux`, `objective`
  returns (value, aux) and the result is (scores, [aux per batch]).
  """
  masks = dict(masks)
  probes = jax.tree_util.tree_map(jnp.zeros_like, masks)

  def probed(probes, batch):
    return objective({g: gates_lib.Probed(m, probes[g])
                      for g, m in masks.items()}, batch)

  total, auxes = probes, []
  for batch in batches:
    grads = jax.grad(probed, has_aux=has_aux)(probes, batch)
    if has_aux:
      grads, aux = grads
      auxes.append(aux)
    total = jax.tree_util.tree_map(jnp.add, total, grads)
  return (total, auxes) if has_aux else total


def bn_taylor_scores(loss: Callable[..., jax.Array], params: Mapping,
                     table: Sequence[gates_lib.LayerSpec], masks: Mapping,
                     batches: Sequence[Any]) -> dict[str, jax.Array]:
  """`gbn`: per gate, the sum over its BN layers and over batches of
  |gamma * dL_b/dgamma|, times the gate's 0/1 mask (a masked channel's
  gradient can pass a straight-through gate; it must still score 0).
  `loss(params, batch)` is L on one batch; jit the caller."""
  scaled = [layer for layer in table
            if layer.channel_scale is not None and layer.out_gate is not None]
  specs = gates_lib.gate_specs(table)
  total = {g: jnp.zeros(s.channels) for g, s in specs.items()}
  for batch in batches:
    grads = jax.grad(loss)(params, batch)
    for layer in scaled:
      name = layer.channel_scale
      scale = gates_lib.layer_variables(params, layer.path)[name]
      grad = gates_lib.layer_variables(grads, layer.path)[name]
      total[layer.out_gate] = total[layer.out_gate] + jnp.abs(scale * grad)
  return {g: t * (masks[g] != 0) if g in masks else t
          for g, t in total.items()}


def _writer_kernels(table, params, gate):
  """Each writer's filters of `gate` as a [filters, fan_in] array; a layer
  naming several filter variables (an attention head's four projections)
  gives each channel the concatenation of its slices of all of them."""
  out = []
  for layer in table:
    if layer.filters is None or layer.out_gate != gate:
      continue
    names = ((layer.filters,) if isinstance(layer.filters, str)
             else layer.filters)
    parts = []
    for name in names:
      spec = layer.variable(name)
      axis = next(a for a, side in spec.axes if side == gates_lib.OUT)
      kernel = np.asarray(gates_lib.layer_variables(params, layer.path)[name])
      parts.append(np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis],
                                                        -1))
    out.append(np.concatenate(parts, axis=1))
  return out


def _fpgm(filters: np.ndarray) -> np.ndarray:
  dist = np.sqrt(np.maximum(
      (filters ** 2).sum(1)[:, None] + (filters ** 2).sum(1)[None, :]
      - 2 * filters @ filters.T, 0.0))
  return dist.sum(axis=1)


def _from_filters(per_filter: Callable[[np.ndarray], np.ndarray]
                  ) -> Criterion:
  """A criterion summing `per_filter` over the kernels writing each gate."""
  def criterion(inputs: ScoreInputs):
    params = inputs.variables['params']
    return {g: jnp.asarray(sum(per_filter(f) for f in
                               _writer_kernels(inputs.table, params, g)),
                           jnp.float32)
            for g in gates_lib.gate_specs(inputs.table)}
  return criterion


register('l1')(_from_filters(lambda f: np.abs(f).sum(1)))
register('l2')(_from_filters(lambda f: np.sqrt((f ** 2).sum(1))))
register('fpgm')(_from_filters(_fpgm))


@register('bn_gamma')
def _bn_gamma(inputs: ScoreInputs):
  params = inputs.variables['params']
  return {g: jnp.asarray(sum(
      np.abs(np.asarray(gates_lib.layer_variables(params, l.path)[
          l.channel_scale]))
      for l in inputs.table
      if l.channel_scale is not None and l.out_gate == g), jnp.float32)
          for g in gates_lib.gate_specs(inputs.table)}


@register('random')
def _random(inputs: ScoreInputs):
  """Seeded, so every step of a search sees the same scores."""
  rng = np.random.default_rng(inputs.seed)
  return {g: jnp.asarray(rng.random(spec.channels), jnp.float32)
          for g, spec in gates_lib.gate_specs(inputs.table).items()}


# Criteria that score per-channel normalisation scales (BN gammas).
SCALE_CRITERIA = ('gbn', 'bn_gamma')


def check_criterion(criterion: str, table: Sequence[gates_lib.LayerSpec],
                    model_name: str) -> None:
  """Refuses a BN-scale criterion for a model with no scale on any gate (a
  ViT: its LayerNorms scale the embedding, which is no gate, and nothing
  scales a head or an MLP unit), which would score every channel 0."""
  if criterion in SCALE_CRITERIA and not any(
      l.channel_scale is not None and l.out_gate is not None for l in table):
    raise rules.ConfigError(
        f'search.criterion={criterion!r} scores BatchNorm scales, and '
        f'{model_name} has no BatchNorm on its gates; use ekg, l1, l2, fpgm '
        'or random')


def weight_scores(criterion: str, table: Sequence[gates_lib.LayerSpec],
                  variables: Mapping, seed: int = 0) -> dict[str, jax.Array]:
  """A criterion that needs the weights only (fixed during the search)."""
  return CRITERIA[criterion](ScoreInputs(table, variables, {}, seed))
