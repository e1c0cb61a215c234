"""Where the trainer's steps get their batches (`loop.train` runs one
feed; the run chooses it by `config.data.pipeline` through
`input_pipeline.PIPELINES`). A feed takes the option records
(`training.options`), never a config.

Both run a stretch of steps inside one epoch, `run(state, step, n, key,
on_steps) -> (state, metrics with a leading n)`, and carry a JSON state that
the trainer saves in its checkpoint:
- `MemoryFeed`: the train split, its labels and the memory bank live on the
  device; batches are gathered there by index (`train.StepRunner`).
- `StreamFeed`: process-local batches from Grain (`streaming`), put on the
  devices with the batch sharding `prefetch` steps ahead; the bank's rows
  are looked up on the host by record index.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ekg_jax.runtime import backend
from ekg_jax import rules
from ekg_jax.runtime import distributed
from ekg_jax.data import streaming
from ekg_jax.files.checkpoint import CheckpointError
from ekg_jax.training.options import InputOptions, TrainOptions
from ekg_jax.training.steps import (DATA_AXIS, StepRunner, TrainData,
                                    epoch_order, steps_in_flight,
                                    steps_per_epoch)


class MemoryFeed:
  """The in-memory path (CIFAR): unchanged numbers, no state to save (an
  epoch's order is a function of (seed, epoch))."""

  def __init__(self, train, bank_logits: Optional[np.ndarray],
               step: Callable, mesh: Mesh, options: TrainOptions,
               inputs: InputOptions, name: str = 'finetune'):
    del inputs  # augmentation happens in the step
    c = options
    self._batch, self._seed, self._size = c.batch_size, c.seed, len(train)
    self.steps_per_epoch = steps_per_epoch(len(train), c.batch_size)
    self._runner = StepRunner(step, c.program)
    # Every process holds the whole train set (batches are gathered on
    # device by index) and supplies its own rows of each batch's indices.
    self._mesh, self._key = mesh, f'{name}.batch_size'
    self._rows = distributed.process_rows(mesh, c.batch_size, self._key)
    put = lambda x: distributed.replicate(mesh, x)
    bank = None if bank_logits is None else put(bank_logits)
    self._data = TrainData(put(train.images), put(train.labels), bank)
    self.stats: dict = {}

  @property
  def compile_seconds(self) -> float:
    return self._runner.compile_seconds

  def run(self, state, step: int, n: int, key, on_steps):
    epoch, within = divmod(step, self.steps_per_epoch)
    indices = distributed.global_batch(
        self._mesh, epoch_order(self._seed, epoch, self._size,
                                self.steps_per_epoch, self._batch)
        [within:within + n, self._rows], self._batch, axis=1, key=self._key)
    return self._runner(state, self._data, indices, key, on_steps)

  def get_state(self) -> Optional[dict]:
    return None

  def set_state(self, state: Optional[dict]) -> None:
    del state

  def close(self) -> None:
    pass


def stream_spec(train, options: TrainOptions, inputs: InputOptions,
                name: str = 'finetune') -> streaming.StreamSpec:
  """This process's stream for a training phase; the global batch must
  split evenly over the processes (and, checked by the trainer, over every
  device)."""
  c, d = options, inputs
  count = jax.process_count()
  rules.check_divides(c.batch_size, count, f'{name}.batch_size',
                      over='processes')
  return streaming.StreamSpec(
      source=train.source, num_records=len(train), global_batch=c.batch_size,
      image_size=d.image_size, views=c.num_views,
      seed=c.seed, epochs=c.epochs, process_index=jax.process_index(),
      process_count=count, workers=d.decode_workers,
      crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio))


class StreamFeed:
  """Streamed batches: image [B, views, S, S, 3] uint8 (cropped and flipped
  on the host; `distill.augmented_views` jitters and normalises on device),
  labels, and the bank's rows of those records."""

  def __init__(self, train, bank_logits: Optional[np.ndarray],
               step: Callable, mesh: Mesh, options: TrainOptions,
               inputs: InputOptions, name: str = 'finetune'):
    self.spec = stream_spec(train, options, inputs, name)
    self.steps_per_epoch = self.spec.steps_per_epoch
    self._dataset = streaming.train_dataset(self.spec)
    self._bank = bank_logits
    self._prefetch = inputs.prefetch
    self._sharding = NamedSharding(mesh, P(DATA_AXIS))
    self._iter = None
    self._queue: collections.deque = collections.deque()
    self._consumed: Optional[dict] = None  # iterator state after the last
    self.compile_seconds = 0.0            # batch a step has taken

    def body(state, images, labels, bank, key):
      keys = jax.random.split(jax.random.fold_in(key, state.step),
                              images.shape[0])
      return step(state, keys, images, labels, bank)

    donate = (0,) if backend.policy().donate_train_state else ()
    self._fn = jax.jit(body, donate_argnums=donate)
    self._compiled = None

  @property
  def stats(self) -> dict:
    skipped = (self._consumed or {}).get('skipped', 0)
    return {'skipped_records': int(skipped)}

  def get_state(self) -> Optional[dict]:
    return self._consumed

  def set_state(self, state: Optional[dict]) -> None:
    if self._iter is not None:
      raise RuntimeError('set_state after the stream started')
    self._consumed = state

  def _global(self, local: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self._sharding, local)

  def _fill(self) -> None:
    if self._iter is None:
      self._iter = iter(self._dataset)
      if self._consumed is not None:
        self._iter.set_state(streaming.state_from_json(self._consumed))
    while len(self._queue) < self._prefetch:
      try:
        batch = next(self._iter)
      except StopIteration:
        raise RuntimeError(
            f'{self.spec.source.name}: the stream ran out (more than an '
            'epoch of records skipped as undecodable?)') from None
      bank = None
      if self._bank is not None:
        bank = self._global(np.asarray(self._bank[batch['index']]))
      arrays = (self._global(batch['image']), self._global(batch['label']),
                bank)  # device_put is asynchronous: transfers overlap steps
      self._queue.append((arrays, streaming.state_to_json(
          self._iter.get_state())))

  def _next(self):
    self._fill()
    arrays, self._consumed = self._queue.popleft()
    return arrays

  def run(self, state, step: int, n: int, key, on_steps):
    if self._iter is None and self._consumed is None and step:
      # Restarting the stream would silently train on other batches.
      raise CheckpointError(
          f'resuming at step {step} from a checkpoint without the input '
          "stream's position (written by another data.pipeline?); remove "
          'its checkpoints folder to start this phase again')
    def one_step(state, i):
      del i  # the stream decides the batch
      images, labels, bank = self._next()
      if self._compiled is None:
        start = time.time()
        self._compiled = self._fn.lower(state, images, labels, bank,
                                        key).compile()
        self.compile_seconds += time.time() - start
      return self._compiled(state, images, labels, bank, key)
    return steps_in_flight(state, n, one_step, on_steps)

  def close(self) -> None:
    self._queue.clear()
    if self._iter is not None and hasattr(self._iter, 'close'):
      self._iter.close()  # stops the decoding workers
    self._iter = None

