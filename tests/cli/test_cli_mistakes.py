"""Mistaken inputs through the real command line, in subprocesses.

Each mistake must end the CLI with a non-zero status and ONE line on stderr
naming the problem, before any compute where the input allows (no phase
results in the workdir), and the corrected command must then succeed in
the same workdir (run once for all the mistakes that leave the workdir as
a fresh one, see WRITE_ONLY). The counts are in docs/reliability.md.
"""

import json
import os
import pickle
import re
import subprocess
import sys

import pytest

from conftest import OFFICIAL_RESNET56, REPO, TFDS_DIR, needs_cifar10, \
    needs_official

pytestmark = [pytest.mark.slow, needs_cifar10, needs_official]

CONFIG = '--config=configs/resnet56_cifar.py'
# The corrected command: evaluate the official network on 100 test images.
GOOD = {'config.init_checkpoint': str(OFFICIAL_RESNET56),
        'config.phases': 'evaluate', 'config.quiet': 'True',
        'config.data.test_split': 'test[:100]',
        'config.data.data_dir': TFDS_DIR}


def _evil_pickle(path):
  class Payload:
    def __reduce__(self):
      return (os.system, (f'touch {path}.pwned',))
  with open(path, 'wb') as f:
    pickle.dump({'conv/kernel:0': Payload()}, f)


def _files(tmp):
  """Paths the mistakes refer to, made once per test."""
  files = {
      'empty.pkl': b'',
      'truncated.pkl': OFFICIAL_RESNET56.read_bytes()[:5000],
      'text.pkl': b'these are not weights\n',
      'list.pkl': pickle.dumps([1, 2, 3]),
      'syntax.py': b'def get_config(:\n  pass\n',
      'noconfig.py': b'x = 1\n',
  }
  for name, content in files.items():
    (tmp / name).write_bytes(content)
  _evil_pickle(str(tmp / 'evil.pkl'))
  (tmp / 'notckpt').mkdir()
  (tmp / 'a_file').write_text('')
  return tmp


# (name, extra args (overrides replace GOOD's), stderr must match, flags
# that replace the config flag). Values with {tmp} are formatted.
MISTAKES = [
    # The command line itself.
    ('no workdir', {'--workdir': None}, r'--workdir is required'),
    ('no config', {'--config': None}, r'--config is required'),
    ('config file missing', {'--config': 'configs/resnet65_cifar.py'},
     r'configs/resnet65_cifar.py: no such config file'),
    ('config syntax error', {'--config': '{tmp}/syntax.py'},
     r'syntax error'),
    ('config without get_config', {'--config': '{tmp}/noconfig.py'},
     r'has no get_config\(\)'),
    ('unknown key', {'--config.search.nope': '1'},
     r'--config.search.nope: no such config key'),
    ('unknown section', {'--config.serch.step': '0.1'},
     r'--config.serch.step: no such config key'),
    ('wrong type', {'--config.search.step': 'fast'},
     r'--config.search.step: no such config key, or a value of the wrong'),
    ('unknown flag', {'--wrkdir': 'x'}, r'Unknown command line flag'),
    ('positional argument', {'search': ''}, r'unexpected arguments'),
    # Config values.
    ('target above 1', {'--config.search.target_flops_rate': '1.5'},
     r'config.search.target_flops_rate=1.5: must be in \(0, 1\)'),
    ('target NaN', {'--config.search.target_flops_rate': 'nan'},
     r'target_flops_rate=nan: must be a finite number'),
    ('target below the floor', {'--config.search.target_flops_rate': '0.001',
                                '--config.phases': 'search'},
     r'cannot get below a FLOPs rate'),
    ('criterion typo', {'--config.search.criterion': 'L1'},
     r"search.criterion='L1': allowed: ekg, gbn"),
    ('teacher typo', {'--config.search.teacher': 'ensembel'},
     r"search.teacher='ensembel': allowed"),
    ('marking typo', {'--config.search.marking': 'channel'},
     r"search.marking='channel': allowed: reference, per_channel"),
    ('evaluation typo', {'--config.search.evaluation': 'gpu'},
     r"search.evaluation='gpu': allowed"),
    ('step zero', {'--config.search.step': '0'}, r'search.step=0.0'),
    ('otsu trim half', {'--config.search.otsu_trim': '0.5'},
     r'search.otsu_trim=0.5'),
    ('chunk zero', {'--config.search.chunk_size': '0'},
     r'chunk_size=0: must be a positive integer'),
    ('learning rate NaN', {'--config.finetune.learning_rate': 'nan'},
     r'finetune.learning_rate=nan: must be a finite number > 0'),
    ('learning rate negative', {'--config.pretrain.learning_rate': '-0.1'},
     r'pretrain.learning_rate=-0.1: must be > 0'),
    ('weight decay inf', {'--config.finetune.weight_decay': 'inf'},
     r'finetune.weight_decay=inf: must be a finite number'),
    ('temperature NaN', {'--config.finetune.temperature': 'nan'},
     r'temperature=nan'),
    ('momentum 1', {'--config.finetune.momentum': '1.0'},
     r'finetune.momentum=1.0: must be in \[0, 1\)'),
    ('decay factor 0', {'--config.finetune.lr_decay_factor': '0'},
     r'lr_decay_factor=0.0'),
    ('decay point 1.5', {'--config.finetune.lr_decay_epochs_fraction':
                         '(0.3, 1.5)'}, r'every value must be in \[0, 1\]'),
    ('epochs negative', {'--config.finetune.epochs': '-1'},
     r'finetune.epochs=-1: must be an integer >= 0'),
    ('knowledge typo', {'--config.finetune.knowledge': 'ensembles'},
     r"finetune.knowledge='ensembles': allowed"),
    ('dtype typo', {'--config.finetune.dtype': 'float16'},
     r"finetune.dtype='float16': allowed"),
    ('mean above 255', {'--config.data.mean': '(1.0, 2.0, 300.0)'},
     r'data.mean=\(1.0, 2.0, 300.0\): every value must be in \[0, 255\]'),
    ('std zero', {'--config.data.std': '(1.0, 0.0, 1.0)'},
     r'data.std=.*every value must be > 0'),
    ('two means', {'--config.data.mean': '(1.0, 2.0)'},
     r'data.mean=\(1.0, 2.0\): needs 3 values'),
    ('image size', {'--config.data.image_size': '64'},
     r'data.image_size=64: cifar10 images are 32x32'),
    ('model typo', {'--config.model.name': 'resnet57'},
     r"model.name='resnet57': allowed"),
    ('dataset typo', {'--config.data.name': 'cifar'},
     r"data.name='cifar': allowed"),
    ('bn momentum NaN', {'--config.model.bn_momentum': 'nan'},
     r'model.bn_momentum=nan'),
    ('pad too big', {'--config.augment.pad': '40'},
     r'augment.pad=40: a reflect pad must be smaller'),
    ('contrast reversed', {'--config.augment.contrast': '(1.2, 0.8)'},
     r'augment.contrast=.*low <= high'),
    ('warm-up lr inf', {'--config.warmup.learning_rate': 'inf'},
     r'warmup.learning_rate=inf'),
    ('bank dtype', {'--config.memory_bank.dtype': 'int8'},
     r"memory_bank.dtype='int8': allowed"),
    ('no teachers', {'--config.memory_bank.num_teachers': '0'},
     r'num_teachers=0: must be a positive integer'),
    ('phase typo', {'--config.phases': 'evalute'},
     r"unknown or empty phases \['evalute'\]"),
    ('landscape bn', {'--config.landscape.bn': 'frozen'},
     r"landscape.bn='frozen': allowed"),
    ('val set smaller than a batch', {'--config.data.val_per_class': '10'},
     r'data.val_per_class=10: the validation set \(100 images\)'),
    # Files and folders.
    ('workdir is a file', {'--workdir': '{tmp}/a_file/w'},
     r'a_file is a file'),
    ('data dir missing', {'--config.data.data_dir': '/nonexistent/tfds'},
     r"data.data_dir='/nonexistent/tfds': no such folder"),
    ('dataset not prepared', {'--config.data.name': 'cifar100',
                              '--config.model.name': 'resnet56'},
     r"dataset 'cifar100' .* is not prepared in"),
    ('imagenet not prepared', {'--config': 'configs/resnet18_imagenet.py',
                               '--config.init_checkpoint': None,
                               '--config.phases': 'pretrain',
                               '--config.data.data_dir': '{tmp}/notckpt'},
     r"dataset 'imagenet2012' .* is not prepared in \S*notckpt\. .*"
     r"ILSVRC2012_img_train.tar .* \S*notckpt/downloads/manual/, .*"
     r"tfds build imagenet2012"),
    ('test split typo', {'--config.data.test_split': 'tset'},
     r"config.data.test_split='tset': cifar10 has no split 'tset'"),
    ('train split slice', {'--config.data.train_split': 'train[:abc]',
                           '--config.phases': 'search'},
     r"config.data.train_split='train\[:abc\]'"),
    ('val per class above a class', {
        '--config.data.train_split': 'train[:1000]',
        '--config.data.val_per_class': '150', '--config.phases': 'search'},
     r'data.val_per_class=150: the train split .* smallest class'),
    ('fine-tune batch above the split', {
        '--config.data.train_split': 'train[:100]',
        '--config.finetune.batch_size': '128',
        '--config.phases': 'search,finetune',
        '--config.finetune.knowledge': 'none',
        '--config.data.val_per_class': '26',
        '--config.data.warmup_per_class': '5'},
     r'finetune.batch_size=128: larger than the train split'),
    ('checkpoint missing', {'--config.init_checkpoint': '/nope/w.pkl'},
     r"init_checkpoint='/nope/w.pkl': no such file"),
    ('checkpoint empty', {'--config.init_checkpoint': '{tmp}/empty.pkl'},
     r'empty.pkl is not a readable .pkl checkpoint'),
    ('checkpoint truncated', {'--config.init_checkpoint':
                              '{tmp}/truncated.pkl'},
     r'truncated.pkl is not a readable .pkl checkpoint'),
    ('checkpoint text', {'--config.init_checkpoint': '{tmp}/text.pkl'},
     r'text.pkl is not a readable .pkl checkpoint'),
    ('checkpoint list', {'--config.init_checkpoint': '{tmp}/list.pkl'},
     r'list.pkl holds a list'),
    ('checkpoint malicious', {'--config.init_checkpoint': '{tmp}/evil.pkl'},
     r'refusing to load posix.system'),
    ('checkpoint of another model', {'--config.model.name': 'resnet20'},
     r'does not fit the model'),
    ('folder that is no checkpoint', {'--config.init_checkpoint':
                                      '{tmp}/notckpt'},
     r'notckpt'),
    # Phases.
    ('evaluate random weights', {'--config.init_checkpoint': ''},
     r'would measure randomly initialised weights'),
    ('memory bank before search', {'--config.phases': 'memory_bank'},
     r"phase 'memory_bank' needs a finished 'search'"),
    ('finetune before bank', {'--config.phases': 'finetune'},
     r"phase 'finetune' needs a finished 'search'"),
    ('redo typo', {'--config.redo': 'serch'},
     r"config.redo='serch': unknown or empty phases \['serch'\]"),
    ('distributed without cluster', {'--config.distributed': 'True'},
     r'config.distributed=True: .* found no cluster'),
]


def command(workdir, changes, tmp):
  args = {'--config': CONFIG.split('=', 1)[1], '--workdir': str(workdir),
          **{f'--{k}': v for k, v in GOOD.items()}}
  positional = []
  for key, value in changes.items():
    value = None if value is None else value.format(tmp=tmp)
    if not key.startswith('--'):
      positional.append(key)
    elif value is None:
      args.pop(key, None)
    else:
      args[key] = value
  return [sys.executable, '-m', 'ekg_jax.main', *positional,
          *(f'{k}={v}' for k, v in args.items())]


def run(cmd):
  env = dict(os.environ, TFDS_DATA_DIR=TFDS_DIR)
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=env)


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
  return _files(tmp_path_factory.mktemp('inputs'))


@pytest.mark.parametrize('name,changes,match', MISTAKES,
                         ids=[m[0] for m in MISTAKES])
def test_mistake_is_one_line_and_the_fix_succeeds(tmp, tmp_path, name,
                                                   changes, match):
  result = run(command(tmp_path / 'w', changes, tmp))
  assert result.returncode != 0, result.stdout[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith('ekg_jax: error: '), lines[0]
  assert re.search(match, lines[0]), lines[0]
  assert not os.path.exists(f'{tmp}/evil.pkl.pwned')
  # Before compute: no phase left results in the workdir.
  summary = tmp_path / 'w' / 'summary.json'
  assert not summary.exists() or not (
      set(json.loads(summary.read_text())) - {'weights'})
  # The corrected command succeeds in the same workdir. A workdir the
  # mistake left absent, or holding only write-only logs, is to any run a
  # fresh one: test_the_corrected_command_succeeds_in_a_fresh_workdir runs
  # the fix there once for all of them. Any other leftover (a lock, a
  # config.json, a summary, a checkpoint) gets its own rerun here.
  workdir = tmp_path / 'w'
  leftover = set(os.listdir(workdir)) if workdir.is_dir() else set()
  if leftover <= WRITE_ONLY:
    return
  fixed = run(command(workdir, {}, tmp))
  assert fixed.returncode == 0, fixed.stderr[-3000:]
  base = json.loads(summary.read_text())['base']
  assert base['test_images'] == 100


# What a failed run may leave that no run reads: ekg_jax/main.py appends
# log lines to log.txt and tracebacks to error.log, and nothing else in the
# package opens either (test_the_logs_are_write_only).
WRITE_ONLY = {'log.txt', 'error.log'}


def test_the_logs_are_write_only():
  """Guards the shared fix run above: should a module other than main.py
  ever name log.txt or error.log (and so maybe read one), this fails and
  every mistake needs its own rerun again."""
  readers = sorted(
      str(p.relative_to(REPO)) for p in (REPO / 'ekg_jax').rglob('*.py')
      if p.name != 'main.py' and any(n in p.read_text() for n in WRITE_ONLY))
  assert readers == [], readers
  main = (REPO / 'ekg_jax' / 'main.py').read_text()
  assert "os.path.join(folder, 'error.log')" in main and (
      "with open(path, 'a') as f:" in main)
  assert "logging.FileHandler(os.path.join(workdir, 'log.txt'))" in main


@pytest.mark.parametrize('leftover', ['none', 'logs'])
def test_the_corrected_command_succeeds_in_a_fresh_workdir(tmp, tmp_path,
                                                            leftover):
  """The fix of every mistake that leaves no workdir ('none') or only the
  logs ('logs': a real mistake's log.txt and error.log, here a config value
  refused after the workdir was made)."""
  workdir = tmp_path / 'w'
  if leftover == 'logs':
    mistake = run(command(workdir, {'--config.search.step': '0'}, tmp))
    assert mistake.returncode == 2, mistake.stderr[-2000:]
    assert set(os.listdir(workdir)) == WRITE_ONLY
    assert (workdir / 'error.log').stat().st_size > 0
  fixed = run(command(workdir, {}, tmp))
  assert fixed.returncode == 0, fixed.stderr[-3000:]
  base = json.loads((workdir / 'summary.json').read_text())['base']
  assert base['test_images'] == 100


# Small: the run is stopped as soon as it holds the lock, and the rerun
# only has to finish.
SMALL_SEARCH = {'--config': 'configs/resnet20_cifar.py',
                'config.init_checkpoint': None, 'config.phases': 'search',
                'config.data.train_split': 'train[:1000]',
                'config.data.warmup_per_class': '32',
                'config.search.target_flops_rate': '0.9',
                'config.search.evaluation': 'loop'}


def small_search(workdir, tmp):
  changes = {k if k.startswith('--') else f'--{k}': v
             for k, v in SMALL_SEARCH.items()}
  changes['--config.init_checkpoint'] = None
  return command(workdir, changes, tmp)


def _wait_for_lock(path, proc, timeout=300):
  import time
  start = time.time()
  while not (path.exists() and path.read_text().strip() == str(proc.pid)):
    assert proc.poll() is None, proc.communicate()
    assert time.time() - start < timeout, f'{proc.pid} never took {path}'
    time.sleep(0.05)


def test_two_runs_on_one_workdir_and_sigint_then_rerun(tmp, tmp_path):
  """A second run on a busy workdir is refused in one line; SIGINT stops a
  run with one line; the rerun resumes and finishes."""
  import signal
  workdir = tmp_path / 'w'
  env = dict(os.environ, TFDS_DATA_DIR=TFDS_DIR)
  first = subprocess.Popen(small_search(workdir, tmp), cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    # Frozen as soon as it holds the workdir's lock (the lock file names its
    # PID), so however fast the search (warm compilation cache), the second
    # run meets a busy workdir and the SIGINT meets a running process.
    _wait_for_lock(workdir / '.lock', first)
    first.send_signal(signal.SIGSTOP)
    second = run(small_search(workdir, tmp))
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f'in use by process {first.pid}' in lines[0]
    first.send_signal(signal.SIGINT)  # delivered as it continues
    first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=120)
  finally:
    first.kill()
  assert first.returncode == 130, err[-2000:]
  assert err.strip().splitlines()[-1].startswith('ekg_jax: interrupted')
  rerun = run(small_search(workdir, tmp))
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['search']['flops_rate'] <= 0.9


def test_a_swallowed_sigint_still_ends_the_run_as_interrupted(tmp_path):
  """A library that catches the KeyboardInterrupt (as happened once in CI
  while data was prepared) cannot make an interrupted run exit 0."""
  swallow = ('import os, runpy, signal, sys\n'
             'import ekg_jax.pipeline as p\n'
             'def run(config, workdir):\n'
             '  try:\n'
             '    os.kill(os.getpid(), signal.SIGINT)\n'
             '    sum(range(10 ** 6))  # the handler runs here\n'
             '  except BaseException:\n'
             '    pass\n'
             'p.run = run\n'
             'sys.argv = ["ekg_jax.main"] + sys.argv[1:]\n'
             'runpy.run_module("ekg_jax.main", run_name="__main__")\n')
  result = run([sys.executable, '-c', swallow,
                f'--workdir={tmp_path / "w"}', '--config=configs/quickstart.py'])
  assert result.returncode == 130, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      'ekg_jax: interrupted')


def test_disk_full_is_one_line_and_the_workdir_resumes(tmp, tmp_path):
  workdir = tmp_path / 'w'
  full = ('import errno, runpy, sys\n'
          'import ekg_jax.files.checkpoint as c\n'
          'def no_space(path, *a, **k):\n'
          '  raise OSError(errno.ENOSPC, "No space left on device", path)\n'
          'c.write_json_atomic = no_space\n'
          'sys.argv = ["ekg_jax.main"] + sys.argv[1:]\n'
          'runpy.run_module("ekg_jax.main", run_name="__main__")\n')
  cmd = command(workdir, {}, tmp)
  result = run([sys.executable, '-c', full, *cmd[3:]])
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'no space left on device' in lines[0], lines
  assert 'rerun the same command to resume' in lines[0]
  fixed = run(cmd)
  assert fixed.returncode == 0, fixed.stderr[-3000:]
