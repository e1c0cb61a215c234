"""The two sides of benchmarks/authors_tf.py: the authors' code at a fixed
commit, copied and patched; each side's command; and each side's output
lines, read as they come into step times and the choices it made."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time

from workers import stats  # benchmarks/, beside this file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PATCH = os.path.join(HERE, 'authors_tf.patch')
AUTHORS_COMMIT = '0c0b516572fa79a8b2d0e0fef83a1cd91283fbe5'
AUTHORS_FILES = ('pruning.py', 'prune_utils.py', 'op_utils.py', 'utils.py',
                 'dataloader/CIFAR.py', 'nets/ResNet.py', 'nets/tcl.py')
TARGET = 0.45  # configs/resnet56_cifar.py and the authors' README command
# Their gate list order (prune_utils.initialize_Gate over ResNet-56's
# layers: the stem or projection conv, then each block's conv1) in ekg_jax's
# names, with each gate's channels.
GATES = [(f'stage{s}' + (f'/block{b}' if b >= 0 else ''), 16 << s)
         for s in range(3) for b in range(-1, 9)]

JAX_STEP = re.compile(r'search step (\d+): (\S+) -> (\d+) channels .*'
                      r'val loss ([\d.]+) .*\| (\d+) candidates')
TF_STEP = re.compile(r'^Step: (\d+)$')
TF_WIDTHS = re.compile(r'^\[(.*)\] (\d+)$')
TF_LOSS = re.compile(r'Current Loss\.: ([\d.]+)')
TF_MARKED = re.compile(r'# of layers to evaluated is (\d+)/')
# One width of their list: 0.4, or np.float64(0.2) as NumPy 2 prints one
# their fine search set (the number last: not the 64 of float64).
WIDTH = re.compile(r'([\d.]+(?:e-?\d+)?)\)?\s*$')
# Start-up marks: the first line matching each, per side.
MARKS = {'jax': {'warmup_done': re.compile(r'warm-up: \d+ images')},
         'tf': {'warmup_done': re.compile(r'^Warm-up done$'),
                'data_done': re.compile(r'^Datasets are built$')}}
# The line each side prints once its whole search has reached the target:
# ekg_jax's phase result line, the authors' search time.
ENDS = {'jax': re.compile(r'^search: '),
        'tf': re.compile(r'^Searching time: ')}


def portable_path(path: str) -> str:
  """A path as a results file records it: repository-relative inside the
  repository, else only its last part (this machine's folders mean nothing
  elsewhere)."""
  if not os.path.isabs(path):
    return path
  if os.path.commonpath([os.path.abspath(path), ROOT]) == ROOT:
    return os.path.relpath(path, ROOT)
  return os.path.join('<elsewhere>', os.path.basename(path.rstrip('/')))


def portable(arg: str) -> str:
  """A command-line argument with its path made portable."""
  key, eq, value = arg.partition('=')
  return f'{key}={portable_path(value)}' if eq and value.startswith('/') \
      else arg


def authors_source(repo: str, dest: str) -> str:
  """Their files at AUTHORS_COMMIT (from a git repository holding it) or as
  they are (a plain folder), copied to dest and patched; returns the
  source's name."""
  in_git = subprocess.run(['git', '-C', repo, 'cat-file', '-e',
                           AUTHORS_COMMIT + '^{commit}'],
                          capture_output=True).returncode == 0
  for name in AUTHORS_FILES:
    os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
    target = os.path.join(dest, name)
    if in_git:
      with open(target, 'wb') as f:
        f.write(subprocess.run(['git', '-C', repo, 'show',
                                f'{AUTHORS_COMMIT}:{name}'],
                               capture_output=True, check=True).stdout)
    elif os.path.isfile(os.path.join(repo, name)):
      shutil.copy(os.path.join(repo, name), target)
    else:
      raise SystemExit(f'error: {repo} is neither a git clone of '
                       f'sseung0703/EKG holding commit {AUTHORS_COMMIT[:7]} '
                       f'nor a folder of its files (no {name})')
  applied = subprocess.run(['git', 'apply', PATCH], cwd=dest,
                           capture_output=True, text=True)
  if applied.returncode:
    raise SystemExit(f'error: authors_tf.patch does not apply to {repo}: '
                     f'{applied.stderr.strip().splitlines()[0]}')
  # Named as results files record it (no folder of this machine's).
  return (f'github.com/sseung0703/EKG@{AUTHORS_COMMIT[:7]}' if in_git
          else portable_path(repo))


def tf_kept(width: float, channels: int) -> int:
  """Their kept count: ranks below max(C * rate, 1), in float32."""
  import numpy as np
  bound = max(np.float32(channels) * np.float32(width), np.float32(1.0))
  return int(np.sum(np.arange(channels, dtype=np.float32) < bound))


class Reader:
  """Turns one side's output lines into step times and choices."""

  def __init__(self, side: str):
    self.side, self.times, self.choices = side, [], []
    self.marks, self.marked = {}, []

  def feed(self, line: str, t: float) -> None:
    if self.side == 'jax':
      m = JAX_STEP.search(line)
      if m:
        self.times.append(t)
        self.choices.append({'gate': m[2], 'kept': int(m[3]),
                             'val_loss': float(m[4]),
                             'candidates': int(m[5])})
    else:
      if TF_MARKED.search(line):
        self.marked.append(int(TF_MARKED.search(line)[1]))
      elif TF_STEP.search(line):
        self.times.append(t)
        self.choices.append({'candidates': self.marked[-1]})
      elif TF_WIDTHS.search(line) and self.choices and (
          'gate' not in self.choices[-1]):
        m = TF_WIDTHS.search(line)
        gate, channels = GATES[int(m[2])]
        width = float(WIDTH.search(m[1].split(',')[int(m[2])])[1])
        self.choices[-1].update(gate=gate, kept=tf_kept(width, channels))
      elif TF_LOSS.search(line) and self.choices and (
          'val_loss' not in self.choices[-1]):
        # their loss: each batch's CE sum / 256, averaged over the 2
        # batches of the 320 images; ekg_jax's: the mean over the 320
        self.choices[-1]['val_loss'] = round(
            float(TF_LOSS.search(line)[1]) * 512 / 320, 4)
    for mark, pattern in MARKS[self.side].items():
      if mark not in self.marks and pattern.search(line):
        self.marks[mark] = t

  def done(self) -> list:
    return [c for c in self.choices if 'val_loss' in c]


def run_side(side: str, argv: list, env: dict, cwd: str,
             steps: int | None, log_path: str, timeout: float) -> dict:
  """Launches one side, reads its lines as they come, kills it once step
  `steps` is read (steps None: once its search has ended); times in seconds
  from launch."""
  reader = Reader(side)
  end = None
  start = time.monotonic()
  with open(log_path, 'w', buffering=1) as log:  # readable while it runs
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    watchdog = threading.Timer(timeout, proc.kill)  # a side gone silent
    watchdog.start()
    try:
      for line in proc.stdout:
        t = time.monotonic() - start
        log.write(f'{t:9.3f} {line}')
        reader.feed(line.rstrip('\n'), t)
        if steps is None and ENDS[side].search(line):
          end = t
          break
        if steps is not None and len(reader.done()) >= steps:
          break
    finally:
      watchdog.cancel()
      proc.kill()
      proc.wait()
  missing = set(MARKS[side]) - set(reader.marks)
  whole = steps is None
  if whole and end is None:
    missing.add('the end of the search')
  if whole:
    steps = len(reader.done())
  if len(reader.done()) < max(steps, 2) or missing:
    with open(log_path) as f:
      tail = ''.join(f.readlines()[-15:])
    raise SystemExit(f'error: the {side} side stopped after '
                     f'{len(reader.done())} of {steps} steps, marks missing '
                     f'{sorted(missing)} (log {log_path}):\n{tail}')
  times = reader.times[:steps]
  step_s = stats([b - a for a, b in zip(times, times[1:])])['median']
  return {'step_times': times, **reader.marks,
          'step_s': step_s, 'startup_s': times[0] - step_s,
          'e2e_s': end if whole else times[-1], 'steps': steps,
          'choices': reader.done()[:steps]}


def sides(args, scratch: str, rep: int) -> dict:
  """argv, env and cwd of each side for one repetition, in fresh folders."""
  base = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  base.update(PYTHONUNBUFFERED='1', TFDS_DATA_DIR=args.tfds_dir)
  run_dir = os.path.join(scratch, f'rep{rep}')
  os.makedirs(run_dir)
  jax = [sys.executable, '-m', 'ekg_jax.main',
         '--config=configs/resnet56_cifar.py',
         f'--workdir={run_dir}/jax', f'--config.init_checkpoint={args.weights}',
         '--config.phases=search', '--config.quiet=True',
         '--verbose',  # the step lines are INFO: on the terminal too
         f'--config.search.target_flops_rate={TARGET}',
         f'--config.cache_dir={run_dir}/jax_cache']
  tf = [args.tf_python, '-u', 'pruning.py', '--train_path', f'{run_dir}/tf',
        '--arch', 'ResNet-56', '--dataset', 'CIFAR10', '--search_target_rate',
        str(TARGET), '--trained_param', args.weights]
  return {'tf': (tf, {**base, 'TF_USE_LEGACY_KERAS': '1'},
                 os.path.join(scratch, 'authors')),
          'jax': (jax, {**base, 'PYTHONPATH': ROOT}, ROOT)}
