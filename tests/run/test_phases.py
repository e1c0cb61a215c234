"""The phase table (run.phases.PHASES) against what reads it, the redo, and
damaged results of finished phases: one error naming the file and the redo
(issue 26, items 4 and 7)."""

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10, random_variables
from ekg_jax import config as config_lib
from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.models import create_model
from ekg_jax.run import preflight, workdir
from ekg_jax.run.phases import PHASES, Setup, redone
from ekg_jax.run.phases import common
from ekg_jax.supernet import gates


def names(phases):
  return [p.name for p in phases]


def test_the_config_knows_the_tables_phases_in_its_order():
  assert config_lib.PHASES == tuple(PHASES)
  assert set(config_lib.DEFAULT_PHASES) <= set(PHASES)


@pytest.mark.parametrize('masks,knowledge', [
    ('search', 'ensemble'), ('dense', 'none'), ('search', 'none')])
def test_a_phase_reads_only_earlier_phases_and_needs_only_what_it_reads(
    masks, knowledge):
  config = config_lib.default_config()
  config.finetune.masks, config.finetune.knowledge = masks, knowledge
  order = list(PHASES)
  for i, phase in enumerate(PHASES.values()):
    assert set(phase.reads) <= set(order[:i]), phase.name
    assert set(phase.needs(config)) <= set(phase.reads), phase.name


def test_a_redo_removes_what_a_rerun_would_resume_from():
  for phase in PHASES.values():
    for rel in phase.resumes_from:
      assert any(rel == w or rel.startswith(w + '/') for w in phase.writes), (
          phase.name, rel)
  # Every pinned prefix is a key or a section of the config (no typo).
  keys = workdir._flat(config_lib.default_config()).keys()
  for phase in PHASES.values():
    for prefix in phase.pins:
      assert any(k == prefix or k.startswith(prefix) for k in keys), prefix


def test_the_splits_each_phase_reads_are_preflights():
  readers = lambda split: [p for p in PHASES if preflight._reads([p], split)]
  assert readers('train') == ['pretrain', 'search', 'landscape',
                              'memory_bank', 'finetune']
  assert readers('test') == ['pretrain', 'evaluate', 'landscape', 'finetune']


def test_a_redo_takes_the_phases_computed_from_it():
  assert names(redone(['evaluate'])) == ['evaluate']
  assert names(redone(['search'])) == ['search', 'landscape', 'memory_bank',
                                       'finetune', 'export']
  assert names(redone(['memory_bank'])) == ['memory_bank', 'finetune',
                                            'export']
  assert names(redone(['pretrain'])) == list(PHASES)
  assert names(redone(['export', 'landscape'])) == ['landscape', 'export']
  assert redone([]) == []


def test_remove_takes_their_files_and_summary_entries_and_nothing_else(
    tmp_path):
  for folder in ('pretrain/final', 'search', 'memory_bank', 'finetune/final',
                 'export', 'landscape'):
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / 'file').write_text('x')
  for other in ('config.json', 'log.txt', 'report.md'):
    (tmp_path / other).write_text('x')
  summary = {'weights': 'w', 'pretrain': {}, 'base': {}, 'search': {},
             'landscape': {}, 'memory_bank': {}, 'finetune': {}, 'final': {},
             'export': {}}
  workdir.record(str(tmp_path), summary)
  left = workdir.remove(str(tmp_path), redone(['memory_bank']), summary)
  assert left == {'weights': 'w', 'pretrain': {}, 'base': {}, 'search': {},
                  'landscape': {}}
  assert workdir.load_summary(str(tmp_path)) == left
  assert sorted(os.listdir(tmp_path)) == [
      'config.json', 'landscape', 'log.txt', 'pretrain', 'report.md',
      'search', 'summary.json']
  assert (tmp_path / 'search' / 'file').exists()


def test_redo_is_a_key_that_may_change_between_runs(tmp_path):
  config = config_lib.default_config()
  workdir.save_config(config, str(tmp_path))
  config.redo = 'search'
  workdir.check_config(config, str(tmp_path), produced=list(PHASES.values()))


@pytest.fixture(scope='module')
def small():
  model = create_model('resnet20', num_classes=10)
  table = gates.layer_table(model, (32, 32, 3))
  variables = random_variables(model, jnp.zeros((1, 32, 32, 3)))
  return model, table, gates.gate_specs(table), variables


def setup_in(tmp_path, small, **changes):
  model, table, specs, variables = small
  config = config_lib.default_config()
  config.model.name = 'resnet20'
  for key, value in changes.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  return Setup(config, str(tmp_path), model, table, specs, variables)


def test_a_damaged_search_state_names_the_file_and_the_redo(tmp_path, small):
  setup = setup_in(tmp_path, small)
  workdir.record(str(tmp_path), {'search': {'steps': 3}})
  state = tmp_path / workdir.SEARCH_STATE
  state.parent.mkdir()
  with pytest.raises(workdir.WorkdirError,
                     match=r'search/state.npz is missing; it is a result of '
                           r"phase 'search': rerun with --config.redo=search"):
    common.finished_search(setup)
  state.write_bytes(b'PK\x03\x04 truncated')
  with pytest.raises(workdir.WorkdirError) as e:
    common.finished_search(setup)
  message = str(e.value)
  assert 'search/state.npz: BadZipFile' in message
  assert "--config.redo=search to compute that phase" in message
  assert '\n' not in message


def test_a_damaged_warm_up_names_the_file_and_the_redo(tmp_path, small):
  variables = small[3]
  setup = setup_in(tmp_path, small)
  saved = tmp_path / workdir.WARMED_UP
  ckpt_lib.save_model(str(saved), 'resnet20', {'seconds': 1.0}, variables)
  for path in (saved / 'variables').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(path.read_bytes()[:10])
  with pytest.raises(workdir.WorkdirError,
                     match=r'search/warmup holds no readable variables .*; '
                           r"it is a result of phase 'search': rerun with "
                           r'--config.redo=search'):
    common.warmed_up(setup)


def test_event_loop_noise_of_abandoned_reads_is_dropped_and_nothing_else():
  """A failed orbax restore leaves tensorstore reads that may complete
  after their event loop closed; tensorstore reports each RuntimeError as
  unraisable (with no object; here a __del__'s)."""
  script = (
      'import asyncio, gc, sys\n'
      'from ekg_jax.files import checkpoint\n'
      'if sys.argv[1] == "quiet":\n'
      '  checkpoint._quiet_abandoned_reads()\n'
      'class Late:\n'
      '  def __init__(self, late):\n'
      '    self.late = late\n'
      '  def __del__(self):\n'
      '    if not self.late:\n'
      '      raise ValueError(8)\n'
      '    loop = asyncio.new_event_loop()\n'
      '    loop.close()\n'
      '    loop.call_soon_threadsafe(print)\n'
      'Late(True), Late(False)\n'
      'gc.collect()\n')
  run = lambda mode: subprocess.run(
      [sys.executable, '-c', script, mode], cwd=REPO, capture_output=True,
      text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
  loud, quiet = run('loud'), run('quiet')
  assert 'RuntimeError: Event loop is closed' in loud.stderr, loud.stderr
  assert 'Event loop is closed' not in quiet.stderr, quiet.stderr
  assert 'ValueError: 8' in quiet.stderr, quiet.stderr  # others still shown


@needs_cifar10
def test_a_redo_in_the_pipeline_removes_and_runs_only_its_phases(
    tmp_path, monkeypatch):
  """The pipeline with stand-in phases (each writes a file and counts its
  runs): a redo of search runs search and the later phases again, keeps
  pretrain's and evaluate's results, and frees the search's keys."""
  import dataclasses
  from ekg_jax import pipeline
  runs = []

  def stand_in(phase):
    def run(setup):
      runs.append(phase.name)
      folder = tmp_path / phase.name
      folder.mkdir(exist_ok=True)
      (folder / 'result').write_text(str(runs.count(phase.name)))
      if phase.name == 'pretrain':  # where the later phases' weights are
        (folder / 'final').mkdir(exist_ok=True)
      return {key: {'runs': runs.count(phase.name), 'steps': 5}
              for key in phase.summary}
    return dataclasses.replace(phase, run=run)

  monkeypatch.setattr(pipeline, 'PHASES',
                      {n: stand_in(p) for n, p in PHASES.items()})
  monkeypatch.setattr(pipeline.report_lib, 'write_report',
                      lambda workdir, summary, gates: 'report.md')
  config = config_lib.default_config()
  config.model.name = 'resnet20'
  config.quiet = True
  config.data.data_dir = TFDS_DIR
  config.data.train_split = 'train[:1000]'
  config.data.test_split = 'test[:100]'
  config.data.warmup_per_class = 32
  config.phases = 'pretrain,evaluate,search,memory_bank,finetune'
  pipeline.run(config, str(tmp_path))
  assert runs == ['pretrain', 'evaluate', 'search', 'memory_bank',
                  'finetune']
  config.phases = 'memory_bank'  # the redo adds search; finetune not asked
  config.redo = 'search'
  config.search.target_flops_rate = 0.3  # a search key: free once redone
  summary = pipeline.run(config, str(tmp_path))
  assert runs[5:] == ['search', 'memory_bank']
  assert {k: v.get('runs') for k, v in summary.items() if k != 'weights'} == {
      'pretrain': 1, 'base': 1, 'search': 2, 'memory_bank': 2}
  assert not (tmp_path / 'finetune').exists()
  assert (tmp_path / 'pretrain' / 'result').read_text() == '1'
  assert (tmp_path / 'search' / 'result').read_text() == '2'
  # What a rerun without the redo finds: nothing left to do.
  config.redo = ''
  pipeline.run(config, str(tmp_path))
  assert len(runs) == 7
