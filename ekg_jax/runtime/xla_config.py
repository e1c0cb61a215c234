"""XLA settings that make the toolkit fast on CPU.

XLA reads `XLA_FLAGS` once, when JAX starts its first backend, so these are
set by the command-line entry points (`ekg_jax.main`, the benchmarks) before
any computation; a library user calls `set_fast_cpu_flags()` first thing.
Flags for the CPU backend leave other backends untouched.

XLA aborts the whole process on a flag it does not know ("Unknown flag in
XLA_FLAGS", a fatal error no Python code can catch), and XLA's flags come
and go between releases: `--xla_cpu_experimental_ynn_fusion_type` is absent
from jaxlib 0.7.2 (the Colab TPU image's) and present in 0.12.0.1
(measured). So the flags are first tried in a child process, which starts
only XLA's CPU client; the answer is kept per jaxlib version in the run
cache (`$EKG_JAX_CACHE`, else ~/.cache/ekg_jax) so a run pays the child's
half second once.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from typing import Dict, MutableMapping, Sequence

# XLA:CPU's YNNPACK convolutions compute kernel gradients (a conv whose
# window is the whole image) ~2x slower than Eigen's; with them off the
# fine-tuning step runs 1.35x faster (benchmarks/README.md, ablation).
FAST_CPU_FLAGS = (
    '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)
PROBE_FILE = 'xla_flags.json'  # in the run cache: {key: known}

# Starts XLA's CPU client, which parses XLA_FLAGS; exits 0 when XLA knows
# every flag. jaxlib.xla_client is jaxlib's own module; should a release
# move it, starting JAX's CPU backend parses the flags too (slower).
_PROBE = '''
try:
  from jaxlib import xla_client
  xla_client.make_cpu_client()
except (ImportError, AttributeError):
  import jax
  jax.devices('cpu')
'''
_known: Dict[str, bool] = {}  # this process's answers


def _key(flags: Sequence[str]) -> str:
  try:
    version = importlib.metadata.version('jaxlib')
  except importlib.metadata.PackageNotFoundError:
    version = 'unknown'
  return f'jaxlib {version}: {" ".join(flags)}'


def _cache_file() -> str:
  root = os.environ.get('EKG_JAX_CACHE') or os.path.join(
      os.path.expanduser('~'), '.cache', 'ekg_jax')
  return os.path.join(root, PROBE_FILE)


def _read_cache() -> dict:
  try:
    with open(_cache_file()) as f:
      answers = json.load(f)
    return answers if isinstance(answers, dict) else {}
  except (OSError, ValueError):
    return {}


def _write_cache(key: str, known: bool) -> None:
  path = _cache_file()
  answers = {**_read_cache(), key: known}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f'{path}.{os.getpid()}.tmp'
    with open(temporary, 'w') as f:
      json.dump(answers, f, indent=1)
    os.replace(temporary, path)  # atomic: a reader sees old or new
  except OSError:
    pass  # no cache: the next run asks again


def flags_known(flags: Sequence[str]) -> bool:
  """Whether the installed XLA accepts `flags` (asked of a child process,
  or of the cache)."""
  key = _key(flags)
  if key in _known:
    return _known[key]
  cached = _read_cache().get(key)
  if isinstance(cached, bool):
    _known[key] = cached
    return cached
  env = {**os.environ, 'XLA_FLAGS': ' '.join(flags), 'JAX_PLATFORMS': 'cpu'}
  try:
    child = subprocess.run([sys.executable, '-c', _PROBE], env=env,
                           capture_output=True, text=True, timeout=300)
  except (OSError, subprocess.TimeoutExpired) as e:
    logging.warning('could not check XLA flags %s (%s); not set', flags, e)
    return False
  known = child.returncode == 0
  if known or 'Unknown flag' in child.stderr:
    _write_cache(key, known)  # a definite answer for this jaxlib
  else:  # the child died of something else: ask again next time
    logging.warning('checking XLA flags %s failed (exit %s); not set: %s',
                    flags, child.returncode, child.stderr.strip()[-300:])
  if not known:
    logging.info('this XLA does not know %s; not set', flags)
  _known[key] = known
  return known


def set_fast_cpu_flags(environ: MutableMapping[str, str] = os.environ
                       ) -> bool:
  """Adds FAST_CPU_FLAGS to XLA_FLAGS, keeping what the user set there.

  Returns False, changing nothing, when JAX has already started a backend
  (too late for XLA to read them), the user set the same flag already, or
  the installed XLA does not know the flags.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    logging.warning('JAX backends already started; XLA flags %s not applied',
                    FAST_CPU_FLAGS)
    return False
  current = environ.get('XLA_FLAGS', '')
  names = {f.split('=')[0] for f in current.split()}
  new = [f for f in FAST_CPU_FLAGS if f.split('=')[0] not in names]
  if not new or not flags_known(new):
    return False
  environ['XLA_FLAGS'] = ' '.join([current, *new]).strip()
  return True
