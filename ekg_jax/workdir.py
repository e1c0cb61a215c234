"""One workdir, one experiment, one running process.

`lock(workdir)` holds a `flock` on `workdir/.lock` (which names the owner's
PID) while a run works there: a second run refuses; a killed run's lock is
released by the kernel, so a stale lock never blocks. `check_config` refuses a
config that differs from the one the workdir's earlier runs used, in the keys
that the results already there depend on.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator

import ml_collections

CONFIG = 'config.json'
LOCK = '.lock'
# Keys that control how a run runs, not what it computes: they may change
# between the runs that share a workdir. Learning rates too, so that a run
# stopped by a non-finite loss can resume from its last good checkpoint with
# a lower one.
RUN_CONTROL = ('phases', 'quiet', 'distributed', 'data.data_dir',
               'pretrain.learning_rate', 'finetune.learning_rate')


class WorkdirError(RuntimeError):
  pass


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive `flock` on workdir/.lock while the run works there.
  The kernel drops it when the process dies, so a killed run's lock never
  blocks the rerun; the file holds the owner's PID for the message."""
  import fcntl
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = os.pread(fd, 32, 0).decode(errors='replace').strip() or '?'
      raise WorkdirError(
          f'{workdir} is in use by process {owner} (lock file {path}); '
          'wait for it, stop it, or use another --workdir') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock


# Which keys each phase's results depend on (prefixes of flattened keys).
# Every phase depends on COMMON. Once a phase has produced something, its
# keys are pinned: a rerun must use the same values. Keys of phases that
# have produced nothing may change, so a run that failed before computing
# leaves the workdir reusable with a corrected config.
COMMON = ('model.', 'seed', 'init_checkpoint', 'data.name',
          'data.train_split', 'data.image_size', 'data.mean', 'data.std')
PHASE_KEYS = {
    'pretrain': ('pretrain.', 'augment.', 'data.test_split'),
    'evaluate': ('data.test_split',),
    'search': ('warmup.', 'search.', 'data.val_per_class',
               'data.warmup_per_class', 'data.subset_seed'),
    'landscape': ('landscape.', 'data.test_split'),
    'memory_bank': ('memory_bank.',),
    'finetune': ('finetune.', 'augment.', 'data.test_split'),
}


def _flat(config: ml_collections.ConfigDict) -> dict:
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f'{prefix}{k}.')
      else:
        out[f'{prefix}{k}'] = v

  walk(json.loads(config.to_json()), '')
  return {k: v for k, v in out.items() if k not in RUN_CONTROL}


def _pinned(key: str, phases) -> bool:
  prefixes = COMMON + tuple(p for ph in phases for p in PHASE_KEYS[ph])
  return any(key == p or (p.endswith('.') and key.startswith(p))
             for p in prefixes)


def check_config(config: ml_collections.ConfigDict, workdir: str,
                 produced=()) -> None:
  """Raises WorkdirError naming the keys where `config` differs from the
  config saved by the workdir's earlier runs, among the keys that the
  phases in `produced` (those that finished or left state behind) depend
  on. Run-control keys may always change."""
  path = os.path.join(workdir, CONFIG)
  if not produced or not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flat(ml_collections.ConfigDict(json.load(f)))
  now = _flat(config)
  differing = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k)
                     and _pinned(k, produced))
  if differing:
    shown = ', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}'
                      for k in differing[:8])
    raise WorkdirError(
        f'{workdir} holds results of another config (phases '
        f'{", ".join(produced)} ran with {shown}'
        f'{" ..." if len(differing) > 8 else ""}); use a new --workdir, or '
        'the same values to resume')


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  from ekg_jax.checkpoint import write_json_atomic
  write_json_atomic(os.path.join(workdir, CONFIG),
                    json.loads(config.to_json()))
