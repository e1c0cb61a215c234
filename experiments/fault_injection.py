"""Kill a pipeline run again and again; it must end where an uninterrupted
run ends.

Runs `python -m ekg_jax.main` with the given config in a subprocess, SIGKILLs
it at a seeded random moment once each phase has started, reruns the same
command, and so on through every phase; then lets it finish. Repeats such
rounds (a fresh workdir each) until `--kills` kills. Compares the final summary, search
history, memory bank, metrics and final parameters with an uninterrupted run
of the same config (bit-exact). Prints one line per kill and a JSON result.

  python experiments/fault_injection.py --config=configs/quickstart.py \
      --workdir=workdirs/faults --kills=30 --seed=0 -- --config.quiet=True
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

import compare_workdirs  # experiments/, beside this file

PHASES = ('pretrain', 'evaluate', 'search', 'memory_bank', 'finetune')
KEYS = {'pretrain': 'pretrain', 'evaluate': 'base', 'search': 'search',
        'memory_bank': 'memory_bank', 'finetune': 'finetune'}
# Summary fields that name paths in the workdir, not results; those that
# measure time compare_workdirs.without_timings drops too.
PATHS = ('checkpoint', 'program', 'network', 'variables')


def command(config, workdir, extra):
  return [sys.executable, '-m', 'ekg_jax.main', f'--config={config}',
          f'--workdir={workdir}', *extra]


def summary(workdir) -> dict:
  try:
    return json.loads((workdir / 'summary.json').read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def current_phase(workdir, phases) -> str:
  done = summary(workdir)
  for p in phases:
    if KEYS[p] not in done:
      return p
  return 'report'


def without_timing(tree):
  return compare_workdirs.without_timings(tree, also=PATHS)


def final_variables(workdir):
  import orbax.checkpoint as ocp
  path = workdir / 'finetune' / 'final' / 'variables'
  if not path.exists():
    return None
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path.resolve())


def compare(reference, faulty) -> list[str]:
  """Differences between two finished workdirs (empty: identical)."""
  import jax
  problems = []
  a, b = without_timing(summary(reference)), without_timing(summary(faulty))
  if a != b:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    problems.append(f'summary differs in {keys}')
  for name in ('search/history.json', 'finetune/metrics.jsonl',
               'pretrain/metrics.jsonl'):
    fa, fb = reference / name, faulty / name
    if fa.exists() or fb.exists():
      ta = fa.read_text() if fa.exists() else None
      tb = fb.read_text() if fb.exists() else None
      if name.endswith('history.json'):  # per-step seconds differ
        ta, tb = (json.dumps([without_timing(e) for e in json.loads(t)])
                  if t else t for t in (ta, tb))
      if name.endswith('.jsonl'):
        ta, tb = (t and [without_timing(json.loads(line))
                         for line in t.splitlines()] for t in (ta, tb))
      if ta != tb:
        problems.append(f'{name} differs')
  bank_a, bank_b = (w / 'memory_bank' / 'bank.npz' for w in (reference,
                                                             faulty))
  if bank_a.exists():
    with np.load(bank_a) as za, np.load(bank_b) as zb:
      if not np.array_equal(za['logits'], zb['logits']):
        problems.append('memory bank logits differ')
  va, vb = final_variables(reference), final_variables(faulty)
  if (va is None) != (vb is None):
    problems.append('one run has no final model')
  elif va is not None:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda x, y: bool(np.array_equal(x, y)), va, vb))
    if not all(leaves):
      problems.append(f'final parameters differ in {leaves.count(False)} '
                      'arrays')
  return problems


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', required=True)
  parser.add_argument('--workdir', required=True, type=pathlib.Path)
  parser.add_argument('--kills', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--max_delay', type=float, default=20.0,
                      help='seconds after the target phase starts')
  parser.add_argument('--phases', default=','.join(PHASES))
  parser.add_argument('extra', nargs='*', help='--config.x=y overrides')
  args = parser.parse_args()
  rng = random.Random(args.seed)
  phases = [p for p in args.phases.split(',') if p]
  extra = [*args.extra, f'--config.phases={",".join(phases)}']
  reference, faulty = args.workdir / 'reference', args.workdir / 'faulty'
  for w in (reference, faulty):
    shutil.rmtree(w, ignore_errors=True)

  start = time.time()
  subprocess.run(command(args.config, reference, extra), check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  reference_seconds = time.time() - start
  print(f'uninterrupted run: {reference_seconds:.0f} s', flush=True)

  # Rounds: a fresh run per round, killed once per phase in pipeline order
  # (a kill aimed at a phase that is already over lands in a later one),
  # finished, then compared with the uninterrupted run.
  kills, problems, rounds = [], [], 0
  while len(kills) < args.kills:
    rounds += 1
    shutil.rmtree(faulty, ignore_errors=True)
    for target in phases:
      if len(kills) >= args.kills:
        break
      proc = subprocess.Popen(command(args.config, faulty, extra),
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL,
                              start_new_session=True)

      def reached(target=target):  # the target phase (or later) runs
        phase = current_phase(faulty, phases)
        return (phase == 'report' or
                phases.index(phase) >= phases.index(target))

      while proc.poll() is None and not reached():
        time.sleep(0.05)
      delay = rng.uniform(0.0, args.max_delay)
      deadline = time.time() + delay
      while proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
      if proc.poll() is not None:  # finished before the kill
        break
      phase = current_phase(faulty, phases)
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      kills.append({'round': rounds, 'target': target, 'phase': phase,
                    'delay': round(delay, 2)})
      print(f'round {rounds}, kill {len(kills)}: in {phase} ({delay:.1f} s '
            f'after {target} started)', flush=True)
    subprocess.run(command(args.config, faulty, extra), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = compare(reference, faulty)
    print(f'round {rounds}: {"identical" if not found else found}',
          flush=True)
    problems += [f'round {rounds}: {p}' for p in found]
  result = {'kills': len(kills), 'rounds': rounds,
            'phases_hit': sorted({k['phase'] for k in kills}),
            'identical': not problems, 'problems': problems,
            'reference_seconds': round(reference_seconds, 1),
            'total_seconds': round(time.time() - start, 1),
            'kill_log': kills}
  print(json.dumps(result, indent=2))
  sys.exit(0 if not problems else 1)


if __name__ == '__main__':
  main()
