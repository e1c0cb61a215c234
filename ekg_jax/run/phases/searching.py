"""The phases of the search and what it leaves: search, landscape and
memory_bank."""

from __future__ import annotations

import logging
import os
import time


from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.training import evaluation
from ekg_jax.supernet import flops as flops_lib
from ekg_jax.search import landscape as landscape_lib
from ekg_jax.knowledge import memory_bank as bank_lib
from ekg_jax.training import metrics as metrics_lib
from ekg_jax.run import plots
from ekg_jax import search as search_lib
from ekg_jax.supernet import slimming
from ekg_jax.run import validate
from ekg_jax.run import workdir as workdir_lib
from ekg_jax.run.phases.common import (Setup, finished_search, input_shape,
                                       load_test, load_train_in_order,
                                       unreadable_records, validation_batches,
                                       warmed_up)


def search_phase(setup: Setup) -> dict:
  """Warm-up, then the greedy search to the FLOPs target (resumable: the
  state is checkpointed after every accepted step)."""
  c = setup.config
  folder = workdir_lib.phase_dir(setup.workdir, 'search')
  os.makedirs(folder, exist_ok=True)
  variables, warmup_seconds = warmed_up(setup)
  batches = validation_batches(c)
  config = search_lib.SearchConfig.from_config(c.search, seed=c.seed)
  problem = search_lib.SearchProblem(
      search_lib.Evaluator(setup.model, setup.table, config), variables,
      batches, config)
  state_path = os.path.join(setup.workdir, workdir_lib.SEARCH_STATE)
  names = list(setup.gates)

  writer = metrics_lib.MetricsWriter(folder, 'search', step_key='step')

  def save(state):
    search_lib.save_state(state_path, state, names)
    ckpt_lib.write_json_atomic(
        os.path.join(setup.workdir, workdir_lib.SEARCH_HISTORY), state.history)
    writer.write([{k: v for k, v in e.items() if k != 'kept'}
                  for e in state.history])

  if ckpt_lib.npz_exists(state_path):
    state = search_lib.load_state(state_path, setup.gates)
    logging.info('search: resuming after step %d', state.step)
  else:
    state = search_lib.init_state(problem)
    save(state)
  with writer:
    state = search_lib.run_search(problem, state, on_step=save,
                                  progress=setup.progress)
    save(state)  # a kill between the files of the last save left one stale
  final = state.history[-1]
  kept = final['kept']
  plots.search_plot(os.path.join(folder, 'search.png'), state.history,
                    {g: s.channels for g, s in setup.gates.items()},
                    config.target_flops_rate)
  return {'search': {
      'flops': flops_lib.count_flops(setup.table, kept),
      'params': flops_lib.count_params(setup.table, kept),
      'flops_rate': final['flops_rate'],
      'flops_rate_without_bn': flops_lib.flops_rate(setup.table, kept),
      'steps': state.step,
      'seconds': round(warmup_seconds +
                       sum(e['seconds'] for e in state.history), 2),
      'val_loss': final['val_loss'],
      'kept_channels': kept,
      'breakdown': step_parts(state.history)}}


def step_parts(history) -> dict:
  """Where the search steps' seconds went, summed over the steps (entries
  written before these fields existed count 0)."""
  total = {part: sum(e.get(f'{part}_seconds', 0.0) for e in history)
           for part in ('importance', 'candidates')}
  steps = sum(e['seconds'] for e in history if e['step'] > 0)
  return {'steps_seconds': round(steps, 2),
          **{f'steps_{part}_seconds': round(v, 2) for part, v in total.items()},
          'steps_host_seconds': round(steps - sum(total.values()), 2)}


def landscape_phase(setup: Setup) -> dict:
  """Loss-landscape measures of the searched sub-network, slimmed, before
  any fine-tuning, on the search's validation batches; and its test
  accuracy with running and with per-batch BN statistics."""
  c = setup.config
  state = finished_search(setup)
  folder = workdir_lib.phase_dir(setup.workdir, 'landscape')
  os.makedirs(folder, exist_ok=True)
  test = load_test(c)
  variables, _ = warmed_up(setup)
  model, variables = slimming.slim(setup.model, variables, state.masks(),
                                   setup.table, input_shape=input_shape(c))
  batches = validation_batches(c, c.landscape.subset)
  config = landscape_lib.LandscapeConfig.from_config(c.landscape)
  start = time.time()
  result = landscape_lib.analyse(
      landscape_lib.dataset_loss(model, variables, batches.images,
                                 batches.labels, config.bn),
      variables['params'], config)
  seconds = time.time() - start
  ckpt_lib.write_json_atomic(os.path.join(folder, 'landscape.json'), result)
  landscape_lib.plot(os.path.join(folder, 'landscape.png'), result,
                     c.model.name)
  accuracy = {
      f'test_accuracy_{bn}_bn': evaluation.accuracy(
          model, variables, test, c.data.mean, c.data.std,
          c.search.batch_size if bn == 'batch' else c.data.eval_batch_size,
          progress=setup.progress, bn=bn)
      for bn in evaluation.BN_MODES}
  keys = ('loss', 'parameters', 'lambda_max', 'lambda_min',
          'top_eigenvalues', 'condition', 'trace', 'trace_standard_error',
          'lanczos_steps', 'lambda_min_trajectory')
  return {'landscape': {**{k: result[k] for k in keys}, **accuracy,
                        'bn': config.bn, 'subset': c.landscape.subset,
                        'seed': config.seed,
                        'seconds': round(seconds, 2)}}


def memory_bank_phase(setup: Setup) -> dict:
  """Logits of K teachers from the search history on every train image
  (section 6), checkpointed every few batches."""
  c = setup.config
  state = finished_search(setup)
  folder = workdir_lib.phase_dir(setup.workdir, 'memory_bank')
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(setup.workdir, workdir_lib.MEMORY_BANK)
  options = bank_lib.BankOptions.from_config(c.memory_bank)
  train = load_train_in_order(c)
  variables, _ = warmed_up(setup)
  if ckpt_lib.npz_exists(path):
    bank = bank_lib.MemoryBank.load(path)
    logging.info('memory bank: resuming at image %d', bank.done)
  else:
    try:  # too many teachers for the history: named as the config's key
      bank_lib.select_teachers(bank_lib.teacher_candidates(state.history),
                               options.num_teachers)
    except ValueError as e:
      raise validate.ConfigError(f'config.memory_bank.{e}') from None
    bank = bank_lib.empty_bank(state.history, len(train),
                               setup.model.num_classes, options,
                               c.finetune.temperature)
  masks = bank_lib.teacher_masks(state.history, state.ranks_history,
                                 bank.teachers)

  def save(bank):
    bank.save(path)
    writer.write([{'images': bank.done, 'seconds': round(bank.seconds, 2),
                   'images_per_second': round(bank.done / bank.seconds, 2)}])

  with metrics_lib.MetricsWriter(folder, 'memory_bank',
                                 step_key='images') as writer:
    bank = bank_lib.build(
        setup.model, variables, train, masks, options.batch_size,
        c.data.mean, c.data.std, bank, on_checkpoint=save,
        checkpoint_every=options.checkpoint_every_batches,
        progress=setup.progress)
  return {'memory_bank': {
      'teachers': bank.teachers, 'teacher_val_loss': bank.teacher_val_loss,
      'images': len(train), 'dtype': options.dtype,
      'top_k': bank.top_k, 'bytes': bank.nbytes,
      'seconds': round(bank.seconds, 2), **unreadable_records(train)}}
