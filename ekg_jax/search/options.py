"""The search's options: one validated record that owns its rules, the
single source of the defaults `config.py` and `prune` use, and the backend
policy for `auto`."""

from __future__ import annotations

import dataclasses
from typing import Callable

from ekg_jax import rules
from ekg_jax.runtime import backend
from ekg_jax.search import importance, marking, teacher

EVALUATIONS = ('auto', 'vmap', 'prefix', 'segments', 'loop')
# name -> allocation strategy; `greedy.py` registers its strategies here, so
# the rule below and `search.greedy` read one table.
ALLOCATIONS: dict[str, Callable] = {}


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """The search's options; `config.py`'s `search` section starts from these
  defaults, and `prune(**options)` takes the same names."""
  # Stop at FLOPs(sub-network) / FLOPs(dense) <= this (0.45: ~55% removed).
  target_flops_rate: float = 0.45
  step: float = 0.2  # s in delta = max(1/C, s/u)
  teacher: str = 'ensemble'  # 'ensemble' | 'single' | 'none'
  criterion: str = 'ekg'  # an entry of importance.CRITERIA
  allocation: str = 'greedy'  # an entry of search.ALLOCATIONS
  chunk_size: int = 4  # candidates per vmapped call (memory bound)
  otsu_trim: float = 0.2  # fraction dropped at each end before Otsu
  # Removal cost before the Otsu threshold (section 4): 'reference' (what
  # the authors' code computes: an untouched gate costs the sum of all its
  # scores, a gate pruned once costs 0) or 'per_channel' (the scores of the
  # channels the next step would remove).
  marking: str = 'reference'
  flops_include_bn: bool = True  # the reference total counts BN
  # Kept channel counts are multiples of this (1: the reference). Widths
  # that are multiples of 8 suit vector units and GPU kernels.
  round_to: int = 1
  # How candidates are evaluated (same numbers each way): 'vmap' (stacked
  # masks, chunks; best on GPU/TPU), 'prefix' (shares the segments before
  # the candidate's gate, one program), 'segments' (the same sharing, one
  # small program per segment chained from the host: a shorter start-up),
  # 'loop', or 'auto' (by backend).
  evaluation: str = 'auto'
  # allocation=uniform only: fixed kept fractions by gate-name suffix.
  # 'heads=0.5' keeps ceil(0.5 C) of every '.../heads' gate (2 of 3
  # heads: a separate head ratio, as Torch-Pruning's head_pruning_ratio)
  # and the other gates share the largest one fraction that meets the
  # target; '' gives every gate the same fraction.
  uniform_fixed: str = ''
  seed: int = 0  # the `random` criterion's; the pipeline passes config.seed

  def __post_init__(self):
    """The config file's rules hold for library calls too: `prune(...,
    target_flops_rate=1.5)` fails here, before any compute."""
    rules.check_record(self, RULES)

  @classmethod
  def from_config(cls, search, seed=0) -> 'SearchConfig':
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in search.items() if k in names}, seed=seed)


def parse_fixed(text: str) -> dict[str, float]:
  """`uniform_fixed` ('heads=0.5,mlp=0.25') as {suffix: fraction}."""
  fixed = {}
  for item in filter(None, (p.strip() for p in text.split(','))):
    suffix, _, fraction = item.partition('=')
    fixed[suffix.strip()] = float(fraction)
  return fixed


def _fixed_error(v) -> str | None:
  usage = ("must be '' or suffix=fraction pairs, comma-separated, each "
           "fraction in (0, 1], e.g. 'heads=0.5'")
  if not isinstance(v, str):
    return usage
  try:
    fixed = parse_fixed(v)
  except ValueError:
    return usage
  ok = all(s and 0 < f <= 1 for s, f in fixed.items())
  return None if ok and v.count('=') == len(fixed) else usage


# One rule per option; the whole-config check uses them as `search.<name>`.
RULES: dict[str, rules.Rule] = {
    'target_flops_rate': rules.number(0, 1, low_open=True, high_open=True),
    'step': rules.number(0, 1, low_open=True),
    'teacher': rules.choice(teacher.MODES),
    'criterion': rules.choice(importance.CRITERIA),
    'allocation': rules.choice(ALLOCATIONS),
    'chunk_size': rules.integer(1),
    'otsu_trim': rules.number(0, 0.5, high_open=True),
    'marking': rules.choice(marking.MARKINGS),
    'flops_include_bn': rules.boolean,
    'round_to': rules.integer(1),
    'evaluation': rules.choice(EVALUATIONS),
    'uniform_fixed': _fixed_error,
    'seed': rules.integer(0),
}


def fixed_fractions(config: SearchConfig, gates) -> dict[str, float]:
  """{gate: fraction} for the gates `config.uniform_fixed` names; a suffix
  that names no gate is refused in one line."""
  fixed = parse_fixed(config.uniform_fixed)
  out = {}
  for suffix, fraction in fixed.items():
    named = [g for g in gates if g == suffix or g.endswith('/' + suffix)]
    if not named:
      raise rules.ConfigError(
          f'search.uniform_fixed={config.uniform_fixed!r}: {suffix!r} names '
          f'no gate (gates: {", ".join(list(gates)[:4])}, ...)')
    out.update(dict.fromkeys(named, fraction))
  return out


def defaults() -> dict:
  """The options a config file sets (the seed is the run's own)."""
  return {f.name: f.default for f in dataclasses.fields(SearchConfig)
          if f.name != 'seed'}


def resolve_evaluation(mode: str, segmented: bool = True) -> str:
  """'auto': as `backend.BackendPolicy` says (shared prefixes on CPU where
  the model has segments, wide vmaps on accelerators)."""
  if mode != 'auto':
    return mode
  policy = backend.policy()
  return (policy.search_evaluation if segmented
          else policy.search_evaluation_unsegmented)
