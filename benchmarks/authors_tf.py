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
time between steps 2..N; start-up = launch to step 1 less one per-step time;
end to end = launch to step N (the search's end with --steps=all). Ratios TF
/ ekg_jax per repetition, then median (min-max). The sides' choices at each
step are compared (`fidelity`). How and why: benchmarks/README.md. The sides
(their code, the commands, reading the lines): authors_tf_sides.py; the
results file, table and figure: authors_tf_report.py.

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
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
# benchmarks/, beside this file: the sides, and their results.
from authors_tf_report import (appended, fidelity, figure,  # noqa: E402
                               markdown, summarize)
from authors_tf_sides import (TARGET, authors_source, portable,  # noqa: E402
                              run_side, sides)
from report import machine_info  # noqa: E402
from workers import settle  # noqa: E402

TF_PYTHON = os.path.join(ROOT, '.venv-tf', 'bin', 'python')
WEIGHTS = os.path.join(ROOT, '..', 'shared', 'pretrained',
                       'ekg_official_resnet56_cifar10.pkl')
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
