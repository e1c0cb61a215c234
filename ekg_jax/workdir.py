"""One workdir, one experiment, one running process.

`lock(workdir)` holds a `flock` on `workdir/.lock` (which names the owner's
PID) while a run works there: a second run refuses; a killed run's lock is
released by the kernel, so a stale lock never blocks. `check_config` refuses a config that differs from the one the
workdir's earlier runs used.
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


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises WorkdirError naming the keys where `config` differs from the
  config saved by the workdir's earlier runs (run-control keys aside)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flat(ml_collections.ConfigDict(json.load(f)))
  now = _flat(config)
  differing = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k))
  if differing:
    shown = ', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}'
                      for k in differing[:8])
    raise WorkdirError(
        f'{workdir} holds a run of another config ({shown}'
        f'{" ..." if len(differing) > 8 else ""}); use a new --workdir, or '
        'the same config to resume')


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  from ekg_jax.checkpoint import write_json_atomic
  write_json_atomic(os.path.join(workdir, CONFIG),
                    json.loads(config.to_json()))
