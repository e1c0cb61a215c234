"""Small networks, configs, splits and the command-line runner that tests in
several folders share."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from conftest import REPO, TFDS_DIR, perturb
from ekg_jax import config as config_lib
from ekg_jax.data import datasets as data_lib
from ekg_jax.models import create_model
from ekg_jax.supernet import gates as gates_lib

MEAN, STD = (120.0, 120.0, 120.0), (60.0, 60.0, 60.0)


def tiny_model(width=4):
  """ResNet-20 with every gate `width` channels wide: fast, still real."""
  model = create_model('resnet20', num_classes=10)
  specs = gates_lib.gate_specs(gates_lib.layer_table(model, (32, 32, 3)))
  model = model.clone(widths=tuple((g, width) for g in specs))
  return model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def search_problem():
  """ResNet-20 (perturbed init weights) searched to FLOPs rate 0.9 on 40
  random images in two batches."""
  from ekg_jax import search
  model = create_model('resnet20')
  table = gates_lib.layer_table(model, (32, 32, 3))
  x = jax.random.normal(jax.random.key(0), (40, 32, 32, 3))
  variables = perturb(model.init(jax.random.key(1), x[:1]), seed=2)
  labels = jnp.asarray(np.arange(40) % 10, jnp.int32)
  batches = search.Batches(images=(x[:32], x[32:]),
                           labels=(labels[:32], labels[32:]))
  config = search.SearchConfig(target_flops_rate=0.9, chunk_size=4)
  return search.SearchProblem(search.Evaluator(model, table, config),
                              variables, batches, config)


def tiny_config(**finetune):
  c = config_lib.default_config()
  c.data.mean, c.data.std = (120.0,) * 3, (60.0,) * 3
  c.data.eval_batch_size = 8
  c.finetune.epochs = 2
  c.finetune.batch_size = 8
  c.finetune.checkpoint_every_steps = 2
  for k, v in finetune.items():
    c.finetune[k] = v
  return c


def random_split(n, seed):
  rng = np.random.default_rng(seed)
  return data_lib.Split(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, n).astype(np.int32))


def model_and_history():
  model = create_model('resnet20', num_classes=10)
  variables = perturb(model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  specs = gates_lib.gate_specs(gates_lib.layer_table(model, (32, 32, 3)))
  rng = np.random.default_rng(0)
  history, ranks_history = [], []
  for i in range(3):
    history.append({'kept': {g: max(1, s.channels - 3 * i - int(rng.integers(3)))
                             for g, s in specs.items()}})
    ranks_history.append({g: rng.permutation(s.channels).astype(np.int32)
                          for g, s in specs.items()})
  return model, variables, history, ranks_history


def run_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'ekg_jax.main', *args],
                        cwd=cwd, capture_output=True, text=True, timeout=600)


PIPELINE = ['--config=configs/resnet20_cifar.py', '--config.quiet=True',
            '--config.data.train_split=train[:1000]',
            '--config.data.test_split=test[:200]',
            '--config.data.warmup_per_class=32',
            f'--config.data.data_dir={TFDS_DIR}',
            '--config.search.target_flops_rate=0.9',
            '--config.search.evaluation=loop',
            '--config.memory_bank.num_teachers=3',
            '--config.finetune.epochs=1']


def check_search(workdir, target):
  """A finished search's summary entry, history and plot."""
  s = json.loads((workdir / 'summary.json').read_text())['search']
  assert set(s) >= {'flops', 'params', 'flops_rate', 'steps', 'seconds',
                    'val_loss', 'kept_channels'}
  assert s['flops_rate'] <= target and s['steps'] >= 1
  assert len(s['kept_channels']) == 12
  history = json.loads((workdir / 'search' / 'history.json').read_text())
  assert len(history) == s['steps'] + 1
  assert (workdir / 'search' / 'search.png').stat().st_size > 10_000
