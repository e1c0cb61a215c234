"""The evidence study's arms (experiments/evidence_study.py runs them): one
record per arm, whose flags, pieces and base say what it computes; the
arms in the order they run."""

from __future__ import annotations

import dataclasses

# One full epoch per arm, the reference schedule's shape (lr 0.01, x0.2 at
# 30/60/80% of the steps) compressed to it: 10 arms of 10-20 minutes each
# fit the 2-core budget; two epochs would double the study to ~7 hours.
EPOCHS = 1


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  search: tuple = ()  # search.* overrides
  knowledge: str = 'none'  # finetune.knowledge
  base: str = ''  # an arm whose search (and bank) this one reuses
  what: str = ''
  seed: int = 0  # config.seed: fine-tuning's batch order and augmentation
  views: int = 0  # finetune.views (0: two with knowledge, one without)
  # finetune.masks: '' the arm's own search; 'dense'; or a kept-channels
  # file (repository-relative) standing in for the search.
  masks: str = ''
  landscape: tuple = ()  # landscape.* overrides: a repeat of the measures

  def overrides(self) -> list[str]:
    # Flags only where they differ from the default, so the commands of the
    # arms committed before a flag existed are unchanged.
    flags = [f'--config.search.{k}={v}' for k, v in self.search]
    flags += [f'--config.seed={self.seed}'] if self.seed else []
    flags += [f'--config.finetune.views={self.views}'] if self.views else []
    flags += [f'--config.finetune.masks={self.masks}'] if self.masks else []
    flags += [f'--config.landscape.{k}={v}' for k, v in self.landscape]
    return flags + [f'--config.finetune.knowledge={self.knowledge}',
                    f'--config.finetune.epochs={EPOCHS}']

  @property
  def pieces(self) -> list[str]:
    if self.landscape:  # a repeat measures its base's searched network
      return ['landscape']
    return ((['search,landscape'] if not self.masks else [])
            + (['memory_bank'] if self.knowledge != 'none' else [])
            + ['finetune'])


def with_seeds(arm: Arm, count: int) -> list[Arm]:
  """`arm` and its seeds 1..count-1: the same network (the search is
  deterministic, so they reuse the arm's), another fine-tuning seed."""
  return [arm] + [dataclasses.replace(
      arm, name=f'{arm.name}_seed{seed}', base=arm.name, seed=seed,
      what=f'`{arm.name}` fine-tuned with seed {seed}')
      for seed in range(1, count)]


def kept_file(arm: str) -> str:
  return f'experiments/results/evidence/{arm}/kept_channels.json'


ARMS = [
    Arm('ekg', what='feasibility EKG; ablation ensemble / none'),
    Arm('ekg_ft_ensemble', knowledge='ensemble', base='ekg',
        what='ablation ensemble / ensemble (the paper\'s EKG)'),
    Arm('l1', (('criterion', 'l1'),), what='feasibility L1'),
    Arm('fpgm', (('criterion', 'fpgm'),), what='feasibility FPGM'),
    Arm('gbn', (('criterion', 'gbn'),), what='feasibility GBN'),
    Arm('teacher_none', (('teacher', 'none'),), what='ablation none / none'),
    Arm('teacher_single', (('teacher', 'single'),),
        what='ablation single / none'),
    Arm('ekg_ft_single', knowledge='single', base='ekg_ft_ensemble',
        what='ablation ensemble / single'),
    Arm('l1_uniform', (('criterion', 'l1'), ('allocation', 'uniform')),
        what='classic baseline: L1 scores, uniform allocation'),
    Arm('per_channel', (('marking', 'per_channel'),), knowledge='ensemble',
        what='marking variant: per-channel removal cost, ensemble KD'),
    # How far one epoch's accuracy moves with the seed alone, to read the
    # single-run gaps above against (the search is deterministic).
    *(Arm(f'ekg_seed{seed}', base='ekg', seed=seed,
          what=f'seed spread: `ekg` fine-tuned with seed {seed}')
      for seed in (1, 2)),
    # Issue 25, in the order they run. First: the `ekg` fine-tuning again
    # at the pinned commit (does this commit compute the committed number?).
    Arm('ekg_rerun', base='ekg',
        what='`ekg` fine-tuned again at the pinned commit (reproducibility)'),
    # The two-view control: the views knowledge comes with, no knowledge.
    Arm('ekg_2view', base='ekg', views=2,
        what='control: the EKG network, two jittered views, no knowledge'),
    # The unpruned official network, with the same recipe and views.
    Arm('dense', masks='dense', views=2,
        what='dense baseline: the official network, two views, no '
        'knowledge'),
]
# The two comparisons that decide the paper's claims get 5 seeds (EKG vs
# FPGM without knowledge; ensemble knowledge vs the two-view control), every
# other fine-tuned arm 3 (seed 0 is the arm itself; `ekg` has 1, 2 above).
_FIRST = {a.name: a for a in ARMS}
ARMS += [seeded for name in ('ekg_2view', 'ekg_ft_ensemble', 'fpgm')
         for seeded in with_seeds(_FIRST[name], 5)[1:]]
ARMS += [Arm(f'ekg_seed{seed}', base='ekg', seed=seed,
             what=f'seed spread: `ekg` fine-tuned with seed {seed}')
         for seed in (3, 4)]
ARMS += [seeded for name in ('dense', 'l1', 'gbn', 'teacher_none',
                             'teacher_single', 'ekg_ft_single', 'l1_uniform',
                             'per_channel')
         for seeded in with_seeds(_FIRST[name], 3)[1:]]
# What a user would pick instead: Torch-Pruning 1.6 from the same official
# weights to the same FLOPs rate; their kept channels carried over as a file
# (experiments/torch_pruning_arms.py writes it); fine-tuned as `dense`.
for _name, _importance in (('tp_magnitude', 'group magnitude'),
                           ('tp_taylor', 'Taylor')):
  ARMS += with_seeds(Arm(_name, masks=kept_file(_name), views=2,
                         what=f'Torch-Pruning MetaPruner, global, '
                         f'{_importance} importance; two views, no '
                         'knowledge'), 3)
# The landscape's error bars (issue 25, item 4): for each network of the
# feasibility table and the search-teacher ablation, Lanczos run until
# lambda_min settles, from three start vectors on the search's validation
# images and from the first on two disjoint subsets the search never saw.
LANCZOS = (('lanczos_iterations', 150), ('lanczos_tolerance', 0.001))
REPEATS = {'converged': (), 'start1': (('seed', 1),),
           'start2': (('seed', 2),), 'subset1': (('subset', 1),),
           'subset2': (('subset', 2),)}
ARMS += [Arm(f'{net}_landscape_{name}', base=net,
             landscape=LANCZOS + extra,
             what=f'landscape of `{net}`: {name}')
         for net in ('ekg', 'fpgm', 'gbn', 'l1', 'teacher_none',
                     'teacher_single')
         for name, extra in REPEATS.items()]
BY_NAME = {a.name: a for a in ARMS}
