"""One run per workdir; one config per workdir."""

import os
import subprocess
import sys

import pytest

from ekg_jax import workdir
from ekg_jax.config import default_config


def test_a_live_owner_keeps_the_workdir(tmp_path):
  (tmp_path / workdir.LOCK).write_text(str(os.getppid()))  # a live process
  with pytest.raises(workdir.WorkdirError,
                     match=f'in use by process {os.getppid()}'):
    with workdir.lock(str(tmp_path)):
      pass


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  (tmp_path / workdir.LOCK).write_text(str(dead.pid))
  with workdir.lock(str(tmp_path)):
    assert (tmp_path / workdir.LOCK).read_text() == str(os.getpid())
    with pytest.raises(workdir.WorkdirError):  # not even ours twice ...
      (tmp_path / workdir.LOCK).write_text(str(os.getppid()))
      with workdir.lock(str(tmp_path)):
        pass
    (tmp_path / workdir.LOCK).write_text(str(os.getpid()))
  assert not (tmp_path / workdir.LOCK).exists()


def test_another_config_is_refused_with_the_differing_keys(tmp_path):
  config = default_config()
  workdir.save_config(config, str(tmp_path))
  same = default_config()
  same.phases, same.quiet = 'search', True  # run control may change
  workdir.check_config(same, str(tmp_path))
  other = default_config()
  other.search.target_flops_rate = 0.3
  other.model.name = 'resnet20'
  with pytest.raises(workdir.WorkdirError,
                     match=r"model.name: 'resnet56' -> 'resnet20', "
                           r"search.target_flops_rate: 0.45 -> 0.3\); use a "
                           r'new --workdir'):
    workdir.check_config(other, str(tmp_path))
