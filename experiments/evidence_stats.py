"""The statistics of the evidence report: per-arm mean and spread over
fine-tuning seeds, Welch's t-interval and p-value for a difference of two
arms, Holm's correction over the comparisons of one table, the smallest
difference the seeds can detect, and Spearman's rank correlation with an
exact permutation p-value (few points: no large-sample approximation)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional, Sequence

from scipy import stats

ALPHA = 0.05
POWER = 0.8  # for the smallest detectable difference


@dataclasses.dataclass(frozen=True)
class Spread:
  values: tuple[float, ...]

  @property
  def n(self) -> int:
    return len(self.values)

  @property
  def mean(self) -> float:
    return sum(self.values) / self.n

  @property
  def std(self) -> float:
    """Sample standard deviation; nan for one value."""
    if self.n < 2:
      return float('nan')
    return math.sqrt(sum((v - self.mean) ** 2 for v in self.values)
                     / (self.n - 1))

  def __str__(self) -> str:
    if self.n < 2:
      return f'{self.mean:.2f} (n=1)'
    return f'{self.mean:.2f} +- {self.std:.2f} (n={self.n})'


@dataclasses.dataclass(frozen=True)
class Difference:
  """mean(a) - mean(b) with Welch's t-interval, its two-sided p-value and
  the smallest difference these samples detect with POWER at ALPHA."""
  diff: float
  low: float
  high: float
  p: float
  df: float
  detectable: float


def welch(a: Spread, b: Spread) -> Optional[Difference]:
  """None when either side has fewer than 2 values (no spread to test)."""
  if a.n < 2 or b.n < 2:
    return None
  va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
  se = math.sqrt(va + vb)
  diff = a.mean - b.mean
  if se == 0:  # identical values on both sides: nothing to test
    return Difference(diff, diff, diff, 0.0 if diff else 1.0, math.inf, 0.0)
  # Welch-Satterthwaite degrees of freedom.
  df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
  t = stats.t.ppf(1 - ALPHA / 2, df)
  p = 2 * stats.t.sf(abs(diff) / se, df)
  detectable = (t + stats.t.ppf(POWER, df)) * se
  return Difference(diff, float(diff - t * se), float(diff + t * se),
                    float(p), float(df), float(detectable))


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values, in the order given."""
  m = len(pvalues)
  order = sorted(range(m), key=pvalues.__getitem__)
  adjusted, running = [0.0] * m, 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * pvalues[i]))
    adjusted[i] = running
  return adjusted


def _ranks(values: Sequence[float]) -> list[float]:
  """1-based ranks, ties given their mean rank."""
  order = sorted(range(len(values)), key=values.__getitem__)
  ranks = [0.0] * len(values)
  i = 0
  while i < len(order):
    j = i
    while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
      j += 1
    for k in range(i, j + 1):
      ranks[order[k]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
  mx, my = sum(x) / len(x), sum(y) / len(y)
  cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
  var = sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)
  return cov / var ** 0.5 if var else float('nan')  # nan: a constant


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
  """Spearman's rank correlation (Pearson's on the ranks)."""
  return _pearson(_ranks(x), _ranks(y))


def spearman_p(x: Sequence[float], y: Sequence[float]) -> float:
  """Two-sided exact permutation p-value of Spearman's rho: the share of
  the n! orderings of y whose |rho| is at least the observed one (n <= 9;
  nan for a constant measure)."""
  rho = spearman(x, y)
  if rho != rho or len(x) > 9:
    return float('nan')
  rx, ry = _ranks(x), _ranks(y)
  hits = total = 0
  for perm in itertools.permutations(ry):
    total += 1
    hits += abs(_pearson(rx, perm)) >= abs(rho) - 1e-12
  return hits / total
