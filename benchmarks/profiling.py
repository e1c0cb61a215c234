"""Where a compiled step spends its time, by kind of XLA operation.

Traces calls with `jax.profiler` (a Perfetto trace) and sums the events of
the compiled program's operations by kind: the HLO name without its number
(`transpose_copy_fusion.150` -> `transpose_copy_fusion`). On XLA:CPU some
library calls (Eigen convolutions) run on their own thread pool and are
only partly covered by the events, so the kinds need not add up to the step.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Callable

import jax

# Runtime bookkeeping and Python frames, not operations of the program.
_NOT_OPS = re.compile(r'^\$|Thunk|Slinky|PjRt|PjitFunction|block_until_ready'
                      r'|^end: |Handle inputs|Wait for|^jit\(|^stack$')


def profile(fn: Callable[[], object], calls: int = 1, top: int = 12) -> dict:
  """{kind: {'ms': per call, 'count': per call}} for the `top` kinds, plus
  '_total_ms' over all kinds. `fn` is run `calls` times inside the trace
  (after it has been compiled)."""
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    for _ in range(calls):
      jax.block_until_ready(fn())
    jax.profiler.stop_trace()
    paths = glob.glob(os.path.join(directory, '**', '*.trace.json.gz'),
                      recursive=True)
    with gzip.open(paths[0]) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  micros, counts = collections.Counter(), collections.Counter()
  for e in events:
    if e.get('ph') != 'X' or _NOT_OPS.search(e.get('name', '')):
      continue
    kind = re.sub(r'\.\d+$', '', e['name'])
    micros[kind] += e['dur']
    counts[kind] += 1
  out = {k: {'ms': d / 1e3 / calls, 'count': counts[k] / calls}
         for k, d in micros.most_common(top)}
  out['_total_ms'] = sum(micros.values()) / 1e3 / calls
  return out
