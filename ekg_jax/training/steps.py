"""One training step and how steps run: the train state, the optimizer,
the data-parallel step and the step runner (section 8's recipe; the same
machinery pretrains dense networks).

Data-parallel over a one-axis `data` mesh: the step runs inside
`jax.shard_map` with the batch sharded and the state replicated. The train
set, its memory-bank logits and the augmentation stay on device; a stretch
of steps (to the next checkpoint or epoch end) is one compiled `lax.scan`,
or, on CPU, one compiled step dispatched per batch (`StepRunner`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ekg_jax.runtime import backend
from ekg_jax.training import distill
from ekg_jax.training.distill import StepConfig, augmented_views, views_logits
from ekg_jax.runtime.distributed import DATA_AXIS


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any
  opt_state: Any

  @classmethod
  def create(cls, variables, tx: optax.GradientTransformation
             ) -> 'TrainState':
    """A network without BatchNorm (a ViT) has no 'batch_stats': they
    are {} here, and absent from `variables` again, as from `model.init`."""
    params = variables['params']
    return cls(jnp.zeros((), jnp.int32), params,
               variables.get('batch_stats', {}), tx.init(params))

  @property
  def variables(self) -> dict:
    if not self.batch_stats:
      return {'params': self.params}
    return {'params': self.params, 'batch_stats': self.batch_stats}



def steps_per_epoch(num_images: int, batch_size: int) -> int:
  """Full batches only: the last partial batch of an epoch is dropped."""
  return num_images // batch_size


def make_step(model, tx: optax.GradientTransformation, config: StepConfig,
              axis_name: Optional[str] = None,
              loss: Optional[Callable] = None) -> Callable:
  """step(state, keys [B], uint8 images [B,...], labels [B], bank [B,K,C]
  or None) -> (state, metrics), for one device's shard of the batch.

  `loss(view_logits, labels, bank, config, axis_name) -> (loss, metrics)`
  defaults to `distill.views_loss` (CE, plus the configured knowledge).

  With `axis_name`, the shard is part of a global batch: the loss is
  averaged over devices before differentiation (gradients of the replicated
  parameters then come back as the global mean), the teacher filter's sums
  cover the global batch, and BN's running statistics are averaged.
  """
  loss = loss or distill.views_loss

  def loss_fn(params, batch_stats, views, labels, bank):
    logits, batch_stats = views_logits(
        model, {'params': params, 'batch_stats': batch_stats}, views)
    value, metrics = loss(logits, labels, bank, config, axis_name)
    if axis_name is not None:
      value = jax.lax.pmean(value, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    return value, (batch_stats, metrics)

  def step(state: TrainState, keys, images, labels, bank):
    views = augmented_views(config, keys, images)
    grads, (batch_stats, metrics) = jax.grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, views, labels, bank)
    if axis_name is not None:
      batch_stats = jax.lax.pmean(batch_stats, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), metrics

  return step


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis mesh over every device (all hosts' when jax.distributed is
  initialised)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_parallel(step: Callable, mesh: Mesh) -> Callable:
  """The per-shard `step` over the mesh: state replicated, batch sharded."""
  batch = P(DATA_AXIS)
  return jax.shard_map(step, mesh=mesh,
                       in_specs=(P(), batch, batch, batch, batch),
                       out_specs=(P(), P()))


class TrainData(NamedTuple):
  """The train split on device: uint8 images, labels and, with knowledge,
  the memory bank's logits [N, K, classes] (None without)."""
  images: jax.Array
  labels: jax.Array
  bank: Optional[jax.Array]




def resolve_program(program: str) -> str:
  """'auto': by backend (`backend.BackendPolicy.train_program`)."""
  if program != 'auto':
    return program
  return backend.policy().train_program


class StepRunner:
  """Runs a stretch of steps over on-device data: (state, data, indices
  [n, B], key) -> (state, metrics with a leading n).

  The batch is gathered and augmented on device. Each image's augmentation
  key is fold_in(key, step) split over the global batch, so it depends
  neither on the device count nor on where a run resumed. `scan`: the
  stretch is one compiled `lax.scan` (one program per stretch length);
  `loop`: one compiled step dispatched n times, metrics fetched once (the
  same numbers; tested).
  """

  def __init__(self, step: Callable, program: str):
    def body(state, data: TrainData, idx, key):
      keys = jax.random.split(jax.random.fold_in(key, state.step),
                              idx.shape[0])
      bank = None if data.bank is None else data.bank[idx]
      return step(state, keys, data.images[idx], data.labels[idx], bank)

    def stretch(state, data, indices, key):
      return jax.lax.scan(lambda s, idx: body(s, data, idx, key), state,
                          indices)

    self.program = resolve_program(program)
    donate = (0,) if backend.policy().donate_train_state else ()
    self._fn = jax.jit(stretch if self.program == 'scan' else body,
                       donate_argnums=donate)
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0

  def _get(self, state, data, indices, key):
    n = len(indices) if self.program == 'scan' else 0
    if n not in self._compiled:
      start = time.time()
      example = indices if self.program == 'scan' else indices[0]
      self._compiled[n] = self._fn.lower(state, data, example, key).compile()
      self.compile_seconds += time.time() - start
    return self._compiled[n]

  def __call__(self, state, data, indices, key,
               on_steps: Callable[[int], Any] = lambda n: None):
    """`on_steps(k)` hears of k more steps dispatched (progress bars)."""
    run = self._get(state, data, indices, key)
    if self.program == 'scan':
      out = run(state, data, indices, key)
      on_steps(len(indices))
      return out
    if not isinstance(indices, jax.Array):  # a global one stays as it is
      indices = jax.device_put(indices)  # one transfer per stretch
    return steps_in_flight(
        state, len(indices), lambda s, i: run(s, data, indices[i], key),
        on_steps)


def steps_in_flight(state, n: int, one_step: Callable, on_steps):
  """Runs `one_step(state, i) -> (state, metrics)` n times with one step
  in flight (the host dispatches step i+1 before waiting for step i), and
  reports each step to `on_steps` once it has finished. Returns the state
  and the metrics stacked along a leading axis of n."""
  metrics = []
  for i in range(n):
    state, m = one_step(state, i)
    if metrics:
      jax.block_until_ready(metrics[-1])
      on_steps(1)
    metrics.append(m)
  jax.block_until_ready(metrics[-1])
  on_steps(1)
  return state, jax.tree_util.tree_map(lambda *m: jnp.stack(m), *metrics)


def epoch_order(seed: int, epoch: int, num_images: int, steps: int,
                batch_size: int) -> np.ndarray:
  """[steps, batch] image indices of an epoch: a fixed function of (seed,
  epoch), so a resumed run draws the same batches."""
  order = np.random.default_rng([seed, epoch]).permutation(num_images)
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)

