"""experiments/evidence_study.py, with each CLI piece replaced by a fake
that writes what the real one writes: an arm runs its pieces in order,
reuses its base arm's search and bank, and a fresh clone (only the
committed results) picks the study up without running a finished piece
again."""

import importlib.util
import json
import os
import shutil
import sys

import pytest

from conftest import REPO

KEYS = {'search': 'search', 'landscape': 'landscape',
        'memory_bank': 'memory_bank', 'finetune': 'finetune'}


@pytest.fixture
def study(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(str(REPO / 'experiments'))
  spec = importlib.util.spec_from_file_location(
      'evidence_study', REPO / 'experiments' / 'evidence_study.py')
  module = importlib.util.module_from_spec(spec)
  # Its dataclass looks its module up while the module is being run.
  monkeypatch.setitem(sys.modules, 'evidence_study', module)
  spec.loader.exec_module(module)
  monkeypatch.setattr(module, 'RESULTS', str(tmp_path / 'results'))
  monkeypatch.setattr(module, 'WORKDIRS', str(tmp_path / 'workdirs'))
  monkeypatch.setattr(module.evidence_report, 'main',
                      lambda quiet=False: None)
  module.pieces = []
  module.fail_on = set()

  def fake_piece(arm, phases, log):
    if (arm.name, phases) in module.fail_on:
      raise SystemExit(f'arm {arm.name}: {phases} failed')
    module.pieces.append((arm.name, phases))
    folder = module.workdir(arm)
    summary = module.read_summary(arm)
    for phase in phases.split(','):
      os.makedirs(os.path.join(folder, phase), exist_ok=True)
      summary[KEYS[phase]] = {'by': arm.name}
    if 'search' in phases:
      with open(os.path.join(folder, 'search', 'state.npz'), 'w') as f:
        f.write(arm.name)
    module._write_json(os.path.join(folder, 'summary.json'), summary)
    return 1.0

  monkeypatch.setattr(module, 'run_piece', fake_piece)
  return module


def test_arms_run_their_pieces_and_reuse_their_base(study):
  study.run_arm(study.BY_NAME['ekg_ft_single'], commit=False)
  assert study.pieces == [
      ('ekg', 'search,landscape'), ('ekg', 'finetune'),
      ('ekg_ft_ensemble', 'memory_bank'), ('ekg_ft_ensemble', 'finetune'),
      ('ekg_ft_single', 'finetune')]
  single = study.committed_summary(study.BY_NAME['ekg_ft_single'])
  # The search and the bank are the base arms'; the fine-tuning its own.
  assert single['search'] == {'by': 'ekg'}
  assert single['memory_bank'] == {'by': 'ekg_ft_ensemble'}
  assert single['finetune'] == {'by': 'ekg_ft_single'}
  assert set(single['study']['wall_seconds']) == {'finetune'}
  study.pieces.clear()
  study.run_arm(study.BY_NAME['ekg_ft_single'], commit=False)  # all done
  assert study.pieces == []


def test_a_fresh_clone_resumes_without_searching_again(study):
  arm = study.BY_NAME['per_channel']  # search, bank, fine-tuning
  study.fail_on.add(('per_channel', 'memory_bank'))  # killed there
  with pytest.raises(SystemExit):
    study.run_arm(arm, commit=False)
  assert study.pieces == [('per_channel', 'search,landscape')]
  shutil.rmtree(study.WORKDIRS)  # a fresh clone holds only the results
  study.fail_on.clear()
  study.run_arm(arm, commit=False)
  assert study.pieces == [('per_channel', 'search,landscape'),
                          ('per_channel', 'memory_bank'),
                          ('per_channel', 'finetune')]
  with open(os.path.join(study.workdir(arm), 'search', 'state.npz')) as f:
    assert f.read() == 'per_channel'  # the committed search state
  summary = study.committed_summary(arm)
  assert set(summary['study']['wall_seconds']) == {
      'search,landscape', 'memory_bank', 'finetune'}
  assert json.loads(json.dumps(summary)) == summary


def test_seed_arms_fine_tune_the_base_search_with_their_seed(study):
  arm = study.BY_NAME['ekg_seed2']
  study.run_arm(arm, commit=False)
  assert study.pieces == [('ekg', 'search,landscape'), ('ekg', 'finetune'),
                          ('ekg_seed2', 'finetune')]
  assert '--config.seed=2' in study.command(arm, 'finetune')
  # The base arm's commands (committed before seeds existed) are unchanged.
  assert not any(flag.startswith('--config.seed')
                 for flag in study.command(study.BY_NAME['ekg'], 'finetune'))
