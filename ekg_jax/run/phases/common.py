"""What every phase needs: the configured network, its layer table and
variables (`Setup`), the data, and the supernet as the search leaves it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.files import official
from ekg_jax import config as config_lib
from ekg_jax.data import datasets as data_lib
from ekg_jax.training import evaluation
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.training import input_pipeline
from ekg_jax.data import prepare
from ekg_jax import search as search_lib
from ekg_jax.training import loop
from ekg_jax.training.options import InputOptions, TrainOptions
from ekg_jax.run import validate
from ekg_jax.search import warmup as warmup_lib
from ekg_jax.run import workdir as workdir_lib
from ekg_jax.supernet.model import Supernet
from ekg_jax.models import create_model


@dataclasses.dataclass
class Setup:
  """What every phase needs: the supernet, its layer table and variables."""
  config: ml_collections.ConfigDict
  workdir: str
  model: Supernet
  table: list[gates_lib.LayerSpec]
  gates: dict[str, gates_lib.GateSpec]
  variables: Any

  @property
  def progress(self) -> bool:
    return not self.config.quiet


def input_shape(config) -> tuple[int, int, int]:
  return (config.data.image_size, config.data.image_size, 3)


def build_model(config) -> Supernet:
  """The configured network; a slimmed `init_checkpoint` (one written by the
  finetune phase) brings its widths."""
  num_classes = data_lib.num_classes(config.data.name, config.data.data_dir,
                                     config.data.train_split)
  model = create_model(config.model.name,
                       **config_lib.model_kwargs(config, num_classes))
  path = prepare.init_checkpoint_path(config)  # 'official': its local copy
  if path and not path.endswith('.pkl'):
    model = with_checkpoint_widths(model, path)
  return model


def with_checkpoint_widths(model: Supernet, path: str) -> Supernet:
  """`model` with the widths a checkpoint of ours records (a slimmed
  network's), unchanged for a dense one: the one way a network is rebuilt
  from its checkpoint."""
  widths = ckpt_lib.read_model_config(path).get('widths')
  if not widths:
    return model
  return model.clone(widths=tuple((g, int(w)) for g, w in widths))


def init_variables(config, model, workdir: str) -> Any:
  """The init checkpoint (official .pkl or our own), else the pretrain
  phase's network when it finished, else a random init."""
  shape = (1, *input_shape(config))
  init = lambda: model.init(jax.random.key(config.seed),
                            jnp.zeros(shape, jnp.float32))
  path = prepare.init_checkpoint_path(config)
  pretrained = os.path.join(workdir, workdir_lib.PRETRAINED)
  if not path and os.path.exists(os.path.join(pretrained,
                                              ckpt_lib.MODEL_FILE)):
    path = pretrained
  if not path:
    # Eager on purpose: jitting threefry init of a deep net compiles for
    # tens of seconds on CPU; op-by-op init compiles each op kind once.
    return init()
  reference = jax.eval_shape(init)
  if path.endswith('.pkl'):
    return official.load_official_pkl(path, reference)
  with finished_result(path == pretrained and 'pretrain'):
    saved = ckpt_lib.read_model_config(path)
    if saved['name'] != config.model.name:
      raise ckpt_lib.CheckpointError(
          f'init_checkpoint {path} holds a {saved["name"]} network; '
          f'config.model.name is {config.model.name!r}')
    return ckpt_lib.load_model_variables(path, reference)


@contextlib.contextmanager
def finished_result(phase):
  """Reads of a finished phase's files (`phase`; nothing when falsy): a
  damaged one ends the run in one error naming the file and the redo."""
  try:
    yield
  except ckpt_lib.CheckpointError as e:
    if not phase:
      raise
    raise workdir_lib.WorkdirError(
        f'{e}; {workdir_lib.redo_hint(phase)}') from e


def make_setup(config, workdir) -> Setup:
  model = build_model(config)
  table = gates_lib.layer_table(model, input_shape(config))
  validate.validate_against_model(config, table)
  return Setup(config, workdir, model, table, gates_lib.gate_specs(table),
               init_variables(config, model, workdir))


def load_train(config):
  """The train split as the configured pipeline's trainer reads it (a
  `data.Split` for the in-memory pipeline)."""
  return input_pipeline.of(config).train(config)


def trainer_records(config, section: str) -> dict:
  """`loop.train`'s options, converted from the config once: the recipe of
  `config[section]`, the inputs, the pipeline's feed, the phase's name."""
  return dict(options=TrainOptions.from_config(config[section], config.seed),
              inputs=InputOptions.from_config(config),
              feed=input_pipeline.of(config).feed, name=section)


def load_train_in_order(config) -> data_lib.Split:
  """The train split record by record, without augmentation (the memory
  bank's input)."""
  return input_pipeline.of(config).split(config, config.data.train_split)


def load_test(config) -> data_lib.Split:
  return input_pipeline.of(config).split(config, config.data.test_split)


def unreadable_records(split) -> dict:
  """How many records of a streamed split did not decode (each evaluated
  as a black image and logged once); nothing for in-memory splits."""
  corrupt = getattr(split.images, 'corrupt', None)
  return {} if corrupt is None else {'unreadable_records': len(corrupt)}


def training_summary(result: loop.TrainResult, epochs: int,
                      seconds: float, accuracy: float) -> dict:
  return {'test_accuracy': accuracy, 'epochs': epochs,
          'seconds': round(seconds, 2),
          'train_seconds': round(result.train_seconds, 2),
          'compile_seconds': round(result.compile_seconds, 2),
          'images_per_second': round(
              result.images_trained / result.train_seconds, 2)
          if result.train_seconds else None,
          'devices': jax.device_count(), **result.data_stats}


def final_accuracy(model, result: loop.TrainResult, test,
                    setup: Setup) -> float:
  """The last epoch's test accuracy; with zero epochs, the model as it
  is."""
  if result.history:
    return result.history[-1]['test_accuracy']
  return test_accuracy(model, result.variables, test, setup)



def test_accuracy(model, variables, test, setup) -> float:
  c = setup.config
  return evaluation.accuracy(model, variables, test, c.data.mean, c.data.std,
                             c.data.eval_batch_size, progress=setup.progress)


def class_subset(config, per_class: int, from_end: bool,
                 offset: int = 0) -> data_lib.Split:
  """A fixed per-class subset of the train split (section 5), decoding only
  its images."""
  d = config.data
  labels = input_pipeline.labels(config, d.train_split)
  indices = data_lib.class_subset_indices(labels, per_class, from_end,
                                          seed=d.subset_seed, offset=offset)
  if offset:  # a held-out subset must not reach the warm-up's images
    warmup = data_lib.class_subset_indices(labels, d.warmup_per_class, False)
    if np.intersect1d(indices, warmup).size:
      raise validate.ConfigError(
          f'config.landscape.subset: subset {offset // per_class} overlaps '
          'the warm-up images (data.warmup_per_class='
          f'{d.warmup_per_class}); the train split has too few images per '
          'class for it: choose a smaller subset')
  return input_pipeline.of(config).split(config, d.train_split, indices)


def warmed_up(setup: Setup) -> tuple[Any, float]:
  """The supernet's weights during the search (and for the memory bank and
  slimming): the init weights, warmed up once and saved."""
  c = setup.config
  if not c.search.warmup:
    return setup.variables, 0.0
  path = os.path.join(setup.workdir, workdir_lib.WARMED_UP)
  if os.path.exists(os.path.join(path, ckpt_lib.MODEL_FILE)):
    with finished_result('search'):
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


def validation_batches(config, subset: int = 0) -> search_lib.Batches:
  """The search's fixed validation batches (section 5); `subset` k >= 1:
  the k-th disjoint subset of as many images before them in each class,
  which the search never sees (the landscape's repeats)."""
  per_class = config.data.val_per_class
  val = class_subset(config, per_class, from_end=True,
                     offset=subset * per_class)
  return search_lib.Batches.from_split(val, config.search.batch_size,
                                       config.data.mean, config.data.std)


def finished_search(setup: Setup) -> search_lib.SearchState:
  path = os.path.join(setup.workdir, workdir_lib.SEARCH_STATE)
  finished = 'search' in workdir_lib.load_summary(setup.workdir)
  if not finished:
    raise validate.ConfigError(
        f'no finished search in {setup.workdir}: run --config.phases=search '
        'first')
  if not ckpt_lib.npz_exists(path):
    raise workdir_lib.WorkdirError(
        f'{path} is missing; {workdir_lib.redo_hint("search")}')
  with finished_result('search'):
    return search_lib.load_state(path, setup.gates)
