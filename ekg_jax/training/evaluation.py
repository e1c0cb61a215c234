"""Test-split evaluation: running BN statistics (the usual), or each batch's
own statistics (how the reference reports a searched network before
fine-tuning)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ekg_jax.data import datasets as data_lib
from ekg_jax.supernet import model as model_lib


BN_MODES = ('running', 'batch')


def make_eval_step(model, mean: Sequence[float], std: Sequence[float],
                   bn: str = 'running') -> Callable:
  """A jitted (variables, uint8 images, labels, valid) -> correct count."""
  @jax.jit
  def step(variables, images, labels, valid, masks=None):
    x = data_lib.normalize(images, mean, std)
    if bn == 'batch':
      logits = model_lib.forward_train(model, variables, x, masks=masks)[0]
    else:
      logits = model.apply(variables, x, masks=masks, train=False)
    hits = (jnp.argmax(logits, -1) == labels) & valid
    return hits.sum()
  return step


def accuracy(model, variables: Any, split: data_lib.Split,
             mean: Sequence[float], std: Sequence[float],
             batch_size: int = 500, masks: Optional[dict] = None,
             progress: bool = True, bn: str = 'running') -> float:
  """Top-1 accuracy (in %) over a split. With running statistics the last
  batch is padded to the batch size so one compiled program serves every
  batch; with `bn='batch'` it is not (padding would move its statistics)."""
  if bn not in BN_MODES:
    raise ValueError(f'bn={bn!r}; allowed: {BN_MODES}')
  step = make_eval_step(model, mean, std, bn)
  n = len(split)
  batch_size = min(batch_size, n)  # never pad a small split to a big batch
  correct = 0
  for sl in tqdm(data_lib.batches(n, batch_size), desc='evaluate',
                 disable=not progress, leave=False):
    images, labels = split.images[sl], split.labels[sl]
    valid = np.ones(len(labels) if bn == 'batch' else batch_size, bool)
    valid[len(labels):] = False
    pad = len(valid) - len(labels)
    if pad:
      images = np.concatenate([images, np.zeros((pad, *images.shape[1:]),
                                                images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    correct += int(step(variables, images, labels, valid, masks))
  return 100.0 * correct / n
