"""experiments/evidence_study.py, with each CLI piece replaced by a fake
that writes what the real one writes: an arm runs its pieces in order,
reuses its base arm's search and bank, and a fresh clone (only the
committed results) picks the study up without running a finished piece
again."""

import dataclasses
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
  monkeypatch.setattr(module, 'make_report', lambda: None)
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


def test_knowledge_seeds_on_a_fresh_clone_build_the_bank_once_in_the_base(
    study):
  study.run_arm(study.BY_NAME['ekg_ft_ensemble'], commit=False)
  shutil.rmtree(study.WORKDIRS)  # a fresh clone
  study.pieces.clear()
  for seed in (1, 2):
    study.run_arm(study.BY_NAME[f'ekg_ft_ensemble_seed{seed}'], commit=False)
  assert study.pieces == [('ekg_ft_ensemble', 'memory_bank'),
                          ('ekg_ft_ensemble_seed1', 'finetune'),
                          ('ekg_ft_ensemble_seed2', 'finetune')]
  seed2 = study.committed_summary(study.BY_NAME['ekg_ft_ensemble_seed2'])
  assert seed2['memory_bank'] == {'by': 'ekg_ft_ensemble'}
  assert seed2['search'] == {'by': 'ekg'}


def test_arms_without_a_search_and_arms_waiting_for_their_masks(study):
  dense = study.BY_NAME['dense_seed1']
  study.run_arm(dense, commit=False)
  assert study.pieces == [('dense', 'finetune'), ('dense_seed1', 'finetune')]
  flags = study.command(dense, 'finetune')
  assert {'--config.finetune.masks=dense', '--config.finetune.views=2',
          '--config.seed=1', '--config.finetune.knowledge=none'} <= set(flags)
  study.pieces.clear()
  # Before Torch-Pruning has written its kept-channels file.
  tp = dataclasses.replace(study.BY_NAME['tp_taylor'],
                           masks='experiments/results/evidence/none/kept.json')
  assert study.waiting_for(tp) == tp.masks
  study.run_arm(tp, commit=False)
  assert study.pieces == []


def test_pieces_run_from_a_clean_tree_at_the_pinned_commit(
    study, tmp_path, monkeypatch):
  repo = tmp_path / 'repo'
  (repo / 'ekg_jax').mkdir(parents=True)
  (repo / '.gitignore').write_text('workdirs/\n')
  study.git('init', '-q', cwd=str(repo))

  def commit(text):
    (repo / 'ekg_jax' / '__init__.py').write_text(text)
    for args in (['add', '-A'], ['-c', 'user.name=t', '-c', 'user.email=t@t',
                                 'commit', '-qm', text]):
      study.git(*args, cwd=str(repo))
    return study.git('rev-parse', 'HEAD', cwd=str(repo))

  first = commit('VERSION = 1\n')
  monkeypatch.setattr(study, 'REPO', str(repo))
  monkeypatch.setattr(study, 'WORKDIRS', str(repo / 'workdirs' / 'evidence'))
  monkeypatch.setattr(study, 'CODE_TREE', str(repo / 'workdirs' / 'code'))
  assert study.checkout('HEAD', commit=False) == first
  second = commit('VERSION = 2\n')  # the working checkout moves on ...
  tree = repo / 'workdirs' / 'code' / 'ekg_jax' / '__init__.py'
  assert tree.read_text() == 'VERSION = 1\n'  # ... the study's code does not
  study.between_pieces(commit=False)
  assert study.pinned()['commit'] == first
  os.makedirs(study.WORKDIRS)
  (repo / 'workdirs' / 'evidence' / 'move-to').write_text(second)
  study.between_pieces(commit=False)  # moves only here, recorded
  assert tree.read_text() == 'VERSION = 2\n'
  assert [m['commit'] for m in study.pinned()['moves']] == [first, second]
  tree.write_text('VERSION = 3\n')  # a changed tree is refused
  with pytest.raises(SystemExit, match='has changes'):
    study.checkout(first, commit=False)


def test_landscape_repeats_measure_the_base_network_again(study, tmp_path,
                                                          monkeypatch):
  code = tmp_path / 'code' / 'ekg_jax'
  code.mkdir(parents=True)
  (code / 'config.py').write_text('c.landscape.lanczos_tolerance = 0.0\n')
  monkeypatch.setattr(study, 'CODE_TREE', str(tmp_path / 'code'))
  repeat = study.BY_NAME['gbn_landscape_subset1']
  study.run_arm(repeat, commit=False)  # its code lacks landscape.subset
  assert study.pieces == []
  (code / 'config.py').write_text('c.landscape.subset = 0\n')
  study.run_arm(repeat, commit=False)
  assert study.pieces == [('gbn', 'search,landscape'), ('gbn', 'finetune'),
                          ('gbn_landscape_subset1', 'landscape')]
  flags = study.command(repeat, 'landscape')
  assert {'--config.landscape.subset=1', '--config.phases=landscape',
          '--config.landscape.lanczos_tolerance=0.001'} <= set(flags)
  summary = study.committed_summary(repeat)
  assert summary['search'] == {'by': 'gbn'}
  assert summary['landscape'] == {'by': 'gbn_landscape_subset1'}
  assert not os.path.exists(os.path.join(study.results_dir(repeat),
                                         'search_state.npz'))
