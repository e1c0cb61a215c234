"""The ensemble teacher of the search (ekg_algorithm.md section 5).

T_0 holds the starting network's validation logits; after accepted step i,
T_i = (i * T_{i-1} + z_i) / (i + 1): the running mean of every interim
sub-network's logits. A teacher is a small pytree, updated by a pure function.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

MODES = ('ensemble', 'single', 'none')


class Teacher(NamedTuple):
  logits: jax.Array  # [N_val, classes]
  count: jax.Array  # networks averaged so far (int32 scalar)


def init(logits: jax.Array) -> Teacher:
  return Teacher(jnp.asarray(logits, jnp.float32), jnp.ones((), jnp.int32))


def update(teacher: Teacher, logits: jax.Array, mode: str) -> Teacher:
  """Adds an accepted sub-network's logits. 'single' keeps T_0 for good;
  'none' keeps it too (the objective then ignores the teacher)."""
  if mode != 'ensemble':
    return teacher
  n = teacher.count.astype(jnp.float32)
  mean = (n * teacher.logits + logits.astype(jnp.float32)) / (n + 1.0)
  return Teacher(mean, teacher.count + 1)
