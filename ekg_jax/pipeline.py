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

from ekg_jax import checkpoint as ckpt_lib
from ekg_jax import config as config_lib
from ekg_jax import data as data_lib
from ekg_jax import evaluation
from ekg_jax import flops as flops_lib
from ekg_jax import gates as gates_lib
from ekg_jax import plots
from ekg_jax import search as search_lib
from ekg_jax import validate
from ekg_jax import warmup as warmup_lib
from ekg_jax.models import common, create_model

SUMMARY = 'summary.json'


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
  num_classes = validate.DATASETS[config.data.name]['num_classes']
  return create_model(config.model.name,
                      **config_lib.model_kwargs(config, num_classes))


def init_variables(config, model) -> Any:
  """Random init, or the init checkpoint (official .pkl or our own)."""
  shape = (1, *input_shape(config))
  init = lambda: model.init(jax.random.key(config.seed),
                            jnp.zeros(shape, jnp.float32))
  path = config.init_checkpoint
  if not path:
    # Eager on purpose: jitting threefry init of a deep net compiles for
    # tens of seconds on CPU; op-by-op init compiles each op kind once.
    return init()
  reference = jax.eval_shape(init)
  if path.endswith('.pkl'):
    return ckpt_lib.load_official_pkl(path, reference)
  saved = ckpt_lib.read_model_config(path)
  if saved['name'] != config.model.name or saved.get('widths'):
    raise ckpt_lib.CheckpointError(
        f'init_checkpoint {path} holds a {saved["name"]} network'
        f'{" (slimmed)" if saved.get("widths") else ""}; config.model.name '
        f'is {config.model.name!r}')
  return ckpt_lib.load_model_variables(path, reference)


def make_setup(config, workdir) -> Setup:
  model = build_model(config)
  table = gates_lib.layer_table(model, input_shape(config))
  validate.validate_against_model(config, table)
  return Setup(config, workdir, model, table, gates_lib.gate_specs(table),
               init_variables(config, model))


def load_summary(workdir: str) -> dict:
  path = os.path.join(workdir, SUMMARY)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def record(workdir: str, key: str, results: dict) -> dict:
  summary = load_summary(workdir)
  summary[key] = results
  ckpt_lib.write_json_atomic(os.path.join(workdir, SUMMARY), summary)
  return summary


# ---------------------------------------------------------------------------
# Phases.


def evaluate_phase(setup: Setup) -> dict:
  """Test accuracy (running BN statistics), FLOPs and params of the initial
  network."""
  c = setup.config
  start = time.time()
  test = data_lib.load_split(c.data.name, c.data.test_split, c.data.data_dir)
  acc = evaluation.accuracy(setup.model, setup.variables, test, c.data.mean,
                            c.data.std, c.data.eval_batch_size,
                            progress=setup.progress)
  return {'test_accuracy': acc, 'test_images': len(test),
          'flops': flops_lib.count_flops(setup.table),
          'params': flops_lib.count_params(setup.table),
          'seconds': round(time.time() - start, 2)}


def search_phase(setup: Setup) -> dict:
  """Warm-up, then the greedy search to the FLOPs target (resumable: the
  state is checkpointed after every accepted step)."""
  c = setup.config
  folder = os.path.join(setup.workdir, 'search')
  os.makedirs(folder, exist_ok=True)
  train = data_lib.load_split(c.data.name, c.data.train_split,
                              c.data.data_dir)
  variables, warmup_seconds = _warmed_up(setup, train, folder)
  val = train.subset(data_lib.class_subset_indices(
      train.labels, c.data.val_per_class, from_end=True,
      seed=c.data.subset_seed))
  batches = search_lib.Batches.from_split(val, c.search.batch_size,
                                         c.data.mean, c.data.std)
  config = search_lib.SearchConfig.from_config(c.search, seed=c.seed)
  problem = search_lib.SearchProblem(
      search_lib.Evaluator(setup.model, setup.table, config), variables,
      batches, config)
  state_path = os.path.join(folder, 'state.npz')
  names = list(setup.gates)

  def save(state):
    search_lib.save_state(state_path, state, names)
    ckpt_lib.write_json_atomic(os.path.join(folder, 'history.json'),
                               state.history)

  if os.path.exists(state_path):
    state = search_lib.load_state(state_path, setup.gates)
    logging.info('search: resuming after step %d', state.step)
  else:
    state = search_lib.init_state(problem)
    save(state)
  state = search_lib.run_search(problem, state, on_step=save,
                                progress=setup.progress)
  save(state)  # a kill between the two files of the last save left one stale
  final = state.history[-1]
  kept = final['kept']
  plots.search_plot(os.path.join(folder, 'search.png'), state.history,
                    {g: s.channels for g, s in setup.gates.items()},
                    config.target_flops_rate)
  return {'flops': flops_lib.count_flops(setup.table, kept),
          'params': flops_lib.count_params(setup.table, kept),
          'flops_rate': final['flops_rate'],
          'flops_rate_without_bn': flops_lib.flops_rate(setup.table, kept),
          'steps': state.step,
          'seconds': round(warmup_seconds +
                           sum(e['seconds'] for e in state.history), 2),
          'val_loss': final['val_loss'],
          'kept_channels': kept}


def _warmed_up(setup: Setup, train, folder) -> tuple[Any, float]:
  """The network the search starts from, warmed up once and saved."""
  c = setup.config
  if not c.search.warmup:
    return setup.variables, 0.0
  path = os.path.join(folder, 'warmup')
  if os.path.exists(os.path.join(path, ckpt_lib.MODEL_FILE)):
    saved = ckpt_lib.read_model_config(path)
    return (ckpt_lib.load_model_variables(path, setup.variables),
            saved['seconds'])
  start = time.time()
  subset = train.subset(data_lib.class_subset_indices(
      train.labels, c.data.warmup_per_class, from_end=False,
      seed=c.data.subset_seed))
  variables = warmup_lib.warmup(setup.model, setup.variables, subset,
                                c.data.mean, c.data.std, c.warmup)
  seconds = round(time.time() - start, 2)
  ckpt_lib.save_model(path, c.model.name, {'seconds': seconds}, variables)
  logging.info('warm-up: %d images in %.1fs', len(subset), seconds)
  return variables, seconds


PHASES: dict[str, tuple[str, Callable[[Setup], dict]]] = {
    'evaluate': ('base', evaluate_phase),
    'search': ('search', search_phase),
}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured phases in order; returns the summary."""
  validate.validate_config(config)
  phases = validate.parse_phases(config.phases)
  os.makedirs(workdir, exist_ok=True)
  setup = make_setup(config, workdir)
  summary = load_summary(workdir)
  for name in config_lib.PHASES:
    if name not in phases:
      continue
    key, phase = PHASES[name]
    logging.info('phase %s', name)
    summary = record(workdir, key, phase(setup))
    print(json.dumps({key: summary[key]}, indent=2), flush=True)
  return summary
