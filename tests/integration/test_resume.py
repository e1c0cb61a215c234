"""A search or a fine-tuning killed with SIGKILL resumes from its last
checkpoint and ends where an uninterrupted run ends; the uninterrupted run
is also the command line's whole pipeline with its default search, checked
end to end."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10
from small import check_search, run_cli

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


# The search with its defaults (EKG criterion, ensemble teacher, warm-up,
# 'auto' evaluation).
FINETUNE = ['--config=configs/resnet20_cifar.py',
            '--config.quiet=True', '--config.data.train_split=train[:1000]',
            '--config.data.test_split=test[:100]',
            '--config.data.warmup_per_class=32',
            f'--config.data.data_dir={TFDS_DIR}',
            '--config.search.target_flops_rate=0.95',
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
  result = run_cli(*FINETUNE, f'--workdir={searched}',
                   '--config.phases=search,memory_bank')
  assert result.returncode == 0, result.stderr[-3000:]
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  shutil.copytree(searched, straight)
  shutil.copytree(searched, killed)
  phase = [*FINETUNE, '--config.phases=finetune']
  result = run_cli(*phase, f'--workdir={straight}')
  assert result.returncode == 0, result.stderr[-3000:]
  check_the_whole_pipeline(straight)

  proc = subprocess.Popen([sys.executable, '-m', 'ekg_jax.main', *phase,
                           f'--workdir={killed}'], cwd=REPO,
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
  result = run_cli(*phase, f'--workdir={killed}')
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


def check_the_whole_pipeline(workdir):
  """A search with the defaults, its memory bank and fine-tuning, then the
  export and the saved model evaluated again: what each phase reports."""
  import numpy as np
  from ekg_jax.data import datasets
  from ekg_jax.deploy import export
  check_search(workdir, 0.95)
  config = json.loads((workdir / 'config.json').read_text())
  assert {**config['search'], **config['data']}.items() >= {
      'criterion': 'ekg', 'teacher': 'ensemble', 'warmup': True,
      'evaluation': 'auto', 'train_split': 'train[:1000]'}.items()
  summary = json.loads((workdir / 'summary.json').read_text())
  bank = summary['memory_bank']
  assert len(bank['teachers']) == 2 and len(set(bank['teachers'])) == 2
  assert bank['teacher_val_loss'][0] == min(bank['teacher_val_loss'])
  assert bank['bytes'] == 1000 * 2 * 10 * 2  # bfloat16
  ft = summary['finetune']
  steps = 2 * (1000 // 128)  # two epochs of full batches
  assert ft['epochs'] == 2
  assert ft['images_per_second'] == pytest.approx(
      steps * 128 / ft['train_seconds'], rel=1e-2)
  parts = summary['search']['breakdown']  # the pipeline's and the steps'
  assert {'data_seconds', 'compile_seconds', 'steps_seconds'} <= set(parts)
  assert parts['steps_importance_seconds'] > 0
  assert parts['steps_candidates_seconds'] > 0
  assert parts['steps_host_seconds'] >= 0
  assert parts['steps_seconds'] == pytest.approx(
      parts['steps_importance_seconds'] + parts['steps_candidates_seconds']
      + parts['steps_host_seconds'], abs=0.02)
  final = summary['final']
  assert final['flops'] == summary['search']['flops']
  assert final['params'] == summary['search']['params']
  dense = 32 * 32 * 27 * 16 + 6 * 32 * 32 * 9 * 16 * 16 + 2 * (
      16 * 16 * 9 * 16 * 32 + 16 * 16 * 9 * 32 * 32 + 16 * 16 * 16 * 32
      + 4 * 16 * 16 * 9 * 32 * 32) + 640  # ResNet-20 MACs, by hand
  assert final['flops_reduction'] == round(1 - final['flops'] / dense, 4)
  metrics = (workdir / 'finetune' / 'metrics.jsonl').read_text().splitlines()
  assert set(json.loads(metrics[0])) >= {
      'train_loss', 'kd_loss', 'teachers_used', 'test_accuracy',
      'learning_rate'}

  # The export, padded for inference: the same predictions.
  result = run_cli(*FINETUNE, f'--workdir={workdir}',
                   '--config.phases=export', '--config.export.platforms=cpu',
                   # stage 0's 16 and stage 1's 32 channels: every gate the
                   # search thinned there is padded back to its full width
                   '--config.export.pad_to=32')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  kept = summary['search']['kept_channels']
  widths = {'stage0': 16, 'stage1': 32}
  padded = {g: [k, widths[g.split('/')[0]]] for g, k in kept.items()
            if g.split('/')[0] in widths and k < widths[g.split('/')[0]]}
  assert padded and summary['export']['program_padded_gates'] == padded
  network = json.loads((workdir / 'export' / 'network.json').read_text())
  assert network['program_padded_gates'] == padded
  assert dict(network['attributes']['widths']) == kept  # the real ones
  split = datasets.load_split('cifar10', 'test[:100]', TFDS_DIR)
  program = export.load_program(str(workdir / 'export' / 'model.jax'))
  predicted = np.argmax(np.asarray(program.call(split.images)), axis=-1)
  assert 100 * np.mean(predicted == split.labels) == pytest.approx(
      final['test_accuracy'], abs=1e-6)

  # The saved slimmed model loads as an init checkpoint: same accuracy.
  evaluated = workdir / 'evaluate'
  result = run_cli(*FINETUNE, f'--workdir={evaluated}',
                   '--config.phases=evaluate',
                   f'--config.init_checkpoint={workdir}/finetune/final')
  assert result.returncode == 0, result.stderr[-3000:]
  base = json.loads((evaluated / 'summary.json').read_text())['base']
  assert base['flops'] == final['flops']
  assert base['test_accuracy'] == final['test_accuracy']
