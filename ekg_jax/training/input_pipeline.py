"""The input pipelines, one registry entry each, chosen by
`config.data.pipeline`:

- `memory` (the default; CIFAR): splits decoded once into uint8 arrays, the
  train split on the device, augmentation (pad + crop, flip, colour jitter)
  inside `jit` (`data`, `feeds.MemoryFeed`).
- `grain` (ImageNet or any TFDS image-classification dataset of any size):
  records streamed by Grain with a global shuffle per epoch, per-process
  sharding, decoding workers, random-resized crop + flip on the host,
  colour jitter and normalisation on the device; evaluation splits decoded
  when read, resized and centre-cropped (`streaming`, `feeds.StreamFeed`).

The phases ask a pipeline for `split(config, name, indices)` (records in
order, as evaluation, the memory bank, the warm-up and the search's
validation read them) and `train(config)` (what the trainer's feed reads).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ekg_jax.files import cache as cache_lib
from ekg_jax.data import datasets as data_lib
from ekg_jax.training import feeds
from ekg_jax.data import streaming


@dataclasses.dataclass(frozen=True)
class Pipeline:
  split: Callable[..., Any]  # (config, split, indices=None) -> Split-like
  train: Callable[[Any], Any]  # config -> the train data a feed reads
  feed: type  # feeds.MemoryFeed | feeds.StreamFeed
  # Whether images are resized to config.data.image_size (any size), or
  # used at the dataset's own size.
  resizes: bool


def labels(config, split: str) -> np.ndarray:
  """A split's labels without its images, kept in the run cache."""
  d = config.data
  return data_lib.load_labels(d.name, split, d.data_dir,
                              cache_lib.resolve(config.cache_dir))


def _memory_split(config, split: str,
                  indices: Optional[Sequence[int]] = None):
  d = config.data
  if indices is not None:
    return data_lib.load_split(d.name, split, d.data_dir, indices)
  return data_lib.load_split(d.name, split, d.data_dir,
                             cache_dir=cache_lib.resolve(config.cache_dir))


def _memory_train(config):
  return _memory_split(config, config.data.train_split)


@dataclasses.dataclass(frozen=True)
class TrainRecords:
  """A train split as the stream reads it: where, and how many records."""
  source: streaming.SourceSpec
  count: int

  def __len__(self) -> int:
    return self.count


def _source(config, split: str) -> streaming.SourceSpec:
  d = config.data
  return streaming.SourceSpec(d.name, split, data_lib.resolve_data_dir(
      d.data_dir))


def _grain_split(config, split: str,
                 indices: Optional[Sequence[int]] = None):
  return streaming.lazy_split(_source(config, split), config.data.image_size,
                              labels(config, split), indices)


def _grain_train(config):
  d = config.data
  return TrainRecords(_source(config, d.train_split),
                      data_lib.split_size(d.name, d.train_split, d.data_dir))


PIPELINES: dict[str, Pipeline] = {
    'memory': Pipeline(_memory_split, _memory_train, feeds.MemoryFeed,
                       resizes=False),
    'grain': Pipeline(_grain_split, _grain_train, feeds.StreamFeed,
                      resizes=True),
}


def of(config) -> Pipeline:
  return PIPELINES[config.data.pipeline]
