"""Saving and loading networks: our own checkpoints (orbax), and atomic
JSON and npz files (the authors' pickled weights: `official`)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from flax import serialization, traverse_util

from ekg_jax.runtime import distributed

class CheckpointError(ValueError):
  pass


def write_atomic(path: str, write: Callable[[Any], None],
                 binary: bool = False) -> None:
  """`write(file)` into a temporary file (a unique name: parallel runs may
  write the same path) in the same folder, then renames it into place, so a
  reader sees the old file or the new one, never half of one."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_',
                             suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False))


def previous_npz(path: str) -> str:
  return path.removesuffix('.npz') + '.prev.npz'


def write_npz_atomic(path: str, **arrays) -> None:
  """Writes an .npz to a temp file, keeps the current file as
  `previous_npz(path)`, then renames the new one into place: whatever
  instant a kill (or a full disk) hits, a complete file remains."""
  tmp = f'{path}.tmp.npz'
  try:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  if os.path.exists(path):
    os.replace(path, previous_npz(path))
  os.replace(tmp, path)


def npz_exists(path: str) -> bool:
  return os.path.exists(path) or os.path.exists(previous_npz(path))


def read_npz_with_fallback(path: str, read):
  """`read(path)`; when the newest file is missing or unreadable (truncated,
  corrupted), reports it and reads the previous one."""
  failures = []
  for candidate in (path, previous_npz(path)):
    if not os.path.exists(candidate):
      continue
    try:
      value = read(candidate)
    except Exception as e:  # zipfile, pickle and numpy raise many kinds
      failures.append(f'{candidate}: {type(e).__name__}: {e}')
      continue
    for failure in failures:  # when no copy reads, the error says it all
      logging.warning('%s; read the previous copy instead', failure)
    return value
  if failures:
    raise CheckpointError('no readable copy: ' + '; '.join(failures))
  raise FileNotFoundError(path)


MODEL_FILE = 'model.json'
VARIABLES_DIR = 'variables'


def save_model(directory: str, model_name: str, model_config: Mapping,
               variables: Mapping) -> None:
  """Saves a network with what rebuilds it: `model.json` (name, attributes
  such as slimmed widths) and the variables through orbax (atomic commit)."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, VARIABLES_DIR)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(target, jax.device_get(variables), force=True)  # collective
  if distributed.is_primary():  # process 0 writes the metadata for all
    write_json_atomic(os.path.join(directory, MODEL_FILE),
                      {'name': model_name, **dict(model_config)})


def read_model_config(directory: str) -> dict:
  path = os.path.join(directory, MODEL_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(
        f'{directory!r} is not an ekg_jax checkpoint: no {MODEL_FILE}. '
        'init_checkpoint takes the official .pkl or a directory written by '
        'ekg_jax.files.checkpoint.save_model')
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f'{path} is damaged ({type(e).__name__}: {e}); '
                          'save the model again') from None


def _quiet_abandoned_reads() -> None:
  """After a failed orbax restore, its other tensorstore reads may finish
  after `asyncio.run` closed their event loop, even before the restore's
  own error reaches us; tensorstore reports each one's
  `RuntimeError('Event loop is closed')` as unraisable, lines of noise
  around the error that matters. Those alone are dropped, from before the
  restore starts: installed after a failure, the hook lost that race."""
  previous = sys.unraisablehook
  if getattr(previous, 'quiet', False):
    return

  def hook(args):
    tb = args.exc_traceback
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next  # the frame that raised
    if not (args.exc_type is RuntimeError and tb is not None
            and str(args.exc_value) == 'Event loop is closed'
            and 'asyncio' in tb.tb_frame.f_code.co_filename):
      previous(args)
  hook.quiet = True
  sys.unraisablehook = hook


def load_model_variables(directory: str, reference: Mapping) -> dict:
  import orbax.checkpoint as ocp
  _quiet_abandoned_reads()
  try:
    with ocp.StandardCheckpointer() as ckptr:
      restored = ckptr.restore(
          os.path.join(os.path.abspath(directory), VARIABLES_DIR))
  except Exception as e:  # orbax/tensorstore raise many kinds
    raise CheckpointError(
        f'{directory} holds no readable variables (truncated or damaged '
        f'checkpoint: {type(e).__name__}: {str(e).splitlines()[0][:160]})'
    ) from None
  got = traverse_util.flatten_dict(restored)
  want = traverse_util.flatten_dict(reference)
  if set(got) != set(want) or any(got[p].shape != want[p].shape
                                  for p in want):
    diff = sorted('/'.join(p) for p in set(got) ^ set(want))
    diff += ['/'.join(p) + f' {got[p].shape} vs {want[p].shape}'
             for p in set(got) & set(want) if got[p].shape != want[p].shape]
    raise CheckpointError(f'{directory} does not fit the model: '
                          + ', '.join(diff[:12]))
  return restored


class TrainCheckpoints:
  """Orbax CheckpointManager over (train state, progress: a JSON dict);
  atomic commits, the last `keep` kept."""

  def __init__(self, directory: str, keep: int = 2):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False),
        item_names=('state', 'progress'))

  def save(self, state, progress: dict) -> None:
    ocp = self._ocp
    self.manager.save(
        int(state.step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(
                jax.device_get(state))),
            progress=ocp.args.JsonSave(progress)),
        force=True)

  def restore(self, template) -> Optional[tuple[Any, dict]]:
    """The newest readable checkpoint. Unreadable newer ones (truncated or
    corrupted files) are reported and moved aside; when none is readable,
    CheckpointError (nothing is moved and nothing restarts from scratch)."""
    ocp = self._ocp
    target = serialization.to_state_dict(jax.device_get(template))
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            progress=ocp.args.JsonRestore()))
        restored = (serialization.from_state_dict(template, out['state']),
                    out['progress'])
      except Exception as e:  # orbax/tensorstore raise many kinds
        _quiet_abandoned_reads()
        failed.append((step, f'{type(e).__name__}: {str(e)[:200]}'))
        continue
      for bad, why in failed:  # moved aside, so the step can be saved again
        aside = os.path.join(f'{self.manager.directory}_unreadable', str(bad))
        # Told only here: when none reads, the error says it all.
        logging.warning('checkpoint %d in %s is unreadable (%s); using '
                        'checkpoint %d; %d moved to %s', bad,
                        self.manager.directory, why, step, bad, aside)
        shutil.rmtree(aside, ignore_errors=True)
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(os.path.join(self.manager.directory, str(bad)), aside)
      if failed:
        self.manager.reload()
      return restored
    if failed:
      raise CheckpointError(
          f'no readable checkpoint in {self.manager.directory}: '
          + '; '.join(f'{step}: {why}' for step, why in failed))
    return None

  def close(self):
    self.manager.close()
