"""One run per workdir; one config per workdir."""

import os
import subprocess
import sys

import pytest

from ekg_jax.run import workdir
from ekg_jax.run.phases import PHASES
from ekg_jax.config import default_config


HOLD = """
import sys, time
from ekg_jax.run import workdir
with workdir.lock(sys.argv[1]):
  print('locked', flush=True)
  time.sleep(600)
"""


def test_a_live_owner_keeps_the_workdir_until_it_dies(tmp_path):
  owner = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)],
                           stdout=subprocess.PIPE, text=True)
  try:
    assert owner.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir.WorkdirError,
                       match=f'in use by process {owner.pid}'):
      with workdir.lock(str(tmp_path)):
        pass
  finally:
    owner.kill()  # SIGKILL: no cleanup, the lock file stays behind
    owner.wait()
  assert (tmp_path / workdir.LOCK).read_text() == str(owner.pid)
  with workdir.lock(str(tmp_path)):  # the dead owner's lock is no obstacle
    assert (tmp_path / workdir.LOCK).read_text() == str(os.getpid())


def test_another_config_is_refused_with_the_differing_keys(tmp_path):
  config = default_config()
  workdir.save_config(config, str(tmp_path))
  same = default_config()
  same.phases, same.quiet = 'search', True  # run control may change
  workdir.check_config(same, str(tmp_path), produced=[PHASES['search']])
  other = default_config()
  other.search.target_flops_rate = 0.3
  other.model.name = 'resnet20'
  with pytest.raises(workdir.WorkdirError,
                     match=r"model.name: 'resnet56' -> 'resnet20', "
                           r"search.target_flops_rate: 0.45 -> 0.3\); use a "
                           r'new --workdir, or the same values to resume$'):
    workdir.check_config(other, str(tmp_path), produced=[PHASES['search']])


def test_only_keys_of_phases_that_produced_something_are_pinned(tmp_path):
  config = default_config()
  workdir.save_config(config, str(tmp_path))
  other = default_config()
  other.finetune.knowledge = 'none'
  other.memory_bank.num_teachers = 3
  other.data.test_split = 'test[:100]'
  # Nothing produced yet (a run that failed before computing): any change.
  other.search.target_flops_rate = 0.3
  workdir.check_config(other, str(tmp_path), produced=[])
  other.search.target_flops_rate = 0.45
  # A finished search pins the search keys, not the later phases' keys.
  workdir.check_config(other, str(tmp_path), produced=[PHASES['search']])
  with pytest.raises(workdir.WorkdirError,
                     match=r'finetune.knowledge.*; use a new --workdir, or '
                           r'the same values to resume, or --config.redo='
                           r'finetune to compute it'):
    workdir.check_config(other, str(tmp_path),
                         produced=[PHASES['search'], PHASES['finetune']])
  with pytest.raises(workdir.WorkdirError, match='data.test_split'):
    workdir.check_config(other, str(tmp_path), produced=[PHASES['evaluate']])


def test_ci_has_the_shared_data():
  """Under CI the data-dependent tests cannot skip (conftest.STRICT); this
  says why they would fail."""
  import conftest
  if not conftest.STRICT:
    pytest.skip('not under CI')
  assert conftest.HAVE_CIFAR10, f'no CIFAR-10 under {conftest.TFDS_DIR}'
  assert conftest.HAVE_OFFICIAL, f'no {conftest.OFFICIAL_RESNET56}'
