"""The search's options: one validated record, the single source of the
defaults `config.py` and `prune` use, and the backend policy for `auto`."""

from __future__ import annotations

import dataclasses

import jax

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


def resolve_evaluation(mode: str) -> str:
  """'auto': shared prefixes on CPU, wide vmaps on accelerators."""
  if mode != 'auto':
    return mode
  return 'prefix' if jax.default_backend() == 'cpu' else 'vmap'
