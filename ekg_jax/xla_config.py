"""XLA settings that make the toolkit fast on CPU.

XLA reads `XLA_FLAGS` once, when JAX starts its first backend, so these are
set by the command-line entry points (`ekg_jax.main`, the benchmarks) before
any computation; a library user calls `set_fast_cpu_flags()` first thing.
Flags for the CPU backend leave other backends untouched.
"""

from __future__ import annotations

import logging
import os
from typing import MutableMapping

# XLA:CPU's YNNPACK convolutions compute kernel gradients (a conv whose
# window is the whole image) ~2x slower than Eigen's; with them off the
# fine-tuning step runs 1.35x faster (benchmarks/README.md, ablation).
FAST_CPU_FLAGS = (
    '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def set_fast_cpu_flags(environ: MutableMapping[str, str] = os.environ
                       ) -> bool:
  """Adds FAST_CPU_FLAGS to XLA_FLAGS, keeping what the user set there.

  Returns False, changing nothing, when JAX has already started a backend
  (too late for XLA to read them) or the user set the same flag already.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    logging.warning('JAX backends already started; XLA flags %s not applied',
                    FAST_CPU_FLAGS)
    return False
  current = environ.get('XLA_FLAGS', '')
  names = {f.split('=')[0] for f in current.split()}
  new = [f for f in FAST_CPU_FLAGS if f.split('=')[0] not in names]
  if not new:
    return False
  environ['XLA_FLAGS'] = ' '.join([current, *new]).strip()
  return True
