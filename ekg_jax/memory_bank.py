"""The memory bank of teachers (ekg_algorithm.md section 6).

K interim sub-networks of the search, chosen to spread their validation
losses evenly between the best and the worst, become the fine-tuning
teachers. Their logits on every train image are computed once, by ONE jitted
function that `vmap`s the supernet over the K teachers' stacked masks, and
stored as `logits[N, K, classes]` (image-major, so a batch of images gathers
one contiguous block; the paper writes M[N, classes, K]).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ekg_jax import checkpoint
from ekg_jax import data as data_lib
from ekg_jax import gates as gates_lib

# How the bank may store logits (bfloat16, the default: 2 bytes a value).
STORAGE_DTYPES = ('float32', 'bfloat16', 'float16')


def select_teachers(val_losses: Sequence[float], num_teachers: int
                    ) -> list[int]:
  """History indices of the teachers, teacher 0 the lowest loss.

  Targets min + j * (max - min) / K for j = 0..K-1; each takes the nearest
  entry not picked yet (ties: the earlier entry).
  """
  losses = np.asarray(val_losses, np.float64)
  if not 1 <= num_teachers <= len(losses):
    raise ValueError(f'num_teachers={num_teachers}: the search history has '
                     f'{len(losses)} networks that may teach (the final one '
                     f'never does); choose 1..{len(losses)}')
  low, high = losses.min(), losses.max()
  chosen: list[int] = []
  for j in range(num_teachers):
    target = low + j * (high - low) / num_teachers
    distance = np.abs(losses - target)
    distance[chosen] = np.inf
    chosen.append(int(np.argmin(distance)))
  return chosen


def teacher_candidates(history: Sequence[Mapping]) -> list[float]:
  """Validation losses of the networks that may teach: every history entry
  but the last. The reference drops the final (searched) network
  (`width_history.pop()`), so the student is never its own teacher."""
  return [e['val_loss'] for e in history[:-1]]


def teacher_masks(history: Sequence[Mapping], ranks_history: Sequence[Mapping],
                  indices: Sequence[int]) -> dict[str, jax.Array]:
  """Masks of the chosen history entries, stacked: gate -> [K, channels]."""
  gates = list(ranks_history[0])
  kept = {g: np.asarray([history[i]['kept'][g] for i in indices], np.int32)
          for g in gates}
  ranks = {g: np.stack([ranks_history[i][g] for i in indices])
           for g in gates}
  return gates_lib.masks_from_kept(kept, ranks)


def make_teacher_logits(model, mean, std) -> Callable:
  """jit((variables, uint8 images [B,...], stacked masks) -> [B, K, classes]).

  BN uses the batch's statistics (the running ones are not updated), as the
  teachers ran during the search.
  """
  def one(variables, x, masks):
    return model.apply(variables, x, masks=masks, train=True,
                       mutable=['batch_stats'])[0]

  @jax.jit
  def logits(variables, images, masks):
    x = data_lib.normalize(images, mean, std)
    out = jax.vmap(one, in_axes=(None, None, 0))(variables, x, masks)
    return jnp.swapaxes(out, 0, 1)
  return logits


@dataclasses.dataclass
class MemoryBank:
  """Teacher logits over a split, plus which history entries they are."""
  logits: np.ndarray  # [N, K, classes], `dtype`
  teachers: list[int]  # history indices; teacher 0 has the lowest loss
  teacher_val_loss: list[float]
  done: int  # images computed so far (== N when complete)
  seconds: float = 0.0  # compute time so far, over resumed runs

  @property
  def complete(self) -> bool:
    return self.done == len(self.logits)

  def save(self, path: str) -> None:
    """Atomic, the previous file kept (`checkpoint.write_npz_atomic`)."""
    # float16/bfloat16 are stored as their raw 16 bits (npz has no bf16).
    logits = (self.logits.view(np.uint16) if self.logits.dtype.itemsize == 2
              else self.logits)
    checkpoint.write_npz_atomic(
        path, logits=logits, dtype=np.asarray(str(self.logits.dtype)),
        meta=np.asarray(json.dumps(
            {'teachers': self.teachers,
             'teacher_val_loss': self.teacher_val_loss,
             'done': self.done, 'seconds': self.seconds})))

  @classmethod
  def load(cls, path: str) -> 'MemoryBank':
    """The newest readable bank (the previous one if it is damaged)."""
    return checkpoint.read_npz_with_fallback(path, cls._read)

  @classmethod
  def _read(cls, path: str) -> 'MemoryBank':
    with np.load(path) as z:
      dtype = jnp.dtype(str(z['dtype']))
      logits = z['logits'].view(dtype)
      meta = json.loads(str(z['meta']))
    return cls(logits, meta['teachers'], meta['teacher_val_loss'],
               meta['done'], meta['seconds'])


def build(model, variables: Any, split: data_lib.Split,
          masks: Mapping[str, jax.Array], batch_size: int, mean, std,
          bank: MemoryBank,
          on_checkpoint: Optional[Callable[[MemoryBank], None]] = None,
          checkpoint_every: int = 20, progress: bool = True) -> MemoryBank:
  """Fills `bank.logits` (in its dtype) from `bank.done` on, batch by batch,
  in split order.

  `on_checkpoint` sees the bank every `checkpoint_every` batches (a killed
  run resumes from there). Batches start at multiples of `batch_size`, so a
  resumed run sees the same batches (and BN statistics) as an uninterrupted
  one.
  """
  logits_fn = make_teacher_logits(model, mean, std)
  slices = data_lib.batches(len(split), batch_size)
  todo = [s for s in slices if s.start >= bank.done]
  start = time.time()
  for i, sl in enumerate(tqdm(todo, desc='memory bank', disable=not progress,
                              leave=False)):
    out = logits_fn(variables, split.images[sl], masks)
    bank.logits[sl] = np.asarray(out.astype(bank.logits.dtype))
    bank.done = sl.stop
    bank.seconds += time.time() - start
    start = time.time()
    if on_checkpoint and ((i + 1) % checkpoint_every == 0 or bank.complete):
      on_checkpoint(bank)
  return bank
