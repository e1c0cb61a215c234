"""Two JAX processes on this machine (a local coordinator, two CPU devices
each) run data-parallel fine-tuning on their halves of each global batch;
one process with four devices gives the reference
(`multihost_check.py` runs in each)."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import HELPERS, REPO
from ekg_jax.runtime import distributed
from ekg_jax.training import steps

CHECK = HELPERS / 'multihost_check.py'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start(out, process_id, num_processes, port, devices):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
      [sys.executable, str(CHECK), str(out), str(process_id),
       str(num_processes), str(port)], cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs):
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=540)[0])
  finally:
    for p in procs:  # one that failed leaves the other waiting on it
      if p.poll() is None:
        p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]


@pytest.mark.slow  # ~70 s: three processes compiling on two cores
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  one.mkdir()
  two.mkdir()
  port = _free_port()
  _wait([_start(one, 0, 1, 0, devices=4),
         *[_start(two, i, 2, port, devices=2) for i in range(2)]])
  reference = np.load(one / 'process_0.npz')
  processes = [np.load(two / f'process_{i}.npz') for i in range(2)]

  for got in processes:
    assert sorted(got.files) == sorted(reference.files)
    for name in reference.files:
      if name == 'bad_batch':
        continue
      assert got[name].shape == reference[name].shape, name
      # Not bit-equal: the cross-process all-reduces sum in another order.
      np.testing.assert_allclose(got[name].astype(np.float64),
                                 reference[name].astype(np.float64),
                                 rtol=1e-5, atol=1e-6, err_msg=name)
  # The state is replicated: both processes hold the same numbers.
  for name in reference.files:
    np.testing.assert_array_equal(processes[0][name], processes[1][name])
  assert any(n.startswith('step_') for n in reference.files)
  assert float(reference['train_history_epoch']) == 1.0

  # A global batch of 6 over 2 x 2 devices: refused before compute, in
  # every process, naming the config key.
  for got in processes:
    assert str(got['bad_batch']) == (
        'config.finetune.batch_size=6: does not divide over the 4 devices; '
        'use a multiple of 4')

  # Process 0 wrote the metrics; orbax wrote each checkpoint once.
  train = two / 'train'
  assert len((train / 'metrics.jsonl').read_text().splitlines()) == 1
  assert sorted(os.listdir(train / 'checkpoints')) == ['2', '4']


def test_one_process_supplies_the_whole_batch_and_writes():
  mesh = steps.data_mesh()
  assert distributed.is_primary()
  assert distributed.process_rows(mesh, 8) == slice(0, 8)
  local = {'x': np.arange(16).reshape(2, 8), 'bank': None}
  batch = distributed.global_batch(mesh, local, 8, axis=1)
  assert batch['bank'] is None
  np.testing.assert_array_equal(batch['x'], local['x'])
  assert batch['x'].sharding.spec == P(None, steps.DATA_AXIS)
  key = distributed.replicate(mesh, jax.random.key(3))
  assert jax.random.key_data(key).tolist() == jax.random.key_data(
      jax.random.key(3)).tolist()
  with pytest.raises(ValueError, match='supplies 6 rows of a global batch '
                     'of 8; its share is'):
    distributed.global_batch(mesh, np.arange(6), 8)
