"""One workdir, one experiment, one running process.

`lock(workdir)` holds `workdir/.lock` (the owner's PID) while a run works
there: a second run refuses, and a lock left by a dead process is taken
over. `check_config` refuses a config that differs from the one the
workdir's earlier runs used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Iterator

import ml_collections

CONFIG = 'config.json'
LOCK = '.lock'
# Keys that control how a run runs, not what it computes: they may change
# between the runs that share a workdir.
RUN_CONTROL = ('phases', 'quiet', 'distributed', 'data.data_dir')


class WorkdirError(RuntimeError):
  pass


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  path = os.path.join(workdir, LOCK)
  os.makedirs(workdir, exist_ok=True)
  while True:
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          owner = int(f.read().strip() or 0)
      except (FileNotFoundError, ValueError):
        owner = 0  # vanished or half-written: try again / take over
      if owner and owner != os.getpid() and _alive(owner):
        raise WorkdirError(
            f'{workdir} is in use by process {owner} (lock file {path}); '
            'wait for it, stop it, or use another --workdir') from None
      logging.warning('taking over the stale lock of process %s', owner)
      with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
      continue
    with os.fdopen(fd, 'w') as f:
      f.write(str(os.getpid()))
    break
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(path)


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
