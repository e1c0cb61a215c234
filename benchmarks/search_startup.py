"""Search start-up and per-step time of the `prefix` and `segments`
candidate evaluations on the real ResNet-56 search problem, cold and with a
warm persistent compilation cache.

Each measurement is its own process (JAX's in-memory caches would otherwise
serve the second one), and the processes take turns: for each repetition,
both strategies cold (each into a fresh cache folder, through
`files.cache.enable_compilation_cache` as the pipeline does), then both warm
(each reusing the folder its cold run filled); the order of the strategies
alternates between repetitions. The problem: the official ResNet-56 weights
(no warm-up: start-up and step times do not depend on it), the 320
validation images of the real search (decoded once by the driver), the
default search options. A worker times:
- `launch_to_step1_s`: from the driver's launch of the process to the end
  of search step 1;
- `step1_s`: search step 1 alone (the importance pass, compiled before it,
  and the evaluation programs' tracing, lowering and compile);
- `step1_compile_s`: JAX's compile events during step 1 (tracing,
  lowering, XLA's compile), `runtime.breakdown`, and the same split into
  `step1_trace_s`, `step1_lower_s` and `step1_backend_s` (a warm cache
  serves only XLA's);
- `step_s`: steps 2..N (the step time once compiled);
- `startup_s` = launch_to_step1_s - median(step_s): start-up as the goal
  defines it (launch to the end of step 1, less one step), and
  `eval_programs_s` = step1_s - median(step_s): the evaluation programs'
  share of it.

  python benchmarks/search_startup.py --reps=2 --steps=4 \
      --out=benchmarks/results/search-startup-cpu-2cores

With `--alternate=N` it measures the step time instead in ONE process:
both strategies compiled, then step 1's candidates (boundaries from the
importance pass) evaluated by each in turn, N times each, with the paired
ratios:

  python benchmarks/search_startup.py --alternate=5 \
      --out=benchmarks/results/search-step-alternating-cpu-2cores
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('prefix', 'segments')
PARTS = ('step1_trace_s', 'step1_lower_s', 'step1_backend_s')


def _official():
  return os.path.join(os.path.dirname(REPO), 'shared', 'pretrained',
                      'ekg_official_resnet56_cifar10.pkl')


def prepare(path: str, tfds_dir: str) -> None:
  """The real search's 320 validation images, decoded once."""
  import numpy as np
  from ekg_jax.config import default_config
  from ekg_jax.run import phases
  config = default_config()
  config.data.data_dir = tfds_dir
  val = phases.class_subset(config, config.data.val_per_class, from_end=True)
  np.savez(path, images=val.images, labels=val.labels)


def official_problem(args, mode: str):
  """The ResNet-56 search problem from the official weights (`args.weights`)
  on the saved validation images (`args.data`), candidates evaluated by
  `mode`: what both the worker and `alternate` time."""
  import jax
  import numpy as np
  from ekg_jax import search
  from ekg_jax.config import default_config
  from ekg_jax.data import datasets as data_lib
  from ekg_jax.files import official
  from ekg_jax.models import create_model
  from ekg_jax.supernet import gates
  config = default_config()
  model = create_model('resnet56')
  table = gates.layer_table(model, (32, 32, 3))
  reference = jax.eval_shape(model.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  variables = official.load_official_pkl(args.weights, reference)
  data = np.load(args.data)
  batches = search.Batches.from_split(
      data_lib.Split(data['images'], data['labels']), 256, config.data.mean,
      config.data.std)
  search_config = dataclasses.replace(
      search.SearchConfig.from_config(config.search), evaluation=mode)
  return search.SearchProblem(
      search.Evaluator(model, table, search_config), variables, batches,
      search_config)


def worker(args) -> None:
  launched = args.launched
  import jax
  from ekg_jax import search
  from ekg_jax.files import cache as cache_lib
  from ekg_jax.runtime import breakdown
  cache_lib.enable_compilation_cache(args.cache)
  breakdown.listen()
  problem = official_problem(args, args.mode)
  state = search.init_state(problem)
  t = time.time()
  jax.block_until_ready(problem.scores(state, state.masks()))
  importance_first_s = time.time() - t
  steps, gates_chosen = [], []
  before = breakdown.snapshot()
  for i in range(args.steps):
    t = time.time()
    state = search.search_step(problem, state, args.mode)
    steps.append(time.time() - t)
    gates_chosen.append((state.history[-1]['gate'],
                         state.history[-1]['kept'][state.history[-1]['gate']]))
    if i == 0:
      step1_end = time.time()
      step1_compile = breakdown.since(before, steps[0])['compile_seconds']
      step1_parts = {'step1_' + k.replace('_seconds', '_s'): v for k, v in
                     breakdown.compile_parts(before).items()}
  step = statistics.median(steps[1:])
  print('RESULT ' + json.dumps({
      'mode': args.mode, 'importance_first_s': importance_first_s,
      'launch_to_step1_s': step1_end - launched, 'step1_s': steps[0],
      'step1_compile_s': step1_compile, **step1_parts, 'step_s': steps[1:],
      'startup_s': step1_end - launched - step,
      'eval_programs_s': steps[0] - step,
      'objectives': [e['objective'] for e in state.history[1:]],
      'gates': gates_chosen}), flush=True)


def alternate(args) -> dict:
  """Per-step time in ONE process: both strategies compiled, then the same
  step-1 candidates evaluated by each in turn (the boundaries from the
  importance pass, as in a search step), `args.alternate` times each."""
  import jax
  from ekg_jax import search
  from ekg_jax.search import greedy, marking
  from ekg_jax.supernet import gates
  problem = official_problem(args, 'prefix')
  variables, batches, search_config = (problem.variables, problem.batches,
                                       problem.config)
  state = search.init_state(problem)
  kept = marking.kept_from_rates(problem.specs, state.rates)
  masks = state.masks()
  scores, boundaries = problem.scores_and_boundaries(state, masks)
  ranks = gates.ranks_from_scores(jax.device_get(scores))
  marked = marking.mark_candidates(problem.specs, state.rates,
                                   jax.device_get(scores), search_config)
  candidates = {g: kept[g] - 1 for g in marked}
  call = lambda mode: problem.evaluator.evaluate_candidates(
      mode, variables, batches, state.teacher.logits,
      greedy._np_to_jnp(ranks), kept, candidates, boundaries)
  first, times, results = {}, {m: [] for m in MODES}, {}
  for mode in MODES:
    t = time.time()
    results[mode] = call(mode)
    first[mode] = time.time() - t
  diff = max(abs(float(results['prefix'][g]['objective'])
                 - float(results['segments'][g]['objective']))
             for g in candidates)
  for rep in range(args.alternate):
    for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
      t = time.time()
      call(mode)
      times[mode].append(time.time() - t)
  ratios = [b / a for a, b in zip(times['prefix'], times['segments'])]
  return {'candidates': len(candidates), 'first_call_s': first,
          'seconds': times, 'segments_over_prefix': ratios,
          'max_objective_difference': diff}


def run_worker(mode, cache, data, steps, weights, log) -> dict:
  env = dict(os.environ, PYTHONPATH=REPO)
  cmd = [sys.executable, os.path.abspath(__file__), '--worker', '--mode',
         mode, '--cache', cache, '--data', data, '--steps', str(steps),
         '--weights', weights, '--launched', repr(time.time())]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  for line in proc.stdout.splitlines():
    if line.startswith('RESULT '):
      return json.loads(line[len('RESULT '):])
  raise RuntimeError(f'worker {mode} failed:\n{proc.stderr[-3000:]}')


def stats(values):
  return {'median': statistics.median(values), 'min': min(values),
          'max': max(values), 'n': len(values)}


def fmt(s):
  return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--worker', action='store_true')
  p.add_argument('--mode')
  p.add_argument('--cache')
  p.add_argument('--data')
  p.add_argument('--launched', type=float)
  p.add_argument('--steps', type=int, default=4)
  p.add_argument('--reps', type=int, default=2)
  p.add_argument('--alternate', type=int, default=0,
                 help='instead: per-step time of both in one process, '
                      'alternating this many times')
  p.add_argument('--weights', default=_official())
  p.add_argument('--tfds-dir', default=os.environ.get(
      'TFDS_DATA_DIR', os.path.join(os.path.dirname(REPO), 'shared', 'tfds')))
  p.add_argument('--out', default=os.path.join(
      'benchmarks', 'results', 'search-startup-cpu-2cores'))
  args = p.parse_args()
  if args.worker:
    worker(args)
    return
  log = lambda m: print(f'[{time.strftime("%H:%M:%S")}] {m}', flush=True)
  started = datetime.datetime.now(datetime.timezone.utc)
  if args.alternate:
    with tempfile.TemporaryDirectory() as tmp:
      data = os.path.join(tmp, 'val.npz')
      prepare(data, args.tfds_dir)
      args.data = data
      result = alternate(args)
    result.update(
        command=('python benchmarks/search_startup.py '
                 f'--alternate={args.alternate} --out=<out>'),
        date=started.strftime('%Y-%m-%d %H:%M UTC'))
    with open(args.out + '.json', 'w') as f:
      json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, 'val.npz')
    prepare(data, args.tfds_dir)
    for rep in range(args.reps):
      order = MODES if rep % 2 == 0 else MODES[::-1]
      caches = {m: os.path.join(tmp, f'cache-{rep}-{m}') for m in order}
      for cache_state in ('cold', 'warm'):
        for mode in order:
          r = run_worker(mode, caches[mode], data, args.steps, args.weights,
                         log)
          r.update(rep=rep, cache=cache_state)
          runs.append(r)
          log(f"rep {rep} {mode} {cache_state}: start-up "
              f"{r['startup_s']:.1f} s (eval programs "
              f"{r['eval_programs_s']:.1f} s, step 1 {r['step1_s']:.1f} s, "
              f"compile in it {r['step1_compile_s']:.1f} s), step "
              f"{statistics.median(r['step_s']):.2f} s")
  summary = {}
  for mode in MODES:
    for cache_state in ('cold', 'warm'):
      sel = [r for r in runs if r['mode'] == mode and r['cache'] ==
             cache_state]
      summary[f'{mode}/{cache_state}'] = {
          k: stats([r[k] for r in sel]) for k in (
              'startup_s', 'eval_programs_s', 'step1_s', 'step1_compile_s',
              *PARTS, 'launch_to_step1_s', 'importance_first_s')
          if all(k in r for r in sel)}  # files from before the split
      summary[f'{mode}/{cache_state}']['step_s'] = stats(
          [s for r in sel for s in r['step_s']])
  # Ratios segments / prefix, paired by repetition and cache state.
  ratios = {}
  for key in ('startup_s', 'eval_programs_s', 'step_s'):
    for cache_state in ('cold', 'warm'):
      vals = []
      for rep in range(args.reps):
        a, b = (next(r for r in runs if r['mode'] == m and r['rep'] == rep
                     and r['cache'] == cache_state) for m in MODES)
        va = statistics.median(a[key]) if key == 'step_s' else a[key]
        vb = statistics.median(b[key]) if key == 'step_s' else b[key]
        vals.append(vb / va)
      ratios[f'segments/prefix {key} {cache_state}'] = stats(vals)
  same = all(r['gates'] == runs[0]['gates'] for r in runs)
  result = {
      'command': ('python benchmarks/search_startup.py '
                  f'--reps={args.reps} --steps={args.steps}'),
      'date': started.strftime('%Y-%m-%d %H:%M UTC'),
      'machine': f'{platform.processor() or platform.machine()}, '
                 f'{os.cpu_count()} cores',
      'runs': runs, 'summary': summary, 'ratios': ratios,
      'same_gates_every_run': same}
  with open(args.out + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  lines = [
      "# Search start-up: `prefix` vs `segments`\n",
      f"`{result['command']}`, {result['date']}, {result['machine']}; "
      f"ResNet-56 (official weights, no warm-up), the 320 validation images, "
      f"default options; medians (min-max) over {args.reps} repetitions, "
      f"each a fresh process; steps 2-{args.steps} for the step time. "
      f"Every run chose the same gates: {same}.\n",
      '| strategy | cache | start-up s | eval programs s | step 1 s | '
      'compile in step 1 s | of it trace / lower / XLA s | step s |',
      '|---|---|---|---|---|---|---|---|']
  for key, s in summary.items():
    mode, cache_state = key.split('/')
    parts = (' / '.join(f"{s[k]['median']:.1f}" for k in PARTS)
             if all(k in s for k in PARTS) else '')
    lines.append(f"| {mode} | {cache_state} | {fmt(s['startup_s'])} | "
                 f"{fmt(s['eval_programs_s'])} | {fmt(s['step1_s'])} | "
                 f"{fmt(s['step1_compile_s'])} | {parts} | "
                 f"{s['step_s']['median']:.2f} ({s['step_s']['min']:.2f}-"
                 f"{s['step_s']['max']:.2f}) |")
  lines += ['', '| ratio (paired by repetition) | median (min-max) |',
            '|---|---|']
  for key, s in ratios.items():
    lines.append(f"| {key} | {s['median']:.2f} ({s['min']:.2f}-"
                 f"{s['max']:.2f})x |")
  with open(args.out + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
