"""The pipeline: validate the config, build the supernet, run the phases.

Each phase reads what earlier phases left in the workdir and records its
results under its own key of `summary.json`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ekg_jax import checkpoint as ckpt_lib
from ekg_jax import config as config_lib
from ekg_jax import data as data_lib
from ekg_jax import evaluation
from ekg_jax import flops as flops_lib
from ekg_jax import gates as gates_lib
from ekg_jax import landscape as landscape_lib
from ekg_jax import memory_bank as bank_lib
from ekg_jax import metrics as metrics_lib
from ekg_jax import plots
from ekg_jax import preflight
from ekg_jax import report as report_lib
from ekg_jax import search as search_lib
from ekg_jax import slimming
from ekg_jax import trainer
from ekg_jax import validate
from ekg_jax import warmup as warmup_lib
from ekg_jax import workdir as workdir_lib
from ekg_jax.models import common, create_model

SUMMARY = 'summary.json'
PRETRAINED = os.path.join('pretrain', 'final')


@dataclasses.dataclass
class Setup:
  """What every phase needs: the supernet, its layer table and variables."""
  config: ml_collections.ConfigDict
  workdir: str
  model: common.Supernet
  table: list[gates_lib.LayerSpec]
  gates: dict[str, gates_lib.GateSpec]
  variables: Any

  @property
  def progress(self) -> bool:
    return not self.config.quiet


def input_shape(config) -> tuple[int, int, int]:
  return (config.data.image_size, config.data.image_size, 3)


def build_model(config) -> common.Supernet:
  """The configured network; a slimmed `init_checkpoint` (one written by the
  finetune phase) brings its widths."""
  num_classes = validate.DATASETS[config.data.name]['num_classes']
  model = create_model(config.model.name,
                       **config_lib.model_kwargs(config, num_classes))
  path = config.init_checkpoint
  if path and not path.endswith('.pkl'):
    widths = ckpt_lib.read_model_config(path).get('widths')
    if widths:
      model = model.clone(widths=tuple((g, int(w)) for g, w in widths))
  return model


def init_variables(config, model, workdir: str) -> Any:
  """The init checkpoint (official .pkl or our own), else the pretrain
  phase's network when it finished, else a random init."""
  shape = (1, *input_shape(config))
  init = lambda: model.init(jax.random.key(config.seed),
                            jnp.zeros(shape, jnp.float32))
  path = config.init_checkpoint
  pretrained = os.path.join(workdir, PRETRAINED)
  if not path and os.path.exists(os.path.join(pretrained,
                                              ckpt_lib.MODEL_FILE)):
    path = pretrained
  if not path:
    # Eager on purpose: jitting threefry init of a deep net compiles for
    # tens of seconds on CPU; op-by-op init compiles each op kind once.
    return init()
  reference = jax.eval_shape(init)
  if path.endswith('.pkl'):
    return ckpt_lib.load_official_pkl(path, reference)
  saved = ckpt_lib.read_model_config(path)
  if saved['name'] != config.model.name:
    raise ckpt_lib.CheckpointError(
        f'init_checkpoint {path} holds a {saved["name"]} network; '
        f'config.model.name is {config.model.name!r}')
  return ckpt_lib.load_model_variables(path, reference)


def make_setup(config, workdir) -> Setup:
  model = build_model(config)
  table = gates_lib.layer_table(model, input_shape(config))
  validate.validate_against_model(config, table)
  return Setup(config, workdir, model, table, gates_lib.gate_specs(table),
               init_variables(config, model, workdir))


def load_summary(workdir: str) -> dict:
  path = os.path.join(workdir, SUMMARY)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def record(workdir: str, results: dict) -> dict:
  """Adds a phase's results (summary key -> fields) in one atomic write."""
  summary = {**load_summary(workdir), **results}
  ckpt_lib.write_json_atomic(os.path.join(workdir, SUMMARY), summary)
  return summary


# ---------------------------------------------------------------------------
# Phases.


def load_train(config) -> data_lib.Split:
  return data_lib.load_split(config.data.name, config.data.train_split,
                             config.data.data_dir)


def load_test(config) -> data_lib.Split:
  return data_lib.load_split(config.data.name, config.data.test_split,
                             config.data.data_dir)


def _training_summary(result: trainer.TrainResult, epochs: int,
                      seconds: float, accuracy: float) -> dict:
  return {'test_accuracy': accuracy, 'epochs': epochs,
          'seconds': round(seconds, 2),
          'train_seconds': round(result.train_seconds, 2),
          'compile_seconds': round(result.compile_seconds, 2),
          'images_per_second': round(
              result.images_trained / result.train_seconds, 2)
          if result.train_seconds else None,
          'devices': jax.device_count()}


def _final_accuracy(model, result: trainer.TrainResult, test,
                    setup: Setup) -> float:
  """The last epoch's test accuracy; with zero epochs, the model as it
  is."""
  if result.history:
    return result.history[-1]['test_accuracy']
  return _accuracy(model, result.variables, test, setup)


def pretrain_phase(setup: Setup) -> dict:
  """Supervised training of the dense network from its random init (the
  recipe in config.pretrain); later phases start from it."""
  c = setup.config
  folder = os.path.join(setup.workdir, 'pretrain')
  train, test = load_train(c), load_test(c)
  start = time.time()
  result = trainer.train(setup.model, setup.variables, train, None,
                                 test, c, folder, progress=setup.progress,
                                 section='pretrain')
  ckpt_lib.save_model(os.path.join(setup.workdir, PRETRAINED), c.model.name,
                      {}, result.variables)
  setup.variables = result.variables
  accuracy = _final_accuracy(setup.model, result, test, setup)
  return {'pretrain': _training_summary(result, c.pretrain.epochs,
                                        time.time() - start, accuracy)}


def _accuracy(model, variables, test, setup) -> float:
  c = setup.config
  return evaluation.accuracy(model, variables, test, c.data.mean, c.data.std,
                             c.data.eval_batch_size, progress=setup.progress)


def evaluate_phase(setup: Setup) -> dict:
  """Test accuracy (running BN statistics), FLOPs and params of the initial
  network."""
  c = setup.config
  start = time.time()
  test = load_test(c)
  acc = _accuracy(setup.model, setup.variables, test, setup)
  return {'base': {'test_accuracy': acc, 'test_images': len(test),
                   'flops': flops_lib.count_flops(setup.table),
                   'params': flops_lib.count_params(setup.table),
                   'seconds': round(time.time() - start, 2)}}


def search_phase(setup: Setup) -> dict:
  """Warm-up, then the greedy search to the FLOPs target (resumable: the
  state is checkpointed after every accepted step)."""
  c = setup.config
  folder = os.path.join(setup.workdir, 'search')
  os.makedirs(folder, exist_ok=True)
  variables, warmup_seconds = _warmed_up(setup)
  batches = _validation_batches(c)
  config = search_lib.SearchConfig.from_config(c.search, seed=c.seed)
  problem = search_lib.SearchProblem(
      search_lib.Evaluator(setup.model, setup.table, config), variables,
      batches, config)
  state_path = os.path.join(folder, 'state.npz')
  names = list(setup.gates)

  writer = metrics_lib.MetricsWriter(folder, 'search', step_key='step')

  def save(state):
    search_lib.save_state(state_path, state, names)
    ckpt_lib.write_json_atomic(os.path.join(folder, 'history.json'),
                               state.history)
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
      'kept_channels': kept}}


def class_subset(config, per_class: int, from_end: bool) -> data_lib.Split:
  """A fixed per-class subset of the train split (section 5), decoding only
  its images."""
  d = config.data
  labels = data_lib.load_labels(d.name, d.train_split, d.data_dir)
  indices = data_lib.class_subset_indices(labels, per_class, from_end,
                                          seed=d.subset_seed)
  return data_lib.load_split(d.name, d.train_split, d.data_dir, indices)


def _warmed_up(setup: Setup) -> tuple[Any, float]:
  """The supernet's weights during the search (and for the memory bank and
  slimming): the init weights, warmed up once and saved."""
  c = setup.config
  if not c.search.warmup:
    return setup.variables, 0.0
  path = os.path.join(setup.workdir, 'search', 'warmup')
  if os.path.exists(os.path.join(path, ckpt_lib.MODEL_FILE)):
    saved = ckpt_lib.read_model_config(path)
    return (ckpt_lib.load_model_variables(path, setup.variables),
            saved['seconds'])
  start = time.time()
  subset = class_subset(c, c.data.warmup_per_class, from_end=False)
  variables = warmup_lib.warmup(setup.model, setup.variables, subset,
                                c.data.mean, c.data.std, c.warmup)
  seconds = round(time.time() - start, 2)
  ckpt_lib.save_model(path, c.model.name, {'seconds': seconds}, variables)
  logging.info('warm-up: %d images in %.1fs', len(subset), seconds)
  return variables, seconds


def _validation_batches(config) -> search_lib.Batches:
  """The search's fixed validation batches (section 5)."""
  val = class_subset(config, config.data.val_per_class, from_end=True)
  return search_lib.Batches.from_split(val, config.search.batch_size,
                                       config.data.mean, config.data.std)


def landscape_phase(setup: Setup) -> dict:
  """Loss-landscape measures of the searched sub-network, slimmed, before
  any fine-tuning, on the search's validation batches; and its test
  accuracy with running and with per-batch BN statistics."""
  c = setup.config
  state = _finished_search(setup)
  folder = os.path.join(setup.workdir, 'landscape')
  os.makedirs(folder, exist_ok=True)
  test = load_test(c)
  variables, _ = _warmed_up(setup)
  model, variables = slimming.slim(setup.model, variables, state.masks(),
                                   setup.table)
  batches = _validation_batches(c)
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
          'top_eigenvalues', 'condition', 'trace', 'trace_standard_error')
  return {'landscape': {**{k: result[k] for k in keys}, **accuracy,
                        'bn': config.bn, 'seconds': round(seconds, 2)}}


def _finished_search(setup: Setup) -> search_lib.SearchState:
  path = os.path.join(setup.workdir, 'search', 'state.npz')
  if not ckpt_lib.npz_exists(path) or 'search' not in load_summary(
      setup.workdir):
    raise validate.ConfigError(
        f'no finished search in {setup.workdir}: run --config.phases=search '
        'first')
  return search_lib.load_state(path, setup.gates)


def memory_bank_phase(setup: Setup) -> dict:
  """Logits of K teachers from the search history on every train image
  (section 6), checkpointed every few batches."""
  c = setup.config
  state = _finished_search(setup)
  folder = os.path.join(setup.workdir, 'memory_bank')
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, 'bank.npz')
  train = load_train(c)
  variables, _ = _warmed_up(setup)
  if ckpt_lib.npz_exists(path):
    bank = bank_lib.MemoryBank.load(path)
    logging.info('memory bank: resuming at image %d', bank.done)
  else:
    losses = bank_lib.teacher_candidates(state.history)
    try:
      teachers = bank_lib.select_teachers(losses, c.memory_bank.num_teachers)
    except ValueError as e:
      raise validate.ConfigError(f'config.memory_bank.{e}') from None
    bank = bank_lib.MemoryBank(
        np.zeros((len(train), len(teachers), setup.model.num_classes),
                 jnp.dtype(c.memory_bank.dtype)),
        teachers, [losses[i] for i in teachers], done=0)
  masks = bank_lib.teacher_masks(state.history, state.ranks_history,
                                 bank.teachers)

  def save(bank):
    bank.save(path)
    writer.write([{'images': bank.done, 'seconds': round(bank.seconds, 2),
                   'images_per_second': round(bank.done / bank.seconds, 2)}])

  with metrics_lib.MetricsWriter(folder, 'memory_bank',
                                 step_key='images') as writer:
    bank = bank_lib.build(
        setup.model, variables, train, masks, c.memory_bank.batch_size,
        c.data.mean, c.data.std, bank, on_checkpoint=save,
        checkpoint_every=c.memory_bank.checkpoint_every_batches,
        progress=setup.progress)
  return {'memory_bank': {
      'teachers': bank.teachers, 'teacher_val_loss': bank.teacher_val_loss,
      'images': len(train), 'dtype': c.memory_bank.dtype,
      'bytes': int(bank.logits.nbytes), 'seconds': round(bank.seconds, 2)}}


def finetune_phase(setup: Setup) -> dict:
  """Slims the searched network and fine-tunes it with the memory bank's
  knowledge (sections 7-8); saves the final model in finetune/final."""
  c = setup.config
  state = _finished_search(setup)
  folder = os.path.join(setup.workdir, 'finetune')
  os.makedirs(folder, exist_ok=True)
  train, test = load_train(c), load_test(c)
  variables, _ = _warmed_up(setup)
  model, variables = slimming.slim(setup.model, variables,
                                   state.masks(), setup.table)
  table = gates_lib.layer_table(model, input_shape(c))
  flops, params = flops_lib.count_flops(table), flops_lib.count_params(table)
  searched = load_summary(setup.workdir)['search']
  if flops != searched['flops']:
    raise RuntimeError(f'slimmed network has {flops} FLOPs, the search '
                       f'reported {searched["flops"]}')
  bank_logits = None
  if c.finetune.knowledge != 'none':
    bank = bank_lib.MemoryBank.load(
        os.path.join(setup.workdir, 'memory_bank', 'bank.npz'))
    if not bank.complete or len(bank.logits) != len(train):
      raise validate.ConfigError(
          'the memory bank does not cover the train split '
          f'({bank.done} of {len(train)} images; damaged?): remove '
          f'{setup.workdir}/memory_bank and the "memory_bank" entry of '
          f'{SUMMARY}, then rerun to rebuild it')
    bank_logits = bank.logits
  start = time.time()
  result = trainer.train(model, variables, train, bank_logits, test,
                                 c, folder, progress=setup.progress)
  final = os.path.join(folder, 'final')
  ckpt_lib.save_model(final, c.model.name, {'widths': model.widths},
                      result.variables)
  accuracy = _final_accuracy(model, result, test, setup)
  dense = flops_lib.count_flops(setup.table)
  return {
      'finetune': {**_training_summary(result, c.finetune.epochs,
                                       time.time() - start, accuracy),
                   'knowledge': c.finetune.knowledge, 'checkpoint': final},
      'final': {'test_accuracy': accuracy, 'flops': flops, 'params': params,
                'flops_reduction': round(1.0 - flops / dense, 4)}}


# Phase name -> (the summary key that marks it finished, the phase).
PHASES: dict[str, tuple[str, Callable[[Setup], dict]]] = {
    'pretrain': ('pretrain', pretrain_phase),
    'evaluate': ('base', evaluate_phase),
    'search': ('search', search_phase),
    'landscape': ('landscape', landscape_phase),
    'memory_bank': ('memory_bank', memory_bank_phase),
    'finetune': ('finetune', finetune_phase),
}


# Files whose presence means a phase has started producing results (it
# resumes from them), before its summary entry marks it finished.
STATE_FILES = {
    'pretrain': ('pretrain/checkpoints', PRETRAINED),
    'search': ('search/state.npz', 'search/warmup'),
    'memory_bank': ('memory_bank/bank.npz',),
    'finetune': ('finetune/checkpoints',),
}


def produced_phases(workdir: str, summary: dict) -> list[str]:
  """Phases that finished or left state behind in `workdir`."""
  def present(rel):
    path = os.path.join(workdir, rel)
    return (os.path.isfile(path) or ckpt_lib.npz_exists(path)
            if not os.path.isdir(path) else bool(os.listdir(path)))
  return [name for name, (key, _) in PHASES.items()
          if key in summary or any(present(f) for f in
                                   STATE_FILES.get(name, ()))]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured phases in order, skipping finished ones (a rerun
  resumes an interrupted phase); returns the summary.

  Every check that the config, the data's sizes, the checkpoint and the
  model allow happens before any phase computes, and the workdir's config
  is pinned only for phases that produced something: a run that fails
  before that leaves the workdir reusable with a corrected config.
  """
  validate.validate_config(config)
  validate.validate_workdir_path(workdir)
  phases = validate.parse_phases(config.phases)
  validate.validate_devices(config, jax.device_count())
  with workdir_lib.lock(workdir):
    summary = load_summary(workdir)
    produced = produced_phases(workdir, summary)
    workdir_lib.check_config(config, workdir, produced)
    validate.validate_workdir(config, phases, summary)
    todo = [name for name in config_lib.PHASES
            if name in phases and PHASES[name][0] not in summary
            and not (name == 'pretrain' and config.init_checkpoint)]
    weights = preflight.check_weights(config, todo, workdir, PRETRAINED)
    if produced and summary.get('weights', weights) != weights:
      raise workdir_lib.WorkdirError(
          f'{workdir} holds results computed from {summary["weights"]}; '
          f'this run would use {weights}: use a new --workdir')
    preflight.check_data(config, todo)  # sizes and labels: seconds
    setup = make_setup(config, workdir)  # the checkpoint and model checks
    workdir_lib.save_config(config, workdir)
    if todo and summary.get('weights') != weights:
      summary = record(workdir, {'weights': weights})
    for name in config_lib.PHASES:
      key, phase = PHASES[name]
      if name not in phases:
        continue
      if name not in todo:
        logging.info('phase %s: finished earlier or not needed, skipped',
                     name)
        continue
      logging.info('phase %s', name)
      results = phase(setup)
      summary = record(workdir, results)  # one write: the phase is done
      print(json.dumps(results, indent=2), flush=True)
    report_lib.write_report(workdir, summary, setup.gates)
  return summary
