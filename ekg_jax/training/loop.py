"""The training loop: epochs of compiled step stretches, checkpoints that
resume to the same parameters, metrics and a test evaluation per epoch.
Fine-tuning (with the memory bank's knowledge) and pretraining (without)
both run it; it takes option records (`training.options`), never a config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from ekg_jax.files import checkpoint
from ekg_jax import rules
from ekg_jax.data import datasets as data_lib
from ekg_jax.runtime import distributed
from ekg_jax.training import evaluation
from ekg_jax.training import feeds
from ekg_jax.training import metrics as metrics_lib
from ekg_jax.training.distill import StepConfig
from ekg_jax.training.optimizers import lr_schedule, make_optimizer
from ekg_jax.training.options import InputOptions, TrainOptions
from ekg_jax.training.steps import (DATA_AXIS, TrainState, data_mesh,
                                    data_parallel, make_step, steps_per_epoch)


class NonFiniteError(FloatingPointError):
  pass


@dataclasses.dataclass
class Progress:
  """Host-side bookkeeping saved with every checkpoint."""
  history: list  # one dict per finished epoch
  sums: dict  # this epoch's metric sums so far
  steps: int  # steps in `sums`
  train_seconds: float = 0.0  # compiled training programs, compile excluded
  compile_seconds: float = 0.0
  # The input stream's position (a Grain iterator's state; None for the
  # in-memory pipeline), saved with the model so a resumed run reads on
  # from the same record.
  data_state: Optional[dict] = None


@dataclasses.dataclass
class TrainResult:
  variables: Any
  history: list
  train_seconds: float
  compile_seconds: float
  images_trained: int
  data_stats: dict = dataclasses.field(default_factory=dict)  # the feed's


def train(model, variables: Any, train: data_lib.Split,
          bank_logits: Optional[np.ndarray], test: Optional[data_lib.Split],
          options: TrainOptions, folder: str, *,
          inputs: InputOptions = InputOptions(), feed: type = feeds.MemoryFeed,
          mesh: Optional[Mesh] = None, progress: bool = True,
          name: str = 'finetune', loss: Optional[Callable] = None
          ) -> TrainResult:
  """Trains `model` (for fine-tuning, the slimmed network) from
  `variables`; resumes from the latest checkpoint in `folder/checkpoints`.

  Args:
    train: what the feed reads (a `Split` for `feeds.MemoryFeed`; the
      run's pipeline gives it, `input_pipeline.of(config).train`).
    bank_logits: [N, K, classes] teachers' logits on `train` (None when
      options.knowledge == 'none').
    test: evaluated after every epoch (None: not evaluated, the history's
      test_accuracy is None).
    options: the recipe (optimizer, schedule, knowledge).
    inputs: normalisation, augmentation and the stream's settings.
    feed: `feeds.MemoryFeed` (train split on the device) or
      `feeds.StreamFeed`.
    name: the phase (metrics, messages and the config keys they name):
      'finetune' or 'pretrain'.
    loss: replaces `distill.views_loss` (see `steps.make_step`).
  """
  c = options
  section = name
  mesh = mesh or data_mesh()
  rules.check_divides(c.batch_size, mesh.size, f'{section}.batch_size')
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
  step_config = StepConfig.from_options(options, inputs)
  feed = feed(
      train, bank_logits if step_config.knowledge != 'none' else None,
      data_parallel(make_step(model, tx, step_config, DATA_AXIS, loss), mesh),
      mesh, options, inputs, section)

  put = lambda x: distributed.replicate(mesh, x)
  key = put(jax.random.key(options.seed))

  checkpoints = checkpoint.TrainCheckpoints(
      os.path.join(folder, 'checkpoints'))
  writer = metrics_lib.MetricsWriter(folder, section, step_key='epoch')
  state = TrainState.create(variables, tx)
  restored = checkpoints.restore(state)
  if restored:
    state, prog = restored[0], Progress(**restored[1])
    feed.set_state(prog.data_state)
    logging.info('%s: resuming at step %d', section, int(state.step))
    writer.write(prog.history)  # a kill may have come before the last write
  else:
    prog = Progress(history=[], sums={}, steps=0)
  state = put(state)
  every = c.checkpoint_every_steps
  primary = distributed.is_primary()  # the one process that reports
  bar = tqdm(total=total, initial=int(state.step), desc=f'{section} (steps)',
             disable=not (progress and primary))
  try:
    while int(state.step) < total:
      step = int(state.step)
      epoch, within = divmod(step, spe)
      # Checkpoints every `every` steps counted from the epoch's start: at
      # most two stretch lengths, so at most two compiles of a `scan`.
      stop = min((epoch + 1) * spe,
                 epoch * spe + (within // every + 1) * every)
      n = stop - step
      compile_before = feed.compile_seconds
      t = time.time()
      state, metrics = feed.run(state, step, n, key, bar.update)
      metrics = jax.device_get(metrics)
      compiled = feed.compile_seconds - compile_before
      prog.train_seconds += time.time() - t - compiled
      prog.compile_seconds += compiled
      _check_finite(metrics, step, folder, section)
      for k, v in metrics.items():
        prog.sums[k] = prog.sums.get(k, 0.0) + float(np.sum(v))
      prog.steps += n
      prog.data_state = feed.get_state()
      if stop == (epoch + 1) * spe:
        entry = _epoch_entry(epoch, prog, state, model, test, inputs,
                             float(schedule(stop - 1)), progress and primary)
        prog = dataclasses.replace(prog, history=[*prog.history, entry],
                                   sums={}, steps=0)
        if primary:
          bar.write(_epoch_line(section, entry, c.epochs))
        checkpoints.save(state, dataclasses.asdict(prog))
        writer.write(prog.history)
      else:
        checkpoints.save(state, dataclasses.asdict(prog))
  finally:
    bar.close()
    feed.close()
    checkpoints.close()
    writer.close()
  return TrainResult(jax.device_get(state.variables), prog.history,
                     prog.train_seconds, prog.compile_seconds,
                     total * c.batch_size, feed.stats)


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


def _epoch_entry(epoch, prog: Progress, state, model, test,
                 inputs: InputOptions, lr, progress) -> dict:
  """The epoch's mean train metrics and the test accuracy (running BN
  statistics, one device)."""
  mean = {k: v / prog.steps for k, v in prog.sums.items()}
  accuracy = None if test is None else evaluation.accuracy(
      model.clone(bn_axis_name=None), jax.device_get(state.variables), test,
      inputs.mean, inputs.std, inputs.eval_batch_size,
      progress=progress)
  return {'epoch': epoch + 1, 'train_loss': mean['loss'], 'ce': mean['ce'],
          'kd_loss': mean['kd'], 'teachers_used': mean['teachers_used'],
          'grad_norm': mean['grad_norm'], 'learning_rate': lr,
          'test_accuracy': accuracy}


def _epoch_line(section, entry, epochs) -> str:
  accuracy = entry['test_accuracy']
  return (f"{section} epoch {entry['epoch']}/{epochs}: loss "
          f"{entry['train_loss']:.4f} (CE {entry['ce']:.4f}, KD "
          f"{entry['kd_loss']:.4f}), teachers {entry['teachers_used']:.2f}, "
          f"lr {entry['learning_rate']:.4g}" +
          ('' if accuracy is None else f', test acc {accuracy:.2f}%'))
