"""A search killed with SIGKILL resumes from its last step and ends where an
uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10

ARGS = ['-m', 'ekg_jax.main', '--config=configs/resnet20_cifar.py',
        '--config.quiet=True', '--config.phases=search',
        '--config.data.train_split=train[:2000]',
        '--config.data.warmup_per_class=64',
        f'--config.data.data_dir={TFDS_DIR}',
        '--config.search.target_flops_rate=0.9',
        '--config.search.evaluation=loop']  # fastest to compile, 3 processes


def run(workdir):
  result = subprocess.run([sys.executable, *ARGS, f'--workdir={workdir}'],
                          cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads((workdir / 'summary.json').read_text())['search']


def steps_done(workdir):
  try:
    return len(json.loads((workdir / 'search' / 'history.json').read_text()))
  except (FileNotFoundError, json.JSONDecodeError):
    return 0


@pytest.mark.slow
@needs_cifar10
def test_killed_search_resumes_to_the_same_result(tmp_path):
  reference = run(tmp_path / 'straight')

  killed = tmp_path / 'killed'
  proc = subprocess.Popen([sys.executable, *ARGS, f'--workdir={killed}'],
                          cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 300
  while steps_done(killed) < 2 and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)  # mid-search, after step >= 1
  proc.wait()
  interrupted_at = steps_done(killed)
  assert interrupted_at < reference['steps'] + 1, 'finished before the kill'

  resumed = run(killed)
  assert resumed['kept_channels'] == reference['kept_channels']
  assert resumed['steps'] == reference['steps']
  assert resumed['flops_rate'] == reference['flops_rate']
  assert resumed['val_loss'] == pytest.approx(reference['val_loss'],
                                              rel=1e-6)


FINETUNE = ['-m', 'ekg_jax.main', '--config=configs/resnet20_cifar.py',
            '--config.quiet=True', '--config.data.train_split=train[:1000]',
            '--config.data.test_split=test[:100]',
            f'--config.data.data_dir={TFDS_DIR}',
            '--config.search.warmup=False',
            '--config.search.target_flops_rate=0.95',
            '--config.search.evaluation=loop',
            '--config.memory_bank.num_teachers=2',
            '--config.finetune.epochs=2',
            '--config.finetune.checkpoint_every_steps=3']


def checkpoints(workdir):
  folder = workdir / 'finetune' / 'checkpoints'
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit()) if folder.is_dir() else []


@pytest.mark.slow
@needs_cifar10
def test_killed_finetune_resumes_to_the_same_parameters(tmp_path):
  import shutil

  import numpy as np
  import orbax.checkpoint as ocp

  searched = tmp_path / 'searched'
  result = subprocess.run(
      [sys.executable, *FINETUNE, f'--workdir={searched}',
       '--config.phases=search,memory_bank'], cwd=REPO, capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  shutil.copytree(searched, straight)
  shutil.copytree(searched, killed)
  args = [sys.executable, *FINETUNE, '--config.phases=finetune']
  result = subprocess.run([*args, f'--workdir={straight}'], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  proc = subprocess.Popen([*args, f'--workdir={killed}'], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  deadline = time.time() + 300
  while not checkpoints(killed) and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGKILL)  # after the first checkpoint (step 3)
  proc.wait()
  assert checkpoints(killed) and checkpoints(killed)[-1] < 14, (
      'finished before the kill')
  result = subprocess.run([*args, f'--workdir={killed}'], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  def final(workdir):
    summary = json.loads((workdir / 'summary.json').read_text())
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(workdir / 'finetune' / 'final' / 'variables')
    return summary['final'], variables

  (want, want_vars), (got, got_vars) = final(straight), final(killed)
  assert got == want
  import jax
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_vars, want_vars)
  lines = lambda w: (w / 'finetune' / 'metrics.jsonl').read_text()
  assert lines(killed) == lines(straight)
