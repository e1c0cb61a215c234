"""One workdir, one experiment, one running process: where the phases keep
their files, the summary, the lock, the config pinning and the checks of
what a run finds there.

`lock(workdir)` holds a `flock` on `workdir/.lock` (which names the owner's
PID) while a run works there: a second run refuses; a killed run's lock is
released by the kernel, so a stale lock never blocks. `check_config` refuses a
config that differs from the one the workdir's earlier runs used, in the keys
that the results already there depend on. `remove` is a redo: a phase's
results go, so that it runs again. What each phase pins and writes is its
record's (`run.phases.PHASES`); these functions take the records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import Iterator

import ml_collections

from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.runtime import distributed
from ekg_jax.config import ConfigError, default_config

CONFIG = 'config.json'
LOCK = '.lock'

# Where the phases keep their files, relative to the workdir: the one place
# the phases, the resume checks and the report read them from. Each phase
# writes its metrics, plots and checkpoints in `phase_dir(workdir, phase)`.
SUMMARY = 'summary.json'
PRETRAINED = 'pretrain/final'
WARMED_UP = 'search/warmup'
SEARCH_STATE = 'search/state.npz'
SEARCH_HISTORY = 'search/history.json'
MEMORY_BANK = 'memory_bank/bank.npz'
FINETUNED = 'finetune/final'
# Keys that control how a run runs, not what it computes: they may change
# between the runs that share a workdir. Learning rates too, so that a run
# stopped by a non-finite loss can resume from its last good checkpoint with
# a lower one.
RUN_CONTROL = ('phases', 'redo', 'quiet', 'distributed', 'cache_dir',
               'data.data_dir', 'data.decode_workers', 'data.prefetch',
               'pretrain.learning_rate',
               'finetune.learning_rate')


class WorkdirError(RuntimeError):
  pass


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds an exclusive `flock` on workdir/.lock while the run works there.
  The kernel drops it when the process dies, so a killed run's lock never
  blocks the rerun; the file holds the owner's PID for the message. In a
  run of several processes, process 0 holds it for all (they share the
  workdir and start together)."""
  import fcntl
  if not distributed.is_primary():
    yield
    return
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


# Keys every phase's results depend on; each phase adds its own
# (`run.phases.PHASES`, its `pins`). Once a phase has produced something,
# its keys are pinned: a rerun must use the same values. Keys of phases that
# have produced nothing may change, so a run that failed before computing
# leaves the workdir reusable with a corrected config.
COMMON = ('model.', 'seed', 'init_checkpoint', 'data.name',
          'data.train_split', 'data.image_size', 'data.mean', 'data.std')


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


def _pinned(key: str, prefixes) -> bool:
  return any(key == p or (p.endswith('.') and key.startswith(p))
             for p in prefixes)


def check_config(config: ml_collections.ConfigDict, workdir: str,
                 produced=()) -> None:
  """Raises WorkdirError naming the keys where `config` differs from the
  config saved by the workdir's earlier runs, among the keys that the
  phases in `produced` (records of `run.phases.PHASES` that finished or
  left state behind) depend on. Run-control keys may always change."""
  path = os.path.join(workdir, CONFIG)
  if not produced or not os.path.exists(path):
    return
  saved = _flat(ml_collections.ConfigDict(_read_json(
      path, 'restore it, or delete it if you rerun with the config the '
      'finished phases ran with (it is written again)')))
  now = _flat(config)
  # A key the toolkit gained after that run: the run had its default.
  defaults = _flat(default_config())
  saved = {**{k: v for k, v in defaults.items() if k in now}, **saved}
  pins = COMMON + tuple(p for ph in produced for p in ph.pins)
  differing = sorted(k for k in set(saved) | set(now)
                     if saved.get(k) != now.get(k) and _pinned(k, pins))
  if differing:
    shown = ', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}'
                      for k in differing[:8])
    # Keys every phase depends on change everything: a new workdir. Others
    # belong to phases that a redo computes again with the new values.
    redo = [] if any(_pinned(k, COMMON) for k in differing) else [
        ph.name for ph in produced
        if any(_pinned(k, ph.pins) for k in differing)]
    raise WorkdirError(
        f'{workdir} holds results of another config (phases '
        f'{", ".join(p.name for p in produced)} ran with {shown}'
        f'{" ..." if len(differing) > 8 else ""}); use a new --workdir, or '
        'the same values to resume' + (
            f', or --config.redo={",".join(redo)} to compute '
            f'{"it" if len(redo) == 1 else "them"} (and the phases computed '
            'from it) again with the new values' if redo else ''))


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  from ekg_jax.files.checkpoint import write_json_atomic
  if not distributed.is_primary():  # process 0 writes for all
    return
  write_json_atomic(os.path.join(workdir, CONFIG),
                    json.loads(config.to_json()))


def phase_dir(workdir: str, phase: str) -> str:
  return os.path.join(workdir, phase)


def load_summary(workdir: str) -> dict:
  path = os.path.join(workdir, SUMMARY)
  if os.path.exists(path):
    return _read_json(path, 'delete it and rerun: every phase resumes from '
                      'its own files and writes its results again')
  return {}


def _read_json(path: str, way_out: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError included
    raise WorkdirError(f'{path} is unreadable ({type(e).__name__}: '
                       f'{str(e)[:80]}); {way_out}') from None


def record(workdir: str, results: dict) -> dict:
  """Adds a phase's results (summary key -> fields) in one atomic write
  (by process 0; every process gets the summary back)."""
  summary = {**load_summary(workdir), **results}
  if distributed.is_primary():
    ckpt_lib.write_json_atomic(os.path.join(workdir, SUMMARY), summary)
  return summary


def produced_phases(workdir: str, summary: dict, phases) -> list:
  """The phases (records of `run.phases.PHASES`) that finished or left
  state behind in `workdir`."""
  def present(rel):
    path = os.path.join(workdir, rel)
    return (os.path.isfile(path) or ckpt_lib.npz_exists(path)
            if not os.path.isdir(path) else bool(os.listdir(path)))
  return [p for p in phases
          if p.finished(summary) or any(present(f) for f in p.resumes_from)]


def redo_hint(phase: str) -> str:
  """The way out of a damaged result of `phase`: compute it again."""
  return (f'it is a result of phase {phase!r}: rerun with '
          f'--config.redo={phase} to compute that phase (and those computed '
          'from it) again')


def remove(workdir: str, phases, summary: dict) -> dict:
  """A redo: removes the results of `phases` (records of
  `run.phases.PHASES`), their summary entries first, then their files;
  returns the summary left. Whenever a kill lands, the summary names only
  phases whose files are all there (a phase left with files but no entry
  resumes from them, as after any kill)."""
  entries = {e for p in phases for e in p.summary}
  left = {k: v for k, v in summary.items() if k not in entries}
  if distributed.is_primary():  # process 0 writes for all
    if left != summary:
      ckpt_lib.write_json_atomic(os.path.join(workdir, SUMMARY), left)
    for p in phases:
      for rel in p.writes:
        path = os.path.join(workdir, rel)
        if os.path.isdir(path):
          shutil.rmtree(path)
        elif os.path.lexists(path):
          os.remove(path)
  distributed.wait_for_all('redo')  # nobody reads what is being removed
  return left


def validate_workdir_path(workdir: str) -> None:
  """The workdir must exist as a writable folder or be creatable."""
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'--workdir={workdir!r}: {existing} is a file, so the '
                      'workdir cannot be created; choose another folder')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ConfigError(f'--workdir={workdir!r}: {existing} is not writable; '
                      'choose a folder you can write to')
