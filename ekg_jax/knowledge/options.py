"""The memory bank's options: one validated record that owns its rules,
the single source of the defaults `config.py`'s `memory_bank` section and
`ekg_jax.build_memory_bank` use."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ekg_jax import rules

# How the bank may store logits (bfloat16, the default: 2 bytes a value).
STORAGE_DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class BankOptions:
  """The bank's options (section 6)."""
  num_teachers: int = 5  # K, at evenly spaced validation losses
  batch_size: int = 256  # teachers' forward passes, split order
  dtype: str = 'bfloat16'  # storage of the logits (2 bytes each)
  # Keep only the k largest logits per image and teacher, with their class
  # indices and one tail logit for the rest (ekg_jax/knowledge/topk.py): 0
  # keeps all (dense); ~20 makes an ImageNet bank fit (0.5 GB, not 12.8 GB).
  # The tail is computed at finetune.temperature, which then cannot change.
  top_k: int = 0
  checkpoint_every_batches: int = 20  # a killed bank resumes

  def __post_init__(self):
    rules.check_record(self, RULES)

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> 'BankOptions':
    return cls(**{f.name: section[f.name] for f in dataclasses.fields(cls)})


# One rule per option; the whole-config check uses them as
# `memory_bank.<name>` (and adds the dataset's class count for top_k).
RULES: dict[str, rules.Rule] = {
    'num_teachers': rules.integer(1),
    'batch_size': rules.integer(1),
    'dtype': rules.choice(STORAGE_DTYPES),
    'top_k': lambda v: None if rules.is_int(v) and v >= 0 else (
        'must be an integer >= 0, the logits kept per image and teacher '
        '(0 keeps all)'),
    'checkpoint_every_batches': rules.integer(1),
}


def defaults() -> dict:
  """The keys of a config's `memory_bank` section."""
  return {f.name: f.default for f in dataclasses.fields(BankOptions)}
