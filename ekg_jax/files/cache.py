"""What a run keeps between runs to start faster: decoded splits (uint8
arrays), label arrays (reading a streamed split's labels means reading every
record: 140 GB for ImageNet's train split) and XLA's compiled programs (JAX's
persistent compilation cache).

`config.cache_dir` names the folder: 'auto' is $EKG_JAX_CACHE or
~/.cache/ekg_jax, '' turns all three off. A decoded split is keyed by the
dataset's files (names, sizes, modification times) and the split, so a
re-prepared or changed dataset is decoded again; entries are written
atomically, so a killed run leaves no half entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import numpy as np

from ekg_jax.files import checkpoint


def resolve(cache_dir: str) -> Optional[str]:
  if not cache_dir:
    return None
  if cache_dir == 'auto':
    cache_dir = os.environ.get('EKG_JAX_CACHE') or os.path.join(
        os.path.expanduser('~'), '.cache', 'ekg_jax')
  return os.path.abspath(os.path.expanduser(cache_dir))


# The search's per-segment evaluation programs take about 0.3 s each to
# compile (ResNet-56: 9 s for 30 programs in a search's first step), and a
# threshold of 1 s kept them all out of the cache (measured:
# benchmarks/results/search-startup-parts-cpu-2cores). 0.1 s still keeps
# out the many small helper programs, a cache file each.
MIN_COMPILE_SECONDS = 0.1


def enable_compilation_cache(root: Optional[str]) -> None:
  """JAX's persistent compilation cache in root/xla, for programs that
  took over MIN_COMPILE_SECONDS to compile. JAX's own
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, where set, wins."""
  if root is None:
    return
  import jax
  jax.config.update('jax_compilation_cache_dir', os.path.join(root, 'xla'))
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs',
                      MIN_COMPILE_SECONDS)


def _fingerprint(files_dir: str, name: str, split: str) -> str:
  digest = hashlib.sha256(f'{name}\0{split}'.encode())
  for entry in sorted(os.scandir(files_dir), key=lambda e: e.name):
    if entry.is_file():
      stat = entry.stat()
      digest.update(f'{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0'
                    .encode())
  return digest.hexdigest()[:32]


def decoded_path(root: Optional[str], files_dir: str, name: str,
                 split: str, kind: str = 'decoded') -> Optional[str]:
  """The entry of a split in root/kind ('decoded': images and labels;
  'labels': labels only)."""
  if root is None:
    return None
  try:
    key = _fingerprint(files_dir, name, split)
  except OSError:  # no listable dataset folder (mock data): no caching
    return None
  return os.path.join(root, kind, name, key + '.npz')


def read_decoded(path: Optional[str], keys=('images', 'labels')):
  """The arrays `keys` of a cached split, or None (absent or unreadable:
  then the split is read again)."""
  if path is None or not os.path.exists(path):
    return None
  try:
    with np.load(path) as z:
      return tuple(z[k] for k in keys)
  except Exception as e:  # a damaged entry is only a cache miss
    logging.warning('decoded-split cache %s unreadable (%s); decoding',
                    path, type(e).__name__)
    return None


def write_decoded(path: Optional[str], **arrays: np.ndarray) -> None:
  if path is None:
    return
  try:
    checkpoint.write_atomic(path, lambda f: np.savez(f, **arrays),
                            binary=True)
  except OSError as e:  # a full or read-only cache only costs speed
    logging.warning('cannot write the decoded-split cache %s (%s)', path,
                    e.strerror)
