"""experiments/full_schedule.py on CPU with the tiny schedule: an arm
interrupted when its budget is spent is packed, comes back to a fresh
machine through `collect`, and the next lending finishes it."""

import importlib.util
import json
import shutil
import sys
import tarfile

import pytest

from conftest import REPO, needs_cifar10


@pytest.fixture
def schedule(tmp_path, monkeypatch):
  spec = importlib.util.spec_from_file_location(
      'full_schedule', REPO / 'experiments' / 'full_schedule.py')
  module = importlib.util.module_from_spec(spec)
  monkeypatch.setitem(sys.modules, 'full_schedule', module)
  spec.loader.exec_module(module)
  monkeypatch.setattr(module, 'RESULTS', str(tmp_path / 'results'))
  monkeypatch.setattr(module, 'WORKDIRS', str(tmp_path / 'workdirs'))
  monkeypatch.setattr(module, 'README', str(tmp_path / 'README.md'))
  monkeypatch.setattr(module, 'ARMS', [module.Arm('ekg', knowledge='ensemble')])
  return module


def _run(module, out, budget):
  module.run(type('Args', (), dict(budget=budget, out=str(out), weights='',
                                   commit='abc1234567', device='cpu-test',
                                   tiny=True))())


@pytest.mark.slow
@needs_cifar10
def test_an_interrupted_arm_goes_on_at_the_next_lending(schedule, tmp_path):
  first = tmp_path / 'out1'
  _run(schedule, first, budget=90)  # the tiny arm needs longer than that
  record = json.loads((first / 'progress.json').read_text())['ekg']
  assert not record['finished'] and record['device'] == 'cpu-test'
  assert (first / 'ekg.tar.gz').stat().st_size < schedule.MAX_PACK
  shutil.rmtree(schedule.WORKDIRS)  # the next lending is a fresh machine
  readme = tmp_path / 'README.md'
  readme.write_text(f'x\n{schedule.MARKERS[0]}\nold\n{schedule.MARKERS[1]}\n')
  schedule.collect(type('Args', (), {'folder': str(first)})())
  second = tmp_path / 'out2'
  _run(schedule, second, budget=1500)
  record = json.loads((second / 'progress.json').read_text())['ekg']
  assert record['finished'] and record['epochs_done'] == 12
  assert len(record['lendings']) == 2
  assert record['phases_done'] == ['search', 'memory_bank', 'finetune']
  # The table, from what came back.
  schedule.collect(type('Args', (), {'folder': str(second)})())
  text = readme.read_text()
  assert '| `ekg` | 12 | ' in text and 'cpu-test' in text and 'old' not in text


def test_a_pack_keeps_only_the_newest_finished_checkpoint(schedule, tmp_path):
  # A kill while orbax writes step 26 leaves 26.orbax-checkpoint-tmp beside
  # the finished steps (CI stop 31): it must neither break the sort nor
  # travel.
  arm = schedule.ARMS[0]
  checkpoints = tmp_path / 'workdirs' / arm.name / 'finetune' / 'checkpoints'
  for step in ('9', '25', '26.orbax-checkpoint-tmp'):
    (checkpoints / step).mkdir(parents=True)
    (checkpoints / step / 'data').write_text(step)
  (tmp_path / 'workdirs' / arm.name / 'summary.json').write_text('{}')
  out = tmp_path / 'out'
  out.mkdir()
  with tarfile.open(schedule.pack(arm, str(out))) as tar:
    names = {n for n in tar.getnames() if '/checkpoints/' in n}
  assert names == {'ekg/finetune/checkpoints/25',
                   'ekg/finetune/checkpoints/25/data'}
