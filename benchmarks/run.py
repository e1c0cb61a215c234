"""Every benchmark of the toolkit, side by side, in one run.

  python benchmarks/run.py                 # full suite, ~30 min on 2 cores
  python benchmarks/run.py --quick --out-dir /tmp/bench   # smoke run (CI)

Writes `<out-dir>/<machine>.json` and `<machine>.md` (the Markdown tables
docs/performance.md shows). Each measured side runs in its own worker process
(`jax_worker.py`, and `torch_reference.py` in the PyTorch virtualenv made by
`make torch-venv`); the driver alternates them repetition by repetition, so
drift on the machine hits every side alike, and each ratio is the median of
the per-repetition ratios of two sides measured back to back. Figures are
medians with min-max over repetitions after a warm-up call; compile time
(the first call) is reported apart. `jax_before` is the toolkit without the
profile-driven changes (see `benchmarks/README.md`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from report import default_machine_name, machine_info, markdown
from sections import SECTIONS
from workers import HERE, ROOT, jax_worker, share_compilations

TORCH_PYTHON = os.path.join(ROOT, '.venv-torch', 'bin', 'python')

ABLATION = ('before', 'materialize', 'materialize+xla_flags', 'toolkit')
FULL = dict(depth=56, batch=128, steps=3, repeats=5, search_repeats=3,
            images_per_class=32, search_split='train', target=0.45,
            inference_batches=[1, 256], bank_images=2048, teachers=5,
            memory_batches=[32, 64, 128, 256], chunks=[1, 2, 4, 8],
            torch_compile=True, ablation=ABLATION)
QUICK = dict(depth=20, batch=8, steps=1, repeats=1, search_repeats=1,
             images_per_class=2, search_split='train[:500]', target=0.9,
             inference_batches=[1, 8], bank_images=32, teachers=2,
             memory_batches=[8], chunks=[2], torch_compile=False,
             # The two ends of the ablation (the middle ones differ only in
             # flags): CI's smoke run stays within its time.
             ablation=(ABLATION[0], ABLATION[-1]))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help='tiny sizes, one repetition: a smoke run')
  parser.add_argument('--sections', default=','.join(SECTIONS),
                      help=f'comma list of {", ".join(SECTIONS)}')
  parser.add_argument('--out-dir', default=os.path.join(HERE, 'results'))
  parser.add_argument('--machine', default='',
                      help='results file name (default: from the backend)')
  parser.add_argument('--torch-python', default=TORCH_PYTHON,
                      help='Python of the PyTorch virtualenv ("" skips it)')
  parser.add_argument('--update', action='store_true',
                      help='keep the other sections of an existing results '
                      'file; rerun only --sections')
  parser.add_argument('--set', action='append', default=[],
                      metavar='KEY=JSON', help='override an option, e.g. '
                      '--set repeats=3')
  args = parser.parse_args(argv)
  o = dict(QUICK if args.quick else FULL)
  for item in args.set:
    key, value = item.split('=', 1)
    if key not in o:
      parser.error(f'--set {key}: unknown option; allowed: {sorted(o)}')
    o[key] = json.loads(value)
  sections = args.sections.split(',')
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    parser.error(f'--sections {sorted(unknown)}: allowed {list(SECTIONS)}')
  torch_python = args.torch_python
  if torch_python and not os.path.exists(torch_python):
    print(f'no PyTorch at {torch_python} (make torch-venv): JAX sides only')
    torch_python = ''

  started = time.time()
  log = lambda msg: print(  # noqa: E731
      f'[bench {time.time() - started:5.0f} s] {msg}', flush=True)
  if args.quick:
    share_compilations('bench-quick-xla-')
  worker = jax_worker()
  versions = worker('versions')
  worker.close()
  machine = args.machine or default_machine_name(versions)
  path = os.path.join(args.out_dir, f'{machine}.json')
  results = {}
  if args.update and os.path.exists(path):
    with open(path) as f:
      results = json.load(f)
    if results['options'] != o:
      parser.error(f'--update: {path} was made with other options')
  command = ' '.join(['python benchmarks/run.py',
                      *(argv if argv is not None else sys.argv[1:])])
  results.update({'machine': machine_info(versions), 'options': o})
  results.setdefault('commands', {}).update({s: command for s in sections})
  for name in sections:
    results[name] = SECTIONS[name](o, log, torch_python)
  os.makedirs(args.out_dir, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(results, f, indent=1)
  table = markdown(results)
  commands = sorted(set(results['commands'].values()))
  with open(os.path.join(args.out_dir, f'{machine}.md'), 'w') as f:
    f.write('Made by ' + ' then '.join(f'`{c}`' for c in commands)
            + f'\n\n{table}\n')
  print(table)
  return results


if __name__ == '__main__':
  main()
