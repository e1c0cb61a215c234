"""Where a phase's wall-clock goes: reading data (decoding, or the decoded
cache), compiling (tracing, lowering and XLA's compile, measured by JAX's
own monitoring events), and the rest, computing. Process-wide running
totals; the pipeline takes their difference around each phase."""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

# JAX's monitoring events, by the part of a compile they time; the
# persistent compilation cache serves only the last.
_COMPILE_EVENTS = {'/jax/core/compile/jaxpr_trace_duration': 'trace',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
                   '/jax/core/compile/backend_compile_duration': 'backend'}
_TOTALS = {'data': 0.0, 'trace': 0.0, 'lower': 0.0, 'backend': 0.0}
_LISTENING = [False]


def _on_event(event: str, seconds: float, **_) -> None:
  if event in _COMPILE_EVENTS:
    _TOTALS[_COMPILE_EVENTS[event]] += seconds


def listen() -> None:
  """Starts counting compile time (once per process)."""
  if not _LISTENING[0]:
    import jax
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    _LISTENING[0] = True


@contextlib.contextmanager
def reading_data() -> Iterator[None]:
  start = time.perf_counter()
  try:
    yield
  finally:
    _TOTALS['data'] += time.perf_counter() - start


def snapshot() -> dict:
  return dict(_TOTALS)


def since(before: dict, total_seconds: float) -> dict:
  """Seconds of data, compile and compute since `before`, of a stretch
  that took `total_seconds`."""
  data = _TOTALS['data'] - before['data']
  compile_ = sum(_parts(before).values())
  return {'data_seconds': round(data, 2), 'compile_seconds': round(compile_, 2),
          'compute_seconds': round(max(0.0, total_seconds - data - compile_),
                                   2),
          'seconds': round(total_seconds, 2)}


def _parts(before: dict) -> dict:
  return {k: _TOTALS[k] - before[k] for k in _COMPILE_EVENTS.values()}


def compile_parts(before: dict) -> dict:
  """Seconds of tracing, lowering and XLA's compile since `before`."""
  return {f'{k}_seconds': round(v, 2) for k, v in _parts(before).items()}
