"""Fault injection, short version: the quickstart pipeline, cut down, killed
with SIGKILL in each of its first three phases (seeded delays), rerun after
each kill; it must end bit-identical to an uninterrupted run. The long run (N >= 30 kills)
is `experiments/fault_injection.py --kills=30`."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10

SMALL = ['--config.quiet=True', f'--config.data.data_dir={TFDS_DIR}',
         '--config.data.train_split=train[:640]',
         '--config.data.test_split=test[:100]',
         '--config.data.warmup_per_class=16', '--config.pretrain.epochs=1',
         '--config.finetune.epochs=1', '--config.search.target_flops_rate=0.9',
         '--config.search.evaluation=loop',
         '--config.memory_bank.num_teachers=2',
         # Checkpoints every 2 steps, so kills land between checkpoints.
         '--config.pretrain.checkpoint_every_steps=2',
         '--config.finetune.checkpoint_every_steps=2']


@pytest.mark.slow
@needs_cifar10
def test_killed_in_every_phase_ends_like_an_uninterrupted_run(tmp_path):
  result = subprocess.run(
      [sys.executable, 'experiments/fault_injection.py',
       '--config=configs/quickstart.py', f'--workdir={tmp_path}',
       '--kills=3', '--seed=0', '--max_delay=8', '--', *SMALL],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  report = json.loads(result.stdout[result.stdout.index('{'):])
  assert report['kills'] == 3 and report['identical']
  # Where each kill lands depends on this machine's speed (seed 0 hit
  # pretrain, search, memory_bank and finetune here); at least two phases.
  assert len(report['phases_hit']) >= 2, report['kill_log']
