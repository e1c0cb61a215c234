"""Channel importance per gate (ekg_algorithm.md section 3) and baselines.

`ekg`: the gate-gradient score. The gate multiplies activations, y = x * m;
the score of channel c is |sum over batch, height, width of dObj/dy * y|,
which equals |m_c * dObj/dm_c|, taken per validation batch and summed over
batches. Masked channels therefore score 0 and stay last.

Weight-based baselines score each gate's channels from the kernels and BNs
that write them (found through the layer table): `l1`, `l2` (filter norms),
`fpgm` (distance to the other filters: near the geometric median = redundant),
`bn_gamma` (|BN scale|) and `random` (seeded, fixed for the whole search).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax import gates as gates_lib

CRITERIA = ('ekg', 'l1', 'l2', 'fpgm', 'bn_gamma', 'random')


def gate_gradient_scores(objective: Callable[..., jax.Array], masks: Mapping,
                         batches: Sequence[Any]) -> dict[str, jax.Array]:
  """sum over batches of |m * dObjective_b/dm|; jit the caller.

  `objective(masks, batch)` is the search objective on one batch.
  """
  total = jax.tree_util.tree_map(jnp.zeros_like, dict(masks))
  for batch in batches:
    grads = jax.grad(objective)(dict(masks), batch)
    total = jax.tree_util.tree_map(lambda t, g, m: t + jnp.abs(g * m),
                                   total, grads, dict(masks))
  return total


def _writer_kernels(table, params, gate):
  """Each writer's kernel of `gate` reshaped to [filters, fan_in]."""
  out = []
  for layer in table:
    if (layer.kind == 'conv' and layer.out_gate == gate
        and not layer.depthwise):
      kernel = np.asarray(
          gates_lib.layer_variables(params, layer.path)['kernel'])
      out.append(np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1))
  return out


def _fpgm(filters: np.ndarray) -> np.ndarray:
  dist = np.sqrt(np.maximum(
      (filters ** 2).sum(1)[:, None] + (filters ** 2).sum(1)[None, :]
      - 2 * filters @ filters.T, 0.0))
  return dist.sum(axis=1)


def weight_scores(criterion: str, table: Sequence[gates_lib.LayerSpec],
                  variables: Mapping, seed: int = 0) -> dict[str, jax.Array]:
  """Scores that depend on the weights only (fixed during the search)."""
  specs = gates_lib.gate_specs(table)
  params = variables['params']
  scores = {}
  rng = np.random.default_rng(seed)
  for gate, spec in specs.items():
    if criterion == 'random':
      scores[gate] = rng.random(spec.channels)
      continue
    if criterion == 'bn_gamma':
      scores[gate] = sum(
          np.abs(np.asarray(gates_lib.layer_variables(params, l.path)['scale']))
          for l in table if l.kind == 'bn' and l.out_gate == gate)
      continue
    per_filter = {
        'l1': lambda f: np.abs(f).sum(1),
        'l2': lambda f: np.sqrt((f ** 2).sum(1)),
        'fpgm': _fpgm,
    }[criterion]
    scores[gate] = sum(per_filter(f) for f in
                       _writer_kernels(table, params, gate))
  return {g: jnp.asarray(s, jnp.float32) for g, s in scores.items()}
