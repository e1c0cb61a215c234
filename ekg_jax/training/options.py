"""The trainer's options: validated records that own their rules.

- `TrainOptions`: a training recipe (the `pretrain` and `finetune` config
  sections; `ekg_jax.finetune`'s keywords): optimizer, schedule, batch,
  program, and the knowledge to distil;
- `InputOptions`: how images reach the step (`config.data` and
  `config.augment`): normalisation, augmentation, the stream's settings.

`config.py` builds its sections from these defaults and `run.validate`
checks its keys with these rules; the run converts its config into records
once (`from_config`), and the trainer and the feeds take only records.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ekg_jax import rules
from ekg_jax.supernet.model import COMPUTE_DTYPES
from ekg_jax.training import optimizers

KNOWLEDGE = ('ensemble', 'single', 'none')
PROGRAMS = ('auto', 'scan', 'loop')
# The keys every training config section has (`config.training_recipe`);
# the rest of `TrainOptions` is fine-tuning's.
RECIPE = ('epochs', 'batch_size', 'learning_rate', 'lr_decay_epochs_fraction',
          'lr_decay_factor', 'momentum', 'weight_decay', 'optimizer',
          'adam_betas', 'lr_schedule', 'lr_warmup_fraction',
          'label_smoothing', 'clip_grad_norm', 'checkpoint_every_steps',
          'sync_batch_norm', 'dtype', 'program')


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """A training recipe; the defaults are section 8's (the reference's
  fine-tuning on CIFAR), `config.training_recipe` overrides some."""
  epochs: int = 100
  batch_size: int = 128  # global: divides over every device of every process
  learning_rate: float = 0.01  # before the decays
  # The rate is multiplied by lr_decay_factor at each listed fraction of the
  # run's steps (for 100 epochs: at those epochs, as the reference).
  lr_decay_epochs_fraction: tuple = (0.3, 0.6, 0.8)
  lr_decay_factor: float = 0.2
  momentum: float = 0.9  # Nesterov, on lr-scaled gradients as Keras' SGD
  weight_decay: float = 5e-4  # added to the gradient (adamw: decoupled)
  # 'sgd_nesterov' (the reference's: momentum, weight decay added to every
  # gradient) or 'adamw' (adam_betas; decoupled weight decay, lr-scaled, on
  # arrays of 2+ dimensions only; momentum unused). The registry:
  # ekg_jax/training/optimizers.py.
  optimizer: str = 'sgd_nesterov'
  adam_betas: tuple = (0.9, 0.999)  # adamw's (b1, b2)
  # 'step' (the lr_decay_* points above) or 'cosine' (half a cosine to 0
  # after the warm-up; lr_decay_* unused).
  lr_schedule: str = 'step'
  # A linear warm-up from 0 to learning_rate over this fraction of the
  # run's steps, before either schedule (0: none).
  lr_warmup_fraction: float = 0.0
  label_smoothing: float = 0.0  # of the CE term's one-hot labels (0: none)
  clip_grad_norm: float = 0.0  # clip the gradients' global norm (0: none)
  checkpoint_every_steps: int = 500  # and at every epoch end
  # Data parallelism over every device: BN statistics per device (False)
  # or averaged over all devices (True, cross-device BN).
  sync_batch_norm: bool = False
  # Compute dtype; parameters and optimizer state stay float32. bfloat16
  # is for GPU/TPU (XLA:CPU emulates it slowly).
  dtype: str = 'float32'
  # How a stretch of steps runs: 'scan' (one compiled lax.scan), 'loop'
  # (one compiled step dispatched per batch, data on device), 'auto' (loop
  # on CPU, where XLA runs convolutions in loops ~30x slower; scan elsewhere).
  program: str = 'auto'
  # What the student learns from besides the labels: the filtered mean of
  # the bank's teachers ('ensemble'), the best teacher ('single'), none.
  knowledge: str = 'ensemble'
  views: int = 0  # augmented views per image; 0: 2 with knowledge, else 1
  temperature: float = 4.0  # of the distillation KL
  seed: int = 0  # the data order and the augmentation

  def __post_init__(self):
    rules.check_record(self, RULES)

  @classmethod
  def from_config(cls, section: Mapping[str, Any], seed: int = 0
                  ) -> 'TrainOptions':
    """A config's training section (`pretrain` has no knowledge keys: it
    trains on the labels alone)."""
    return cls(**{k: section[k] for k in RECIPE},
               knowledge=section.get('knowledge', 'none'),
               temperature=section.get('temperature', 1.0),
               views=section.get('views', 0), seed=seed)

  @property
  def num_views(self) -> int:
    """As the reference: two views with knowledge, one without."""
    if self.views:
      return self.views
    return 1 if self.knowledge == 'none' else 2


def recipe_defaults() -> dict:
  """The keys a config's training section starts from."""
  return {f.name: f.default for f in dataclasses.fields(TrainOptions)
          if f.name in RECIPE}


FRACTION = rules.number(0, 1)
UNIT_OPEN = rules.number(0, 1, high_open=True)

# One rule per option; the whole-config check uses them as
# `pretrain.<name>` and `finetune.<name>`.
RULES: dict[str, rules.Rule] = {
    'epochs': rules.integer(0),
    'batch_size': rules.integer(1),
    'learning_rate': rules.number(0, low_open=True),
    'lr_decay_epochs_fraction': rules.numbers(None, FRACTION),
    'lr_decay_factor': rules.number(0, 1, low_open=True),
    'momentum': UNIT_OPEN,
    'weight_decay': rules.number(0),
    'optimizer': rules.choice(optimizers.OPTIMIZERS),
    'adam_betas': rules.numbers(2, UNIT_OPEN),
    'lr_schedule': rules.choice(optimizers.SCHEDULES),
    'lr_warmup_fraction': UNIT_OPEN,
    'label_smoothing': UNIT_OPEN,
    'clip_grad_norm': rules.number(0),
    'checkpoint_every_steps': rules.integer(1),
    'sync_batch_norm': rules.boolean,
    'dtype': rules.choice(COMPUTE_DTYPES),
    'program': rules.choice(PROGRAMS),
    'knowledge': rules.choice(KNOWLEDGE),
    'views': lambda v: None if v in (0, 1, 2) and rules.is_int(v) else (
        'allowed: 0 (two views with knowledge, one without), 1, 2'),
    'temperature': rules.number(0, low_open=True),
    'seed': rules.integer(0),
}


@dataclasses.dataclass(frozen=True)
class InputOptions:
  """How the trainer's images are normalised, augmented and fed; the
  defaults are `config.data`'s and `config.augment`'s."""
  mean: tuple = (113.9, 123.0, 125.3)  # per channel, R, G, B, 0-255 scale
  std: tuple = (66.7, 62.1, 63.0)
  # Keyword arguments of `data.augment_each` (a dict, kept as sorted
  # items): section 8's, as `config.augment` has them.
  augment: tuple = (('brightness', 0.2), ('color_jitter', True),
                    ('contrast', (0.8, 1.2)), ('pad', 4),
                    ('saturation', (0.8, 1.2)))
  eval_batch_size: int = 500  # test-split evaluation after each epoch
  # The streamed pipeline's ('grain'; `feeds.StreamFeed`).
  image_size: int = 32
  decode_workers: int = 0
  prefetch: int = 2
  crop_scale: tuple = (0.08, 1.0)
  crop_ratio: tuple = (3 / 4, 4 / 3)

  def __post_init__(self):
    if isinstance(self.augment, Mapping):  # frozen: set once, here
      object.__setattr__(self, 'augment', tuple(sorted(self.augment.items())))
    rules.check_record(self, INPUT_RULES)

  @classmethod
  def from_config(cls, config) -> 'InputOptions':
    """From the whole config's `data` and `augment` sections."""
    d = config.data
    return cls(tuple(d.mean), tuple(d.std),
               tuple(sorted(dict(config.augment).items())),
               d.eval_batch_size, d.image_size, d.decode_workers, d.prefetch,
               tuple(d.crop_scale), tuple(d.crop_ratio))


INPUT_RULES: dict[str, rules.Rule] = {
    'mean': rules.numbers(3, rules.number(0, 255)),
    'std': rules.numbers(3, rules.number(0, low_open=True)),
    'eval_batch_size': rules.integer(1),
    'image_size': rules.integer(1),
    'decode_workers': rules.integer(0),
    'prefetch': rules.integer(1),
    'crop_scale': rules.numbers(2, rules.number(0, 1, low_open=True),
                                ordered=True),
    'crop_ratio': rules.numbers(2, rules.number(0, low_open=True),
                                ordered=True),
}
