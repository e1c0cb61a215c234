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
from ekg_jax import validate
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


PHASES: dict[str, tuple[str, Callable[[Setup], dict]]] = {
    'evaluate': ('base', evaluate_phase),
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
