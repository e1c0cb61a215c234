"""Every choice the toolkit makes by backend, in one place.

XLA:CPU and the accelerators reward different programs; each field says
which choice, and its comment why (measurements: benchmarks/README.md and
benchmarks/results/).
"""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class BackendPolicy:
  # What search.evaluation='auto' runs: on CPU, compute is the bottleneck
  # and sharing the segments before each candidate's gate wins (`prefix`
  # 1.81x the loop on 2 cores); `segments` shares them with one small
  # program per segment: its programs' start-up is 0.13x `prefix`'s (cold;
  # 0.06x warm) for candidate evaluations 1.04x as long
  # (benchmarks/results/search-*), a net gain over a ResNet-56 search. On a GPU the wide `vmap` wins (4.4x
  # the loop on an H100). A model without segments has nothing to share:
  # `loop`.
  search_evaluation: str
  search_evaluation_unsegmented: str
  # What training program 'auto' runs: XLA:CPU runs a train step ~30x
  # slower inside `lax.scan` than as its own program; on accelerators one
  # scan per stretch of steps saves the dispatches.
  train_program: str
  # Donating the train state lets XLA update it in place; XLA:CPU does not
  # use donated buffers (it warns), so it is off there.
  donate_train_state: bool
  # Materialise segment outputs (an optimisation barrier): XLA:CPU otherwise
  # fuses a stage's residual chain into each consumer and recomputes it
  # (dense ResNet-56 train step 1.50x faster with it).
  materialize_segments: bool
  # Sum the conv kernel gradient over 16-image slices (`ops.conv2d`): XLA:CPU
  # computes whole-batch kernel gradients through slow transposes.
  sliced_kernel_grad: bool


CPU = BackendPolicy(search_evaluation='segments',
                    search_evaluation_unsegmented='loop',
                    train_program='loop', donate_train_state=False,
                    materialize_segments=True, sliced_kernel_grad=True)
ACCELERATOR = BackendPolicy(search_evaluation='vmap',
                            search_evaluation_unsegmented='vmap',
                            train_program='scan', donate_train_state=True,
                            materialize_segments=False,
                            sliced_kernel_grad=False)


def policy() -> BackendPolicy:
  """The policy of the backend JAX computes on by default."""
  return CPU if jax.default_backend() == 'cpu' else ACCELERATOR
