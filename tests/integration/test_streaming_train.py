"""Training from the streaming pipeline: a killed run resumes with the same
batches (the Grain iterator's state is in the trainer's checkpoint), and
the ImageNet configs run search, memory bank and fine-tuning end to end on a
tiny dataset the test writes (ResNet-18 at 64x64, CPU)."""

import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fake_tfds
from conftest import REPO
from ekg_jax import config as config_lib
from ekg_jax.training import input_pipeline, loop
from ekg_jax.run.phases.common import trainer_records
from ekg_jax import pipeline
from small import tiny_model


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  fake_tfds.write_dataset(str(path), splits={'train': 24, 'validation': 8},
                          corrupt={'train': [5], 'validation': [3]})
  return str(path)


def stream_config(data_dir):
  c = config_lib.default_config()
  c.data.name = 'imagenet2012'
  c.data.pipeline = 'grain'
  c.data.data_dir = data_dir
  c.data.test_split = 'validation'
  c.data.mean, c.data.std = (120.0,) * 3, (60.0,) * 3
  c.data.eval_batch_size = 8
  c.finetune.epochs = 2
  c.finetune.batch_size = 8
  c.finetune.checkpoint_every_steps = 2
  return c


def _run(folder, config, bank):
  model, variables = tiny_model()
  pipe = input_pipeline.of(config)
  train = pipe.train(config)
  test = pipe.split(config, config.data.test_split)
  return loop.train(model, variables, train, bank, test, folder=str(folder),
                    progress=False, **trainer_records(config, 'finetune'))


@pytest.mark.slow
def test_killed_streamed_run_resumes_bit_identically(tmp_path, data_dir):
  config = stream_config(data_dir)  # 3 steps per epoch
  bank = np.random.default_rng(9).normal(size=(24, 3, 10)).astype(
      jnp.bfloat16)
  straight = _run(tmp_path / 'a', config, bank)
  assert [e['epoch'] for e in straight.history] == [1, 2]
  assert straight.data_stats == {'skipped_records': 2}  # once per epoch
  kept = sorted(int(s) for s in os.listdir(tmp_path / 'a' / 'checkpoints'))
  assert kept == [5, 6]
  # Killed after step 5 (mid-epoch 2): the stream resumes from its state in
  # checkpoint 5, not from the epoch's start.
  shutil.copytree(tmp_path / 'a', tmp_path / 'b')
  shutil.rmtree(tmp_path / 'b' / 'checkpoints' / '6')
  resumed = _run(tmp_path / 'b', config, bank)
  jax.tree_util.tree_map(np.testing.assert_array_equal, resumed.variables,
                         straight.variables)
  assert resumed.history == straight.history
  assert resumed.data_stats == straight.data_stats
  # Restarting the stream instead (its state at step 0) gives other
  # batches: the comparison above can fail.
  shutil.copytree(tmp_path / 'a', tmp_path / 'c')
  shutil.rmtree(tmp_path / 'c' / 'checkpoints' / '6')
  progress = tmp_path / 'c' / 'checkpoints' / '5' / 'progress' / 'metadata'
  saved = json.loads(progress.read_text())
  assert saved['data_state']['skipped'] == 1
  saved['data_state'] = {'parent': {'next_index': 0}, 'skipped': 0}
  progress.write_text(json.dumps(saved))
  restarted = _run(tmp_path / 'c', config, bank)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(restarted.variables),
      jax.tree_util.tree_leaves(straight.variables)))


def imagenet_config(name, data_dir, workdir_phases):
  """A shipped ImageNet config cut down to the tiny dataset: 64x64 images,
  2 images per class for the search's subsets, one short epoch."""
  path = REPO / 'configs' / f'{name}.py'
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  c.phases = workdir_phases
  c.quiet = True
  c.data.data_dir = data_dir
  c.data.image_size = 64
  c.data.decode_workers = 0
  c.data.val_per_class = 2
  c.data.warmup_per_class = 2
  c.data.eval_batch_size = 8
  c.search.batch_size = 8
  c.search.target_flops_rate = 0.9
  c.warmup.batch_size = 8
  c.memory_bank.num_teachers = 1
  c.memory_bank.batch_size = 8
  for section in ('pretrain', 'finetune'):
    c[section].epochs = 1
    c[section].batch_size = 8
  return c


@pytest.mark.slow
def test_resnet18_imagenet_config_runs_end_to_end_on_tiny_data(tmp_path,
                                                                data_dir):
  config = imagenet_config('resnet18_imagenet', data_dir,
                           'pretrain,search,memory_bank,finetune')
  summary = pipeline.run(config, str(tmp_path))
  assert summary['pretrain']['epochs'] == 1
  assert summary['pretrain']['skipped_records'] == 1
  assert 0 < summary['search']['flops_rate'] <= 0.9
  assert summary['memory_bank']['images'] == 24
  # The bank reads every record in order: the corrupt one is a black image.
  assert summary['memory_bank']['unreadable_records'] == 1
  assert summary['finetune']['skipped_records'] == 1
  assert summary['final']['unreadable_records'] == 1  # validation record 3
  assert summary['final']['flops'] == summary['search']['flops']
  assert 0 <= summary['final']['test_accuracy'] <= 100


@pytest.mark.slow
@pytest.mark.parametrize('name', ['resnet34_imagenet', 'resnet50_imagenet'])
def test_imagenet_config_search_runs_on_tiny_data(tmp_path, data_dir, name):
  config = imagenet_config(name, data_dir, 'search')
  # The deeper networks at 32x32, one candidate per compiled call: the
  # search's compile time dominates on CPU (ResNet-50 at 64x64 with the
  # default evaluation took 9 minutes on 2 shared cores).
  config.data.image_size = 32
  config.search.evaluation = 'loop'
  config.search.target_flops_rate = 0.97  # a step or two: CI's time
  summary = pipeline.run(config, str(tmp_path))
  assert 0 < summary['search']['flops_rate'] <= 0.97
  assert summary['search']['steps'] >= 1
