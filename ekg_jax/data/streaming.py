"""Streaming input for image-classification datasets of any size: Grain over
`tfds.data_source` (ArrayRecord; Pillow decodes, no TensorFlow).

Train stream (`train_dataset`): epoch e visits the records in the order
`permutation(seed, e)` (the same draw as the in-memory path's
`train.epoch_order`); global batch b holds positions [b*G, (b+1)*G) of it
and process p reads its slice [b*G + p*L, b*G + (p+1)*L), L = G / processes.
Each record is decoded and augmented (random-resized crop, horizontal flip;
one or two views) with a generator seeded by (seed, epoch, position), so the
images depend neither on the process count nor on the worker count, and the
iterator's state (`get_state`, a JSON dict) resumes it exactly. Records that
do not decode are skipped and counted.

Evaluation (`LazySplit`): a split, or records of it, decoded on access in
order, the shorter side resized to size * 256/224 and centre-cropped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from concurrent import futures
from typing import Any, Optional, Sequence

import numpy as np

from ekg_jax.data.images import (CorruptImage, as_image, center_crop,
                                 train_views)

# ---------------------------------------------------------------------------
# Records.


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """Where a split's records are: what opens `tfds.data_source` again in a
  worker process (the source itself is not sent there)."""
  name: str
  split: str
  data_dir: Optional[str]

  def open(self):
    import tensorflow_datasets as tfds
    from ekg_jax.data import datasets as data_lib
    return data_lib._source(self.name, self.split, self.data_dir,
                            decoders={'image': tfds.decode.SkipDecoding()})


class _Reader:
  """Reads one record (label, image bytes); opens the source on first use,
  in whichever process that happens."""

  def __init__(self, spec: SourceSpec):
    self.spec = spec
    self._source = None

  def __getstate__(self):
    return {'spec': self.spec, '_source': None}

  def __call__(self, index: int):
    if self._source is None:
      self._source = self.spec.open()
    record = self._source[int(index)]
    return record['image'], np.int32(record['label'])


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """One process's train stream. `views`: 1 (plain training) or 2 (EKG's
  two views for fine-tuning)."""
  source: SourceSpec
  num_records: int
  global_batch: int
  image_size: int
  views: int = 1
  seed: int = 0
  epochs: int = 1
  process_index: int = 0
  process_count: int = 1
  workers: int = 0
  crop_scale: tuple = (0.08, 1.0)
  crop_ratio: tuple = (3 / 4, 4 / 3)

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  @property
  def steps_per_epoch(self) -> int:
    return self.num_records // self.global_batch


class _Positions:
  """Random access over this process's positions, epoch-major: element i
  -> (record index, epoch, position in the epoch's order). One epoch more
  than asked for is addressable, so skipped records never end a run
  early."""

  def __init__(self, spec: StreamSpec):
    self.spec = spec
    self._order = (None, None)  # (epoch, permutation), recomputed per epoch

  def __getstate__(self):
    return {'spec': self.spec, '_order': (None, None)}

  def __len__(self) -> int:
    s = self.spec
    return (s.epochs + 1) * s.steps_per_epoch * s.local_batch

  def __getitem__(self, i: int):
    s = self.spec
    epoch, within = divmod(int(i), s.steps_per_epoch * s.local_batch)
    step, slot = divmod(within, s.local_batch)
    position = step * s.global_batch + s.process_index * s.local_batch + slot
    if self._order[0] != epoch:
      self._order = (epoch, np.random.default_rng([s.seed, epoch])
                     .permutation(s.num_records))
    return int(self._order[1][position]), epoch, position


class _DecodeTrain:
  """(record index, epoch, position) -> an element with its views, or a
  marked one when the image does not decode."""

  def __init__(self, spec: StreamSpec):
    self.spec = spec
    self.read = _Reader(spec.source)

  def __call__(self, item) -> dict:
    index, epoch, position = item
    s = self.spec
    data, label = self.read(index)
    rng = np.random.default_rng([s.seed, epoch, position])
    try:
      views = train_views(as_image(data), rng, s.image_size, s.views,
                          s.crop_scale, s.crop_ratio)
      ok = True
    except CorruptImage as e:
      logging.warning('%s: record %d skipped (%s)', s.source.split, index, e)
      views, ok = None, False
    return {'image': views, 'label': label, 'index': np.int64(index),
            'ok': ok}


def train_dataset(spec: StreamSpec):
  """The process's batches, a grain.IterDataset of dicts: image [L, views,
  S, S, 3] uint8, label [L] int32, index [L] int64 (record indices, for the
  memory bank), skipped [L] int64 (records skipped so far)."""
  import grain
  ds = grain.MapDataset.source(_Positions(spec)).map(_DecodeTrain(spec))
  # Threads decode in parallel (Pillow releases the GIL); order is kept.
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=4, prefetch_buffer_size=2 * spec.local_batch))
  if spec.workers:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      # Grain's workers read its absl flags; outside an absl app (tests,
      # notebooks) nobody parsed them, and the defaults are what we want.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=spec.workers))
  # After the workers, in this process: the count is part of the iterator's
  # state, so a resumed run reports the same total.
  return _skip_corrupt()(ds).batch(spec.local_batch, drop_remainder=True)


@functools.cache
def _skip_corrupt():
  """The grain stage that drops undecodable records and counts them
  (defined on first use: importing grain takes seconds)."""
  import grain

  class SkipCorruptIterator(grain.DatasetIterator):

    def __init__(self, parent):
      super().__init__(parent)
      self._skipped = 0

    def __next__(self):
      while True:
        element = next(self._parent)
        if element['ok']:
          return {'image': element['image'], 'label': element['label'],
                  'index': element['index'],
                  'skipped': np.int64(self._skipped)}
        self._skipped += 1

    def get_state(self):
      return {'parent': self._parent.get_state(), 'skipped': self._skipped}

    def set_state(self, state):
      self._parent.set_state(state['parent'])
      self._skipped = int(state['skipped'])

  class SkipCorrupt(grain.IterDataset):

    def __iter__(self):
      return SkipCorruptIterator(self._parent.__iter__())

  return SkipCorrupt


# ---------------------------------------------------------------------------
# Evaluation splits, decoded on access.


class LazyImages:
  """`images[slice or indices]` -> uint8 [n, S, S, 3], decoded (threads:
  Pillow releases the GIL) and centre-cropped; a record that does not decode
  becomes a black image and is counted in `corrupt`."""

  def __init__(self, source: SourceSpec, size: int,
               indices: Optional[np.ndarray], count: int, threads: int = 8):
    self.source, self.size, self.indices = source, size, indices
    self.count, self.threads = count, threads
    self.corrupt: set[int] = set()
    self._read = _Reader(source)

  @property
  def shape(self) -> tuple:
    return (self.count, self.size, self.size, 3)

  def __len__(self) -> int:
    return self.count

  def _one(self, i: int) -> np.ndarray:
    index = int(self.indices[i]) if self.indices is not None else int(i)
    data, _ = self._read(index)
    try:
      return center_crop(as_image(data), self.size)
    except CorruptImage as e:
      if index not in self.corrupt:
        logging.warning('%s: record %d does not decode (%s); evaluated as a '
                        'black image', self.source.split, index, e)
      self.corrupt.add(index)
      return np.zeros((self.size, self.size, 3), np.uint8)

  def __getitem__(self, key) -> np.ndarray:
    positions = np.arange(self.count)[key]
    if positions.ndim == 0:
      return self._one(int(positions))
    if self._read._source is None:
      self._read(0 if self.indices is None else int(self.indices[0]))
    with futures.ThreadPoolExecutor(self.threads) as pool:
      images = list(pool.map(self._one, positions.tolist()))
    return np.stack(images) if images else np.zeros(
        (0, self.size, self.size, 3), np.uint8)


@dataclasses.dataclass(frozen=True)
class LazySplit:
  """A `data.Split` look-alike whose images are decoded when sliced."""
  images: LazyImages
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, indices: Sequence[int]) -> 'LazySplit':
    indices = np.asarray(indices)
    base = (indices if self.images.indices is None
            else self.images.indices[indices])
    return LazySplit(LazyImages(self.images.source, self.images.size, base,
                                len(base)), self.labels[indices])


def lazy_split(source: SourceSpec, size: int, labels: np.ndarray,
               indices: Optional[Sequence[int]] = None) -> LazySplit:
  """The split (or the records at `indices`, in that order) with `labels`
  the split's full label array."""
  if indices is not None:
    indices = np.asarray(indices, np.int64)
    return LazySplit(LazyImages(source, size, indices, len(indices)),
                     np.asarray(labels)[indices])
  return LazySplit(LazyImages(source, size, None, len(labels)),
                   np.asarray(labels))


def state_to_json(state: Any) -> Any:
  """Grain iterator states hold NumPy scalars; JSON takes Python ones."""
  if isinstance(state, dict):
    return {k: state_to_json(v) for k, v in state.items()}
  if isinstance(state, (list, tuple)):
    return [state_to_json(v) for v in state]
  if isinstance(state, np.generic):
    return state.item()
  if isinstance(state, bytes):
    return {'__bytes__': state.decode('latin-1')}
  return state


def state_from_json(state: Any) -> Any:
  if isinstance(state, dict):
    if set(state) == {'__bytes__'}:
      return state['__bytes__'].encode('latin-1')
    return {k: state_from_json(v) for k, v in state.items()}
  if isinstance(state, list):
    return [state_from_json(v) for v in state]
  return state
