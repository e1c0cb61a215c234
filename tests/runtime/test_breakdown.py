"""runtime.breakdown: a compile's time split into tracing, lowering and
XLA's compile, the three summing to the compile seconds."""

import jax
import jax.numpy as jnp

from ekg_jax.runtime import breakdown


def test_compile_parts_split_the_compile_seconds():
  breakdown.listen()
  before = breakdown.snapshot()
  # A function no other test compiles, so every part of its compile runs,
  # long enough to trace for more than the 10 ms the parts are rounded to.
  def g(x):
    for i in range(150):
      x = jnp.sin(x) * (i + 0.25)
    return x
  f = jax.jit(g)
  f(jnp.arange(17.0)).block_until_ready()
  parts = breakdown.compile_parts(before)
  assert set(parts) == {'trace_seconds', 'lower_seconds', 'backend_seconds'}
  assert all(v > 0 for v in parts.values()), parts
  compiled = breakdown.since(before, 100.0)['compile_seconds']
  assert abs(sum(parts.values()) - compiled) <= 0.02, (parts, compiled)
  f(jnp.arange(17.0)).block_until_ready()  # served from memory: no events
  assert breakdown.compile_parts(before) == parts
