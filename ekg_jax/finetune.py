"""Fine-tuning the slimmed network with ensemble knowledge (section 8).

Each image gets two augmented views; the loss is, per view, CE plus the KL
distillation term towards the mean of the memory-bank teachers that pass the
filter (a teacher is used when it is closer to the best teacher than the
student is). Data-parallel over a one-axis `data` mesh: the step runs inside
`jax.shard_map` with the batch sharded and the state replicated. The train
set, its memory-bank logits and the augmentation stay on device; a stretch
of steps (to the next checkpoint or epoch end) is one compiled `lax.scan`,
or, on CPU, one compiled step dispatched per batch (`StepRunner`). State is
checkpointed with orbax and resumes to the same parameters. The same loop,
with `knowledge='none'` and the `pretrain` recipe, pretrains dense networks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from ekg_jax import config as config_lib
from ekg_jax import data as data_lib
from ekg_jax import evaluation
from ekg_jax import losses
from ekg_jax import metrics as metrics_lib

KNOWLEDGE = ('ensemble', 'single', 'none')
DATA_AXIS = 'data'


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any
  opt_state: Any

  @classmethod
  def create(cls, variables, tx: optax.GradientTransformation
             ) -> 'TrainState':
    params = variables['params']
    return cls(jnp.zeros((), jnp.int32), params, variables['batch_stats'],
               tx.init(params))

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the loss needs, from config[section], config.data, config.augment."""
  knowledge: str = 'ensemble'
  temperature: float = 4.0
  mean: tuple = (0.0, 0.0, 0.0)
  std: tuple = (1.0, 1.0, 1.0)
  augment: tuple = ()  # keyword arguments of data.augment_each, as items

  @classmethod
  def from_config(cls, config, section: str = 'finetune') -> 'StepConfig':
    recipe = config[section]  # pretrain has no knowledge to distil
    return cls(recipe.get('knowledge', 'none'), recipe.get('temperature', 1.0),
               tuple(config.data.mean), tuple(config.data.std),
               tuple(sorted(dict(config.augment).items())))

  @property
  def views(self) -> int:
    return 1 if self.knowledge == 'none' else 2


def steps_per_epoch(num_images: int, batch_size: int) -> int:
  """Full batches only: the last partial batch of an epoch is dropped."""
  return num_images // batch_size


def lr_schedule(recipe, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate times `lr_decay_factor` at each listed fraction of
  the run's steps (reference: 0.01, x0.2 at epochs 30, 60, 80 of 100).
  Step-granular, so a run of a few epochs keeps the schedule's shape (the
  reference's epoch-granular points would all fall on epoch 0)."""
  total = recipe.epochs * steps_per_epoch
  boundaries = {}
  for f in recipe.lr_decay_epochs_fraction:
    step = round(f * total)
    boundaries[step] = boundaries.get(step, 1.0) * recipe.lr_decay_factor
  return optax.piecewise_constant_schedule(recipe.learning_rate, boundaries)


def make_optimizer(recipe, steps_per_epoch: int
                   ) -> optax.GradientTransformation:
  """SGD with Nesterov momentum as Keras computes it (the momentum
  accumulates lr-scaled gradients, so a rate change does not rescale the
  velocity), weight decay added to the gradient of every parameter, BN
  included, as the reference."""
  return optax.chain(
      optax.add_decayed_weights(recipe.weight_decay),
      optax.scale_by_learning_rate(lr_schedule(recipe, steps_per_epoch)),
      optax.trace(decay=recipe.momentum, nesterov=True))


def _batch_sum(x, axis_name):
  total = x.sum()
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def distillation_target(bank_logits: jax.Array, student_mean: jax.Array,
                        temperature: float,
                        axis_name: Optional[str] = None
                        ) -> tuple[jax.Array, jax.Array]:
  """The filtered ensemble target (section 8).

  Args:
    bank_logits: [B, K, classes] teachers' logits; teacher 0 is the best.
    student_mean: [B, classes] mean of the student's views' logits.
    axis_name: sums over the batch include every device's shard.
  Returns:
    (target [B, classes], used [K] bools). Teacher k is used when
    sum_b KL(top || M_k) < sum_b KL(top || student); teacher 0 always is.
  """
  bank_logits = bank_logits.astype(jnp.float32)
  top = bank_logits[:, 0]
  student = _batch_sum(losses.kl_divergence(top, student_mean, temperature),
                       axis_name)
  per_teacher = jax.vmap(
      lambda m: _batch_sum(losses.kl_divergence(top, m, temperature),
                           axis_name), in_axes=1)(bank_logits)
  used = (per_teacher < student).at[0].set(True)
  weights = used.astype(jnp.float32) / used.sum()
  return jnp.einsum('bkc,k->bc', bank_logits, weights), used


def views_loss(logits: Sequence[jax.Array], labels: jax.Array,
               bank: Optional[jax.Array], config: StepConfig,
               axis_name: Optional[str] = None) -> tuple[jax.Array, dict]:
  """The mean over views of CE plus, with knowledge, KL_tau towards the
  teacher(s); `logits` holds one [B, classes] float32 array per view.
  Returns (this shard's loss, metrics)."""
  ce = sum(losses.cross_entropy(z, labels).mean() for z in logits)
  kd, used = jnp.zeros(()), jnp.zeros(())
  if config.knowledge == 'single':
    kd = sum(losses.kl_divergence(bank[:, 0], z, config.temperature).mean()
             for z in logits)
    used = jnp.ones(())
  elif config.knowledge == 'ensemble':
    student_mean = jax.lax.stop_gradient(sum(logits) / len(logits))
    target, used_k = distillation_target(bank, student_mean,
                                         config.temperature, axis_name)
    kd = sum(losses.kl_divergence(target, z, config.temperature).mean()
             for z in logits)
    used = used_k.sum().astype(jnp.float32)
  # Sum over views of per-view means, gradient halved: the mean over views.
  loss = (ce + kd) / len(logits)
  return loss, {'loss': loss, 'ce': ce / len(logits), 'kd': kd / len(logits),
                'teachers_used': used}


def augmented_views(config: StepConfig, keys: jax.Array,
                    images: jax.Array) -> list[jax.Array]:
  """`config.views` augmented views of a uint8 batch; view v of image i
  draws from fold_in(keys[i], v). As the reference, colour jitter belongs to
  the two-view (knowledge) path; a single view is only flipped and
  cropped."""
  augment = dict(config.augment)
  if config.views == 1:
    augment['color_jitter'] = False
  return [data_lib.augment_each(jax.vmap(jax.random.fold_in, (0, None))(
      keys, v), images, config.mean, config.std, **augment)
          for v in range(config.views)]


def views_logits(model, variables, views: Sequence[jax.Array]
                 ) -> tuple[list[jax.Array], Any]:
  """Float32 logits of each view and the updated BN statistics. The views
  go through the network as ONE batch, as the reference: BN statistics over
  both views, one running-statistics update."""
  z, updates = model.apply(variables, jnp.concatenate(views), train=True,
                           mutable=['batch_stats'])
  return (jnp.split(z.astype(jnp.float32), len(views)),
          updates['batch_stats'])


def make_step(model, tx: optax.GradientTransformation, config: StepConfig,
              axis_name: Optional[str] = None) -> Callable:
  """step(state, keys [B], uint8 images [B,...], labels [B], bank [B,K,C]
  or None) -> (state, metrics), for one device's shard of the batch.

  With `axis_name`, the shard is part of a global batch: the loss is
  averaged over devices before differentiation (gradients of the replicated
  parameters then come back as the global mean), the teacher filter's sums
  cover the global batch, and BN's running statistics are averaged.
  """
  def loss_fn(params, batch_stats, views, labels, bank):
    logits, batch_stats = views_logits(
        model, {'params': params, 'batch_stats': batch_stats}, views)
    loss, metrics = views_loss(logits, labels, bank, config, axis_name)
    if axis_name is not None:
      loss = jax.lax.pmean(loss, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
    return loss, (batch_stats, metrics)

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


# ---------------------------------------------------------------------------
# Data parallelism.


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


PROGRAMS = ('auto', 'scan', 'loop')


def resolve_program(program: str) -> str:
  """'auto': `loop` on CPU, `scan` elsewhere. Measured here (JAX 0.12, 2
  cores): XLA:CPU runs a ResNet-20 train step ~30x slower inside a while
  loop (`lax.scan`: 17.5 s/step) than as its own program (0.53 s/step)."""
  if program != 'auto':
    return program
  return 'loop' if jax.default_backend() == 'cpu' else 'scan'


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
    donate = () if jax.default_backend() == 'cpu' else (0,)
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
    indices = jax.device_put(indices)  # one transfer per stretch
    metrics = []
    for i in range(len(indices)):
      state, m = run(state, data, indices[i], key)
      if metrics:  # one step stays in flight; report the one before it
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


# ---------------------------------------------------------------------------
# The loop: checkpoints, metrics, evaluation.


class NonFiniteError(FloatingPointError):
  pass


class CheckpointError(RuntimeError):
  pass


@dataclasses.dataclass
class Progress:
  """Host-side bookkeeping saved with every checkpoint."""
  history: list  # one dict per finished epoch
  sums: dict  # this epoch's metric sums so far
  steps: int  # steps in `sums`
  train_seconds: float = 0.0  # compiled training programs, compile excluded
  compile_seconds: float = 0.0


class Checkpoints:
  """Orbax CheckpointManager over (TrainState, Progress); atomic commits,
  the last `keep` kept."""

  def __init__(self, directory: str, keep: int = 2):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=False),
        item_names=('state', 'progress'))

  def save(self, state: TrainState, progress: Progress) -> None:
    ocp = self._ocp
    self.manager.save(
        int(state.step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(
                jax.device_get(state))),
            progress=ocp.args.JsonSave(dataclasses.asdict(progress))),
        force=True)

  def restore(self, template: TrainState
              ) -> Optional[tuple[TrainState, Progress]]:
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
                    Progress(**out['progress']))
      except Exception as e:  # orbax/tensorstore raise many kinds
        logging.warning('checkpoint %d in %s is unreadable (%s: %s)', step,
                        self.manager.directory, type(e).__name__,
                        str(e)[:200])
        failed.append((step, f'{type(e).__name__}: {str(e)[:200]}'))
        continue
      for bad, _ in failed:  # moved aside, so the step can be saved again
        aside = os.path.join(f'{self.manager.directory}_unreadable', str(bad))
        logging.warning('using checkpoint %d; %d moved to %s', step, bad,
                        aside)
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


@dataclasses.dataclass
class FinetuneResult:
  variables: Any
  history: list
  train_seconds: float
  compile_seconds: float
  images_trained: int


def finetune(model, variables: Any, train: data_lib.Split,
             bank_logits: Optional[np.ndarray], test: data_lib.Split,
             config, folder: str, mesh: Optional[Mesh] = None,
             progress: bool = True, section: str = 'finetune'
             ) -> FinetuneResult:
  """Fine-tunes `model` (the slimmed network) from `variables`; resumes
  from the latest checkpoint in `folder/checkpoints`.

  Args:
    bank_logits: [N, K, classes] teachers' logits on `train` (None when
      config[section].knowledge == 'none').
    config: the whole config (config[section], data, augment, seed).
    section: the config section with the recipe: 'finetune', or
      'pretrain' (plain supervised training of the dense network).
  """
  c = config[section]
  mesh = mesh or data_mesh()
  config_lib.check_divides_over_devices(c.batch_size, mesh.size,
                                        f'{section}.batch_size')
  if c.sync_batch_norm:
    model = model.clone(bn_axis_name=DATA_AXIS)
  if c.dtype != 'float32':
    model = model.clone(dtype=jnp.dtype(c.dtype))
  spe = steps_per_epoch(len(train), c.batch_size)
  if spe == 0 and c.epochs:
    raise ValueError(f'config.{section}.batch_size={c.batch_size} is larger '
                     f'than the train split ({len(train)} images)')
  total = c.epochs * spe
  tx = make_optimizer(c, spe)
  schedule = lr_schedule(c, spe)
  step_config = StepConfig.from_config(config, section)
  run_steps = StepRunner(data_parallel(
      make_step(model, tx, step_config, DATA_AXIS), mesh), c.program)

  replicated = NamedSharding(mesh, P())
  put = lambda x: jax.device_put(x, replicated)
  bank = None
  if step_config.knowledge != 'none':
    bank = put(bank_logits)
  data = TrainData(put(train.images), put(train.labels), bank)
  key = put(jax.random.key(config.seed))

  checkpoints = Checkpoints(os.path.join(folder, 'checkpoints'))
  writer = metrics_lib.MetricsWriter(folder, section, step_key='epoch')
  state = TrainState.create(variables, tx)
  restored = checkpoints.restore(state)
  if restored:
    state, prog = restored
    logging.info('%s: resuming at step %d', section, int(state.step))
    writer.write(prog.history)  # a kill may have come before the last write
  else:
    prog = Progress(history=[], sums={}, steps=0)
  state = put(state)
  every = c.checkpoint_every_steps
  bar = tqdm(total=total, initial=int(state.step), desc=f'{section} (steps)',
             disable=not progress)
  try:
    while int(state.step) < total:
      step = int(state.step)
      epoch, within = divmod(step, spe)
      # Checkpoints every `every` steps counted from the epoch's start: at
      # most two stretch lengths, so at most two compiles of a `scan`.
      stop = min((epoch + 1) * spe,
                 epoch * spe + (within // every + 1) * every)
      indices = epoch_order(config.seed, epoch, len(train), spe,
                            c.batch_size)[within:within + stop - step]
      n = len(indices)
      compile_before = run_steps.compile_seconds
      t = time.time()
      state, metrics = run_steps(state, data, indices, key, bar.update)
      metrics = jax.device_get(metrics)
      compiled = run_steps.compile_seconds - compile_before
      prog.train_seconds += time.time() - t - compiled
      prog.compile_seconds += compiled
      _check_finite(metrics, step, folder, section)
      for k, v in metrics.items():
        prog.sums[k] = prog.sums.get(k, 0.0) + float(np.sum(v))
      prog.steps += n
      if stop == (epoch + 1) * spe:
        entry = _epoch_entry(epoch, prog, state, model, test, config,
                             float(schedule(stop - 1)), progress)
        prog = dataclasses.replace(prog, history=[*prog.history, entry],
                                   sums={}, steps=0)
        bar.write(_epoch_line(section, entry, c.epochs))
        checkpoints.save(state, prog)
        writer.write(prog.history)
      else:
        checkpoints.save(state, prog)
  finally:
    bar.close()
    checkpoints.close()
    writer.close()
  return FinetuneResult(jax.device_get(state.variables), prog.history,
                        prog.train_seconds, prog.compile_seconds,
                        total * c.batch_size)


def _check_finite(metrics, step, folder, section):
  bad = [k for k, v in metrics.items() if not np.all(np.isfinite(v))]
  if bad:
    first = min(int(np.argmax(~np.isfinite(metrics[k]))) for k in bad)
    raise NonFiniteError(
        f'{section}: non-finite {", ".join(bad)} at step {step + first + 1}; '
        f'the last good checkpoint in {folder}/checkpoints is kept. To '
        'resume from it, rerun the same command with a lower '
        f'--config.{section}.learning_rate (rerunning unchanged replays '
        'the same steps)')


def _epoch_entry(epoch, prog: Progress, state, model, test, config, lr,
                 progress) -> dict:
  """The epoch's mean train metrics and the test accuracy (running BN
  statistics, one device)."""
  mean = {k: v / prog.steps for k, v in prog.sums.items()}
  accuracy = evaluation.accuracy(
      model.clone(bn_axis_name=None), jax.device_get(state.variables), test,
      config.data.mean, config.data.std, config.data.eval_batch_size,
      progress=progress)
  return {'epoch': epoch + 1, 'train_loss': mean['loss'], 'ce': mean['ce'],
          'kd_loss': mean['kd'], 'teachers_used': mean['teachers_used'],
          'grad_norm': mean['grad_norm'], 'learning_rate': lr,
          'test_accuracy': accuracy}


def _epoch_line(section, entry, epochs) -> str:
  return (f"{section} epoch {entry['epoch']}/{epochs}: loss "
          f"{entry['train_loss']:.4f} (CE {entry['ce']:.4f}, KD "
          f"{entry['kd_loss']:.4f}), teachers {entry['teachers_used']:.2f}, "
          f"lr {entry['learning_rate']:.4g}, test acc "
          f"{entry['test_accuracy']:.2f}%")
