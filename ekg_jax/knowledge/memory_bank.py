"""The memory bank of teachers (ekg_algorithm.md section 6).

K interim sub-networks of the search, chosen to spread their validation
losses evenly between the best and the worst, become the fine-tuning
teachers. Their logits on every train image are computed once, by ONE jitted
function that `vmap`s the supernet over the K teachers' stacked masks, and
stored as `logits[N, K, classes]` (image-major, so a batch of images gathers
one contiguous block; the paper writes M[N, classes, K]), or, with
`memory_bank.top_k`, as the k largest logits per teacher
(`ekg_jax/knowledge/topk.py`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from ekg_jax.files import checkpoint
from ekg_jax.data import datasets as data_lib
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.supernet import model as model_lib
from ekg_jax.supernet import protocol
from ekg_jax.knowledge import topk
from ekg_jax.knowledge.options import (  # noqa: F401  (STORAGE_DTYPES too)
    STORAGE_DTYPES, BankOptions)


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
    return model_lib.forward_train(model, variables, x, masks=masks)[0]

  @jax.jit
  def logits(variables, images, masks):
    x = data_lib.normalize(images, mean, std)
    out = jax.vmap(one, in_axes=(None, None, 0))(variables, x, masks)
    return jnp.swapaxes(out, 0, 1)
  return logits


# Bank files: format 1 (no 'format' entry) holds dense `logits`; format 2
# the top-k form (`topk.TopKLogits`). Dense banks are still written as
# format 1, with the same entries and arrays as before, so older code reads
# them.
TOP_K_FORMAT = 2


class BankFileError(ValueError):
  """A bank file this toolkit cannot read (another program's, or damaged)."""


_compress = jax.jit(topk.compress, static_argnums=(1, 2))


@dataclasses.dataclass
class MemoryBank:
  """Teacher logits over a split, plus which history entries they are."""
  # [N, K, classes] in the bank's dtype, or their top-k form.
  logits: Union[np.ndarray, topk.TopKLogits]
  teachers: list[int]  # history indices; teacher 0 has the lowest loss
  teacher_val_loss: list[float]
  done: int  # images computed so far (== N when complete)
  seconds: float = 0.0  # compute time so far, over resumed runs

  @property
  def complete(self) -> bool:
    return self.done == len(self.logits)

  @property
  def top_k(self) -> int:
    """Logits kept per image and teacher; 0 for a dense bank."""
    return self.logits.k if isinstance(self.logits, topk.TopKLogits) else 0

  @property
  def nbytes(self) -> int:
    return int(self.logits.nbytes)

  def write(self, sl: slice, logits: jax.Array) -> None:
    """Stores [B, K, classes] float logits of images `sl`."""
    bank = self.logits
    if not isinstance(bank, topk.TopKLogits):
      bank[sl] = np.asarray(logits.astype(bank.dtype))
      return
    values, indices, tail = _compress(logits, bank.k, bank.temperature)
    bank.values[sl] = np.asarray(values.astype(bank.values.dtype))
    bank.indices[sl] = np.asarray(indices.astype(bank.indices.dtype))
    bank.tail[sl] = np.asarray(tail.astype(bank.tail.dtype))

  def save(self, path: str) -> None:
    """Atomic, the previous file kept (`checkpoint.write_npz_atomic`)."""
    meta = {'teachers': self.teachers,
            'teacher_val_loss': self.teacher_val_loss,
            'done': self.done, 'seconds': self.seconds}
    bank = self.logits
    if isinstance(bank, topk.TopKLogits):
      arrays = dict(format=np.asarray(TOP_K_FORMAT), values=_raw(bank.values),
                    indices=bank.indices, tail=_raw(bank.tail),
                    dtype=np.asarray(str(bank.values.dtype)))
      meta.update(classes=bank.num_classes, temperature=bank.temperature)
    else:
      arrays = dict(logits=_raw(bank), dtype=np.asarray(str(bank.dtype)))
    checkpoint.write_npz_atomic(path, **arrays,
                                meta=np.asarray(json.dumps(meta)))

  @classmethod
  def load(cls, path: str) -> 'MemoryBank':
    """The newest readable bank (the previous one if it is damaged)."""
    return checkpoint.read_npz_with_fallback(path, cls._read)

  @classmethod
  def _read(cls, path: str) -> 'MemoryBank':
    try:
      with np.load(path) as z:
        version = int(z['format']) if 'format' in z.files else 1
        if version not in (1, TOP_K_FORMAT):
          raise BankFileError(f'bank format {version}; this toolkit reads '
                              f'1 (dense) and {TOP_K_FORMAT} (top-k)')
        dtype = _storage_dtype(str(z['dtype']))
        meta = json.loads(str(z['meta']))
        if version == 1:
          logits = _cooked(z['logits'], dtype)
        else:
          logits = topk.TopKLogits(
              _cooked(z['values'], dtype), z['indices'],
              _cooked(z['tail'], dtype), int(meta['classes']),
              float(meta['temperature']))
      bank = cls(logits, meta['teachers'], meta['teacher_val_loss'],
                 meta['done'], meta['seconds'])
    except KeyError as e:
      raise BankFileError(f'not a memory bank: no {e} entry') from None
    _check_shapes(bank)
    return bank


def _raw(array: np.ndarray) -> np.ndarray:
  # float16/bfloat16 are stored as their raw 16 bits (npz has no bf16).
  return array.view(np.uint16) if array.dtype.itemsize == 2 else array


def _storage_dtype(name: str) -> np.dtype:
  if name not in STORAGE_DTYPES:
    raise BankFileError(f'logits stored as {name!r}; a bank stores '
                        f'{", ".join(STORAGE_DTYPES)}')
  return jnp.dtype(name)


def _cooked(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
  if raw.dtype.itemsize != dtype.itemsize:
    raise BankFileError(f'{raw.dtype} values cannot hold {dtype} logits')
  return raw.view(dtype)


def _check_shapes(bank: MemoryBank) -> None:
  """Array shapes that agree with each other and the teacher list."""
  logits, teachers = bank.logits, len(bank.teachers)
  sparse = isinstance(logits, topk.TopKLogits)
  shape = logits.values.shape if sparse else logits.shape
  ok = len(shape) == 3 and shape[1] == teachers and 0 <= bank.done <= shape[0]
  if sparse:
    ok = ok and (logits.indices.shape == shape and logits.tail.shape ==
                 shape[:2] and 0 < shape[2] <= logits.num_classes
                 and logits.indices.dtype == topk.index_dtype(
                     logits.num_classes)
                 and (logits.indices.size == 0 or
                      int(logits.indices.max()) < logits.num_classes))
  if not ok:
    raise BankFileError(f'arrays of shape {shape} do not match {teachers} '
                        f'teachers and {bank.done} images done')


def build(model, variables: Any, split: data_lib.Split,
          masks: Mapping[str, jax.Array], batch_size: int, mean, std,
          bank: MemoryBank,
          on_checkpoint: Optional[Callable[[MemoryBank], None]] = None,
          checkpoint_every: int = 20, progress: bool = True) -> MemoryBank:
  """Fills `bank.logits` (in its dtype, dense or top-k) from `bank.done` on,
  batch by batch, in split order.

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
    bank.write(sl, logits_fn(variables, split.images[sl], masks))
    bank.done = sl.stop
    bank.seconds += time.time() - start
    start = time.time()
    if on_checkpoint and ((i + 1) % checkpoint_every == 0 or bank.complete):
      on_checkpoint(bank)
  return bank


def empty_bank(history: Sequence[Mapping], num_images: int, num_classes: int,
               options: BankOptions, temperature: float) -> MemoryBank:
  """A bank to fill for the teachers `select_teachers` picks from a search
  history; a top-k bank's tail is computed at `temperature` (the
  fine-tuning's, which then cannot change)."""
  losses = teacher_candidates(history)
  teachers = select_teachers(losses, options.num_teachers)
  shape = (num_images, len(teachers), num_classes)
  dtype = jnp.dtype(options.dtype)
  logits = (topk.TopKLogits.zeros(shape, options.top_k, dtype, temperature)
            if options.top_k else np.zeros(shape, dtype))
  return MemoryBank(logits, teachers, [losses[i] for i in teachers], done=0)


def build_memory_bank(model, variables: Any, state, images: np.ndarray, *,
                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                      temperature: float = 4.0,
                      options: Optional[BankOptions] = None,
                      progress: bool = False, **overrides) -> MemoryBank:
  """The memory bank of a search (section 6) over your train images.

  Args:
    model, variables: the supernet and the variables the search scored.
    state: the search's result (`ekg_jax.prune`'s `SearchState`): its
      `history` and `ranks_history` name the teachers.
    images: [N, H, W, C] train images on the 0-255 scale (uint8), in the
      order fine-tuning will read them; `mean` and `std` (per channel, on
      that scale) normalise them as the trainer does.
    temperature: the fine-tuning's (a top-k bank's tail depends on it).
    options: `BankOptions`; `overrides` set its fields by name
      (`num_teachers=3`).
  Returns:
    A complete `MemoryBank`: `logits` [N, K, classes] (or top-k), teacher 0
    the lowest validation loss.
  """
  options = dataclasses.replace(options or BankOptions(), **overrides)
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images: [N, H, W, C], not {images.shape}')
  protocol.check_variables(model, variables, images.shape[1:])
  bank = empty_bank(state.history, len(images), model.num_classes, options,
                    temperature)
  masks = teacher_masks(state.history, state.ranks_history, bank.teachers)
  return build(model, variables, data_lib.Split(images, np.zeros(
      len(images), np.int32)), masks, options.batch_size, mean, std, bank,
      progress=progress)
