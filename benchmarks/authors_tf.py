"""ekg_jax against the authors' TensorFlow code, whole processes side by side.

  make tf-venv   # .venv-tf: tensorflow-cpu, tf-keras, TFDS
  python benchmarks/authors_tf.py --authors-repo=PATH            # 10 steps x 3
  python benchmarks/authors_tf.py --authors-repo=PATH --quick    # smoke run
  python benchmarks/authors_tf.py --authors-repo=PATH --steps=all --reps=2
                                                 # whole searches (~90 min)

PATH: a clone of sseung0703/EKG (bare or not; AUTHORS_COMMIT is read) or a
folder of its files. Each repetition launches the ResNet-56 / CIFAR-10
search from the official weights once per side, in turn (order reversed on
odd repetitions): their `pruning.py` (a copy patched by `authors_tf.patch`
to run offline on CPU) and `python -m ekg_jax.main --config.phases=search`
with an empty cache folder (cold). Each is timed from launch to the arrival
of its first --steps step lines, then killed; with --steps=all each side
runs its whole search to the target (the two may end at different step
counts) and is timed to the line that ends it. Per side: per-step = median
time between steps 2..N; start-up = launch to step 1 less one per-step
time; end to end = launch to step N (the search's end with --steps=all). Ratios TF / ekg_jax per repetition,
then median (min-max). The sides' choices at each step are compared
(`fidelity`). How and why: benchmarks/README.md.

Writes `<out-dir>/authors-tf-<machine>.json` (every time and choice, the
options, versions, the command) and `.md` (`authors-tf-<machine>-all.*` for
whole searches, with a `.png` of seconds per step against step, both
sides); each side's log goes to --log-dir.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from report import _fmt, machine_info  # noqa: E402 (beside)
from workers import settle, stats  # noqa: E402

TF_PYTHON = os.path.join(ROOT, '.venv-tf', 'bin', 'python')
WEIGHTS = os.path.join(ROOT, '..', 'shared', 'pretrained',
                       'ekg_official_resnet56_cifar10.pkl')
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


def appended(path: str, results: dict, parser) -> tuple[list, list]:
  """The runs and commands of the results file at `path`, to which this
  run adds repetitions: refused unless it matches `results` in everything
  but the repetitions (each repetition pairs both sides on one machine, so
  repetitions from two sessions of the same CPU model combine)."""
  if not os.path.exists(path):
    parser.error(f'--append: no results file {path} to add to')
  with open(path) as f:
    before = json.load(f)
  for key in ('versions', 'authors', 'weights_sha256'):
    if before.get(key) != results[key]:
      parser.error(f'--append: {path} has {key} {before.get(key)!r}, this '
                   f'run {results[key]!r}: start a new file instead')
  if before['machine']['cpu'] != results['machine']['cpu'] or \
      before['options']['steps'] != results['options']['steps']:
    parser.error(f'--append: {path} was made on {before["machine"]["cpu"]} '
                 f'with steps={before["options"]["steps"]}: start a new file')
  return before['runs'], before.get('commands', [before.get('command')]) + \
      results['commands']


def fidelity(reps: list) -> dict:
  """Both sides' choices per step, and whether they agree in every run."""
  def key(c):
    return (c['gate'], c['kept'], c['candidates'])
  def agreeing(r):  # steps, from the first, where both chose alike
    pairs = list(zip(map(key, r['tf']['choices']),
                     map(key, r['jax']['choices'])))
    return next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
  same = all(list(map(key, r['tf']['choices'])) ==
             list(map(key, r['jax']['choices'])) for r in reps)
  # Losses compared while the sides evaluate the same sub-networks.
  diffs = [abs(a['val_loss'] - b['val_loss']) for r in reps
           for a, b in list(zip(r['tf']['choices'],
                                r['jax']['choices']))[:agreeing(r)]]
  return {'same_gates_kept_candidates': same,
          'agreeing_steps': [agreeing(r) for r in reps],
          'max_abs_val_loss_diff': max(diffs, default=0.0),
          'tf': reps[0]['tf']['choices'], 'jax': reps[0]['jax']['choices']}


def summarize(reps: list) -> dict:
  keys = ('startup_s', 'step_s', 'e2e_s', 'warmup_done', 'steps')
  out = {s: {k: stats([r[s][k] for r in reps]) for k in keys}
         for s in ('tf', 'jax')}
  out['ratio_tf_over_jax'] = {k: stats([r['tf'][k] / r['jax'][k]
                                        for r in reps]) for k in keys}
  out['tf']['data_done'] = stats([r['tf']['data_done'] for r in reps])
  return out


def markdown(results: dict) -> str:
  o, v, s = results['options'], results['versions'], results['summary']
  whole = o['steps'] == 'all'
  steps = ('steps 2 to the end' if whole else
           f"steps 2-{o['steps']}" if o['steps'] > 2 else 'step 2')
  scope = (f"whole searches to FLOPs rate {o['target']}" if whole
           else f"first {o['steps']} steps")
  dates = [r['date'] for r in results['runs'] if 'date' in r]
  lines = ['Made by ' + ', then '.join(
               f'`{c}`' for c in results.get('commands',
                                             [results.get('command')]))
           + (f" (repetitions started {', '.join(dates)})" if dates else ''),
           '',
           f"Machine: {results['machine']['cpu']}, "
           f"{results['machine']['cpus']} cores. The authors' code "
           f"({results['authors']}) on TensorFlow {v['tensorflow']} "
           f"(tf-keras {v['tf_keras']}) against ekg_jax on JAX {v['jax']} "
           f"with a cold cache; the ResNet-56 / CIFAR-10 search from the "
           f"official weights, {scope}; medians (min-max) "
           f"over {o['reps']} repetition{'s' * (o['reps'] > 1)}, sides "
           'alternating.', '',
           "| seconds | authors' TF | ekg_jax | TF / ekg_jax |",
           '|---|---|---|---|']
  rows = [('start-up (launch to step 1, less one step)', 'startup_s'),
          (f'per search step ({steps})', 'step_s'),
          ('end to end (launch to the end of the search)' if whole else
           f"end to end (launch to step {o['steps']})", 'e2e_s'),
          ('launch to end of warm-up', 'warmup_done')]
  if whole:
    rows.append(('search steps to the target', 'steps'))
  for label, k in rows:
    digits = 0 if k == 'steps' else 1
    lines.append(f"| {label} | {_fmt(s['tf'][k], digits)} | "
                 f"{_fmt(s['jax'][k], digits)} | "
                 f"{_fmt(s['ratio_tf_over_jax'][k], 2)}x |")
  lines += ['', "Of the authors' start-up, launch to their datasets built: "
            f"{_fmt(s['tf']['data_done'])} s (imports, then reading and "
            'decoding all 60,000 CIFAR-10 images from the TFDS copy, the '
            "patch's loader; their original one unpickles a downloaded copy)."]
  f = results['fidelity']
  chosen = ', '.join(f"{c['gate']} -> {c['kept']}" for c in f['jax'])
  same = 'the same' if f['same_gates_kept_candidates'] else 'NOT the same'
  if whole:
    lines += ['', 'Fidelity: the sides chose the same gate, kept channels '
              'and candidate count for the first '
              f"{', '.join(map(str, f['agreeing_steps']))} steps (per "
              'repetition), then parted; there validation CE differs by at '
              f"most {f['max_abs_val_loss_diff']:.4f} (theirs x 512/320). "
              'Per-step times and step counts are each side\'s own search '
              'from there on; the figure beside this table plots them.', '']
    return '\n'.join(lines)
  lines += ['', f'Fidelity: {same} gates, kept channels and candidate '
            f'counts at every step of every repetition (ekg_jax: {chosen}); '
            'validation CE differs by at most '
            f"{f['max_abs_val_loss_diff']:.4f} (theirs x 512/320).", '']
  return '\n'.join(lines)


def figure(results: dict, path: str) -> None:
  """Seconds per step against step, each side, every repetition."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for side, label, color in (('tf', "authors' TF", 'tab:red'),
                             ('jax', 'ekg_jax', 'tab:blue')):
    for i, run in enumerate(results['runs']):
      t = run[side]['step_times']
      ax.plot(range(2, len(t) + 1), [b - a for a, b in zip(t, t[1:])],
              color=color, alpha=0.8, lw=1,
              label=label if i == 0 else None)
  ax.set(xlabel='search step', ylabel='seconds per step', ylim=(0, None),
         title='ResNet-56 search to FLOPs rate '
         f"{results['options']['target']}, side by side")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_steps(value: str):
  return value if value == 'all' else int(value)


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument('--authors-repo', default=os.environ.get(
      'EKG_AUTHORS_REPO', os.path.join(ROOT, 'workdirs', 'authors-EKG')),
      help="a clone of sseung0703/EKG or a folder of its files "
      '(default $EKG_AUTHORS_REPO, else workdirs/authors-EKG)')
  parser.add_argument('--quick', action='store_true',
                      help='2 steps, 1 repetition: a smoke run')
  parser.add_argument('--steps', type=parse_steps,
                      help="search steps (default 10), or 'all': whole "
                      'searches to the target')
  parser.add_argument('--reps', type=int, help='repetitions (default 3)')
  parser.add_argument('--tf-python', default=TF_PYTHON)
  parser.add_argument('--weights', default=os.path.abspath(WEIGHTS))
  parser.add_argument('--tfds-dir', default=os.environ.get('TFDS_DATA_DIR') or
                      os.path.abspath(os.path.join(ROOT, '..', 'shared',
                                                   'tfds')))
  parser.add_argument('--out-dir', help='default benchmarks/results, '
                      'workdirs/authors-tf-quick with --quick')
  parser.add_argument('--log-dir', help='default <out-dir>/authors-tf-logs '
                      'under workdirs/')
  parser.add_argument('--machine', default=f'cpu-{os.cpu_count()}cores')
  parser.add_argument('--append', action='store_true',
                      help='add these repetitions to the results file of '
                      'the same options (e.g. in a later session); refused '
                      'unless it was made on the same CPU model, with the '
                      'same versions, weights and authors commit')
  args = parser.parse_args(argv)
  whole = args.steps == 'all'
  steps = None if whole else args.steps or (2 if args.quick else 10)
  reps = args.reps or (1 if args.quick else 3)
  if (steps is not None and steps < 2) or reps < 1:
    parser.error('--steps must be >= 2 (per-step time needs two) and '
                 '--reps >= 1')
  for what, path, hint in (
      ('TensorFlow', args.tf_python, 'make tf-venv'),
      ('weights', args.weights, 'the official ResNet-56 pickle'),
      ('CIFAR-10', os.path.join(args.tfds_dir, 'cifar10'), 'set --tfds-dir'),
      ("the authors' code", args.authors_repo, 'git clone '
       'https://github.com/sseung0703/EKG workdirs/authors-EKG')):
    if not os.path.exists(path):
      parser.error(f'{what} not found at {path} ({hint})')
  args.weights = os.path.abspath(args.weights)
  out_dir = args.out_dir or (os.path.join(ROOT, 'workdirs', 'authors-tf-quick')
                             if args.quick else os.path.join(HERE, 'results'))
  log_dir = args.log_dir or os.path.join(ROOT, 'workdirs', 'authors-tf-logs')
  os.makedirs(log_dir, exist_ok=True)
  log = lambda msg: print(f'[authors-tf] {msg}', flush=True)  # noqa: E731

  versions = json.loads(subprocess.run(
      [args.tf_python, '-c', 'import importlib.metadata as m, json, sys; '
       "print(json.dumps({'tensorflow': m.version('tensorflow-cpu'), "
       "'tf_keras': m.version('tf-keras'), "
       "'tf_python': sys.version.split()[0]}))"],
      capture_output=True, text=True, check=True).stdout)
  versions.update(jax=importlib.metadata.version('jax'),
                  python=sys.version.split()[0])
  with open(args.weights, 'rb') as f:
    weights_sha = hashlib.sha256(f.read()).hexdigest()
  command = ' '.join(['python benchmarks/authors_tf.py',
                      *map(portable, argv if argv is not None
                           else sys.argv[1:])])
  path = os.path.join(out_dir, f'authors-tf-{args.machine}' +
                      ('-all' if whole else ''))
  results = {'commands': [command], 'machine': machine_info({}),
             'versions': versions, 'weights_sha256': weights_sha,
             'options': {'steps': 'all' if whole else steps, 'target': TARGET}}
  # A stuck side fails the run, not the machine (a whole search: ~80 steps).
  timeout = 900 + 180 * (steps or 90)
  with tempfile.TemporaryDirectory(prefix='authors_tf_') as scratch:
    results['authors'] = authors_source(args.authors_repo,
                                        os.path.join(scratch, 'authors'))
    runs = []
    if args.append:
      runs, results['commands'] = appended(path + '.json', results, parser)
    total = len(runs) + reps
    for rep in range(len(runs), total):
      order = ['tf', 'jax'] if rep % 2 == 0 else ['jax', 'tf']
      launch = sides(args, scratch, rep)
      run = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
      for side in order:
        log(f'repetition {rep + 1}/{total}: {side}')
        run[side] = run_side(side, *launch[side], steps,
                             os.path.join(log_dir, f'rep{rep}-{side}.log'),
                             timeout)
        log(f"  start-up {run[side]['startup_s']:.1f} s, step "
            f"{run[side]['step_s']:.1f} s, to step {run[side]['steps']} "
            f"{run[side]['e2e_s']:.1f} s")
        settle(2.0)
      runs.append(run)
      shutil.rmtree(os.path.join(scratch, f'rep{rep}'), ignore_errors=True)
  results['options']['reps'] = len(runs)
  results.update(summary=summarize(runs), fidelity=fidelity(runs), runs=runs)
  os.makedirs(out_dir, exist_ok=True)
  with open(path + '.json', 'w') as f:
    json.dump(results, f, indent=1)
  table = markdown(results)
  with open(path + '.md', 'w') as f:
    f.write(table)
  if whole:
    figure(results, path + '.png')
  print(table)
  return results


if __name__ == '__main__':
  main()
