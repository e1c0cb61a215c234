"""Several JAX processes (hosts) as one data-parallel run: where host data
becomes the global arrays the step sees, and which process writes.

With `jax.distributed.initialize`, `jax.devices()` lists every process's
devices and the `data` mesh (`train.data_mesh`) spans them all; a process
can only put data on its own devices. So:
- `global_batch`: each process supplies its own rows of a batch
  (`process_rows`), and the step sees one array of the global batch,
  sharded over the `data` axis (`jax.make_array_from_process_local_data`).
- `replicate`: a value every process holds in full (the state, the train
  set, a key) becomes one array replicated over the mesh.
- `is_primary`: process 0 alone writes files (summary, metrics, plots, model
  metadata) and logs; orbax checkpoint saves stay collective (every process
  calls them; orbax writes once and synchronises).
With one process all of this is the single-host path: `replicate` is
`jax.device_put`, and the global batch is the whole batch.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ekg_jax import rules

DATA_AXIS = 'data'  # the mesh's one axis (also train.DATA_AXIS)


def is_primary() -> bool:
  """Process 0, or the only process. A single-process run asks no backend
  (writers call it before JAX need start)."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def batch_sharding(mesh: Mesh, ndim: int, axis: int = 0) -> NamedSharding:
  """Dimension `axis` of an `ndim`-dimensional array over the `data` axis."""
  spec = [None] * ndim
  spec[axis] = DATA_AXIS
  return NamedSharding(mesh, P(*spec))


def process_rows(mesh: Mesh, batch_size: int,
                 key: str = 'finetune.batch_size') -> slice:
  """The rows of a global batch of `batch_size` that this process supplies
  (its devices' shards, contiguous with `data_mesh`'s device order).
  `key` names the config value in the error when the batch does not divide
  over every device of every process."""
  rules.check_divides(batch_size, mesh.size, key)
  shards = batch_sharding(mesh, 1).addressable_devices_indices_map(
      (batch_size,)).values()
  starts = sorted(s[0].start or 0 for s in shards)
  per_device = batch_size // mesh.size
  if starts != list(range(starts[0], starts[0] + per_device * len(starts),
                          per_device)):
    # A device order that interleaves processes: their rows are not one
    # slice, which `data_mesh`'s order (jax.devices()) never gives.
    raise ValueError(f'process {jax.process_index()} holds rows {starts} '
                     f'(x{per_device}) of the batch: not one slice')
  return slice(starts[0], starts[0] + per_device * len(starts))


def global_batch(mesh: Mesh, local: Any, batch_size: int, axis: int = 0,
                 key: str = 'finetune.batch_size') -> Any:
  """This process's rows (`process_rows`) of each leaf of `local` (a
  pytree; None leaves stay None) -> global arrays of `batch_size` rows on
  dimension `axis`, sharded over the `data` axis. Every process calls it
  with the same `batch_size`."""
  rows = process_rows(mesh, batch_size, key)

  def one(x):
    if x.shape[axis] != rows.stop - rows.start:
      raise ValueError(f'process {jax.process_index()} supplies '
                       f'{x.shape[axis]} rows of a global batch of '
                       f'{batch_size}; its share is {rows}')
    shape = list(x.shape)
    shape[axis] = batch_size
    return jax.make_array_from_process_local_data(
        batch_sharding(mesh, x.ndim, axis), x, tuple(shape))

  return jax.tree_util.tree_map(one, local)


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Each leaf (the same value in every process) replicated on every
  device of `mesh`."""
  sharding = NamedSharding(mesh, P())
  if sharding.is_fully_addressable:  # one process: the single-host path
    return jax.device_put(tree, sharding)
  # device_put refuses other processes' devices (and PRNG keys there).
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(
          sharding, x, np.shape(x)), tree)


def wait_for_all(name: str) -> None:
  """Every process waits here until all have arrived (a no-op in a
  single-process run)."""
  if jax.distributed.is_initialized():
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
