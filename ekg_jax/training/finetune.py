"""`ekg_jax.finetune`: the trainer on your own arrays (section 8), the
library's way in to what the `finetune` phase does with a dataset."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any, Optional, Sequence

import numpy as np

from ekg_jax import rules
from ekg_jax.data import datasets as data_lib
from ekg_jax.knowledge import memory_bank as bank_lib
from ekg_jax.supernet import protocol
from ekg_jax.training import loop
from ekg_jax.training.options import InputOptions, TrainOptions


def finetune(model, variables: Any, images: np.ndarray, labels: np.ndarray,
             bank=None, *, test: Optional[Sequence[np.ndarray]] = None,
             options: Optional[TrainOptions] = None,
             inputs: Optional[InputOptions] = None,
             folder: Optional[str] = None, progress: bool = False,
             **overrides) -> loop.TrainResult:
  """Trains `model` (typically `ekg_jax.slim`'s network) on your arrays,
  with the memory bank's ensemble knowledge unless `knowledge='none'`.

  Args:
    model, variables: the network (a `Supernet`, e.g. a slimmed one) and its
      `params` and `batch_stats`.
    images: [N, H, W, C] train images on the 0-255 scale (uint8); labels
      [N] class indices. Augmented on the device as `inputs` says (pad +
      crop, flip, colour jitter), then normalised by its mean and std.
    bank: the teachers' logits on these images in this order: a
      `MemoryBank` (`ekg_jax.build_memory_bank`), [N, K, classes] logits
      (teacher 0 the best), or None with `knowledge='none'`.
    test: (images, labels) scored after every epoch (None: not scored).
    options: the recipe (`TrainOptions`); `overrides` set its fields by
      name (`epochs=2, batch_size=64, knowledge='single'`).
    inputs: normalisation and augmentation (`InputOptions`).
    folder: checkpoints and metrics, so a rerun resumes; None: a
      temporary folder, removed afterwards.
  Returns:
    `TrainResult`: the trained `variables` and the per-epoch `history`.
  """
  options = dataclasses.replace(options or TrainOptions(), **overrides)
  inputs = inputs or InputOptions()
  protocol.check_model(model)
  train = _split(images, labels, 'images', model.num_classes)
  protocol.check_variables(model, variables, train.images.shape[1:])
  logits = bank.logits if isinstance(bank, bank_lib.MemoryBank) else bank
  if isinstance(bank, bank_lib.MemoryBank) and not bank.complete:
    raise ValueError(f'bank: {bank.done} of {len(bank.logits)} images '
                     'computed; finish building it first')
  if options.knowledge == 'none':
    logits = None
  elif logits is None:
    raise rules.ConfigError(
        f"knowledge={options.knowledge!r} needs the teachers' logits: pass "
        "bank=ekg_jax.build_memory_bank(...), or knowledge='none'")
  elif len(logits) != len(train):
    raise ValueError(f'bank: logits of {len(logits)} images for '
                     f'{len(train)} train images')
  test_split = None if test is None else _split(*test, 'test',
                                                  model.num_classes)
  with tempfile.TemporaryDirectory(prefix='ekg_finetune_') as scratch:
    return loop.train(model, variables, train, logits, test_split, options,
                      folder or scratch, inputs=inputs, progress=progress)


def _split(images, labels, name: str, num_classes: int) -> data_lib.Split:
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or len(images) != len(labels):
    raise ValueError(f'{name}: [N, H, W, C] images and [N] labels, not '
                     f'{images.shape} and {labels.shape}')
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{name}: labels must be in [0, {num_classes}); got '
                     f'{labels.min()}..{labels.max()}')
  return data_lib.Split(images, labels.astype(np.int32))
