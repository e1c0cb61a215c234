"""Rates, kept counts and candidate marking (ekg_algorithm.md section 4):
host-side, exact arithmetic, in the reference's float32 and roundings."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ekg_jax.supernet import gates as gates_lib


def kept_count(channels: int, rate: float, round_to: int = 1) -> int:
  """Channels kept at `rate`: those whose rank r satisfies
  r < max(C * rate, 1), in float32 as the reference's masks compute it.
  `round_to` N > 1 (not the reference): a pruned gate keeps a multiple of N
  channels, rounded down (at least N), so the network runs on kernels of
  friendly widths; a gate narrower than N stays whole."""
  bound = max(np.float32(channels) * np.float32(rate), np.float32(1.0))
  kept = min(int(np.ceil(bound)), channels)
  if round_to > 1 and kept < channels:
    kept = min(channels, max(round_to, kept // round_to * round_to))
  return kept


def kept_from_rates(specs: Mapping[str, gates_lib.GateSpec],
                    rates: Mapping[str, float],
                    round_to: int = 1) -> dict[str, int]:
  return {g: kept_count(specs[g].channels, r, round_to)
          for g, r in rates.items()}


def step_size(spec: gates_lib.GateSpec, step: float,
              round_to: int = 1) -> float:
  """delta = max(N/C, s/u), a fraction of the gate's width (N = round_to:
  1 in the reference), so every step removes at least N channels."""
  return max(round_to / spec.channels, step / spec.writers)


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


def mark_candidates(specs, rates, scores, config) -> list[str]:
  """Gates worth evaluating this step: rate > 0 (a gate already at one
  channel included: its step retires it) and removal cost <= the
  trimmed-Otsu threshold. `config`: a `search.SearchConfig` (not imported
  here: its rules read MARKINGS)."""
  cost_of = MARKINGS[config.marking]
  costs = {g: cost_of(np.asarray(scores[g]), rates[g],
                      step_size(spec, config.step, config.round_to))
           for g, spec in specs.items() if rates[g] > 0}
  threshold = otsu_threshold(list(costs.values()), config.otsu_trim)
  return [g for g, c in costs.items() if c <= threshold]


def candidate_rate(spec, rate: float, flops_rate_of: Callable[[float], float],
                   config) -> float:
  """The rate after one step, as the reference: rate - delta; when that
  falls below the FLOPs target, the fine search walks w = r, r + N/C, ...
  (below r + s), trying round(w, 2), and at the first w that overshoots the
  target takes round(w - N/C, 5) (the rounding is the reference's; N =
  round_to, 1 in the reference)."""
  new = round(rate - step_size(spec, config.step, config.round_to), 5)
  target = config.target_flops_rate
  if flops_rate_of(new) >= target:
    return new
  fine = config.round_to / spec.channels
  for w in np.arange(new, new + config.step, fine):
    tried = round(float(w), 2)
    if flops_rate_of(tried) > target:
      return round(float(w) - fine, 5)
  return tried
