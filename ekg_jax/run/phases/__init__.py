"""The pipeline's phases, each `(Setup) -> {summary key: results}`:
`common` (what every phase needs), `training` (pretrain, evaluate,
finetune, export) and `searching` (search, landscape, memory_bank).

`PHASES` says once what each phase is: its config keys, its files, the
phases it computes from and how it runs. The pipeline, the workdir's
config pinning, resume and redo, and the preflight's data checks all read
it from here (`config.PHASES` is its names, for the config's own rules).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

from ekg_jax.config import ConfigError
from ekg_jax.run import workdir
from ekg_jax.run.phases.common import (Setup, build_model, class_subset,
                                       init_variables, input_shape, make_setup)
from ekg_jax.run.phases.searching import (landscape_phase, memory_bank_phase,
                                          search_phase)
from ekg_jax.run.phases.training import (evaluate_phase, export_phase,
                                         finetune_phase, pretrain_phase)


def _none(config) -> tuple[str, ...]:
  del config
  return ()


def _always(config) -> bool:
  del config
  return True


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase of the pipeline."""
  name: str
  run: Callable[[Setup], dict]
  # Its summary.json entries; the first one marks it finished.
  summary: tuple[str, ...]
  # Config keys (prefixes of flattened keys) its results depend on, beside
  # workdir.COMMON: pinned once it has produced something.
  pins: tuple[str, ...]
  # Its files and folders in the workdir: what a redo removes.
  writes: tuple[str, ...] = ()
  # Those of its files that mean it has started producing results (a rerun
  # resumes from them) before its summary entry marks it finished.
  resumes_from: tuple[str, ...] = ()
  # Earlier phases whose results it is computed from, whatever the config:
  # redoing one of them redoes this one too.
  reads: tuple[str, ...] = ()
  # Of those, the ones that must have finished before it runs with a config.
  needs: Callable[..., tuple[str, ...]] = _none
  # The splits it reads ('train', 'test'): checked before it runs.
  splits: tuple[str, ...] = ()
  # Whether a config leaves it anything to do.
  wanted: Callable[..., bool] = _always

  def finished(self, summary: Mapping) -> bool:
    return self.summary[0] in summary


def _finetune_needs(config) -> tuple[str, ...]:
  # Masks of its own ('dense', a file) need no search; no knowledge, no bank.
  return ((('search',) if config.finetune.masks == 'search' else ())
          + (('memory_bank',) if config.finetune.knowledge != 'none' else ()))


# In pipeline order. Every phase computes from the initial weights, which
# are pretrain's network when it ran (common.init_variables); fine-tuning
# starts from the search's warmed-up supernet whatever its masks.
PHASES: dict[str, Phase] = {p.name: p for p in (
    Phase('pretrain', pretrain_phase, ('pretrain',),
          pins=('pretrain.', 'augment.', 'data.test_split'),
          writes=('pretrain',),
          resumes_from=('pretrain/checkpoints', workdir.PRETRAINED),
          splits=('train', 'test'),
          # An init checkpoint gives the weights: nothing to pretrain.
          wanted=lambda config: not config.init_checkpoint),
    Phase('evaluate', evaluate_phase, ('base',),
          pins=('data.test_split',), reads=('pretrain',), splits=('test',)),
    Phase('search', search_phase, ('search',),
          pins=('warmup.', 'search.', 'data.val_per_class',
                'data.warmup_per_class', 'data.subset_seed'),
          writes=('search',),
          resumes_from=(workdir.SEARCH_STATE, workdir.WARMED_UP),
          reads=('pretrain',), splits=('train',)),
    Phase('landscape', landscape_phase, ('landscape',),
          pins=('landscape.', 'data.test_split'), writes=('landscape',),
          reads=('search',), needs=lambda config: ('search',),
          splits=('train', 'test')),
    Phase('memory_bank', memory_bank_phase, ('memory_bank',),
          pins=('memory_bank.',), writes=('memory_bank',),
          resumes_from=(workdir.MEMORY_BANK,), reads=('search',),
          needs=lambda config: ('search',), splits=('train',)),
    Phase('finetune', finetune_phase, ('finetune', 'final'),
          pins=('finetune.', 'augment.', 'data.test_split'),
          writes=('finetune',), resumes_from=('finetune/checkpoints',),
          reads=('pretrain', 'search', 'memory_bank'),
          needs=_finetune_needs, splits=('train', 'test')),
    Phase('export', export_phase, ('export',), pins=('export.',),
          writes=('export',), reads=('finetune',),
          needs=lambda config: ('finetune',)),
)}


def redone(names: Sequence[str]) -> list[Phase]:
  """The phases a redo of `names` removes, in pipeline order: those and
  every phase computed from their results, directly or not."""
  out = set(names)
  for phase in PHASES.values():  # pipeline order: what it reads comes first
    if out & set(phase.reads):
      out.add(phase.name)
  return [p for p in PHASES.values() if p.name in out]


def validate_workdir(config, names: Sequence[str], summary: Mapping) -> None:
  """Phases need what earlier phases leave in the workdir (`summary` holds
  the finished ones): refuse before any compute, naming what to run."""
  ready = {p.name for p in PHASES.values() if p.finished(summary)}
  ready |= set(names)
  for name in names:
    for before in PHASES[name].needs(config):
      if before not in ready:
        why = (f' (finetune.knowledge={config.finetune.knowledge!r} '
               'distils from it; finetune.knowledge=none needs none)'
               if before == 'memory_bank' else '')
        raise ConfigError(
            f'phase {name!r} needs a finished {before!r} phase in this '
            f'workdir{why}: run --config.phases={before} first, or add it '
            f'to config.phases')
  if PHASES['search'].finished(summary):  # skipped, so it is final
    # The history holds steps + 1 networks; the final one never teaches.
    networks = summary['search']['steps']
    if 'memory_bank' in names and config.memory_bank.num_teachers > networks:
      raise ConfigError(
          f'config.memory_bank.num_teachers='
          f'{config.memory_bank.num_teachers}: the search in this workdir '
          f'has {networks} networks that may teach (its history without the '
          f'final network); choose 1..{networks}')


__all__ = ['PHASES', 'Phase', 'Setup', 'build_model', 'class_subset',
           'init_variables', 'input_shape', 'make_setup', 'redone',
           'validate_workdir']
