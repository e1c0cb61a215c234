"""Benchmark: one EKG search step on ResNet-56, candidate evaluation paths.

Times, in one process and alternating, the evaluation of one step's
candidates by (a) the vmapped stack (`search.evaluation=vmap`), (b) the
shared-prefix evaluation (`prefix`) and (c) a Python loop over the same
jitted single-candidate evaluation (`loop`), plus the importance pass.
Compilation is timed separately (first call). Prints a Markdown table and
writes JSON.

  python benchmarks/search_step.py --repeats 5 \
      --out benchmarks/results/search_step_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax import checkpoint, data, gates, search
from ekg_jax.config import REFERENCE_MEAN, REFERENCE_STD
from ekg_jax.models import create_model

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')


def build(chunk_size: int):
  model = create_model('resnet56')
  table = gates.layer_table(model, (32, 32, 3))
  ref = jax.eval_shape(model.init, jax.random.key(0),
                       jnp.zeros((1, 32, 32, 3)))
  variables = checkpoint.load_official_pkl(
      os.path.join(SHARED, 'pretrained', 'ekg_official_resnet56_cifar10.pkl'),
      ref)
  train = data.load_split('cifar10', 'train',
                          os.environ.get('TFDS_DATA_DIR',
                                         os.path.join(SHARED, 'tfds')))
  val = train.subset(data.class_subset_indices(train.labels, 32, True))
  batches = search.Batches.from_split(val, 256, REFERENCE_MEAN,
                                      REFERENCE_STD)
  config = search.SearchConfig(chunk_size=chunk_size)
  return search.SearchProblem(search.Evaluator(model, table, config),
                              variables, batches, config)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--chunk-size', type=int, default=4)
  parser.add_argument('--modes', default='vmap,prefix,loop')
  parser.add_argument('--out', default='')
  args = parser.parse_args()

  problem = build(args.chunk_size)
  ev = problem.evaluator
  state = search.init_state(problem)
  specs = problem.specs
  kept = search.kept_from_rates(specs, state.rates)
  masks = gates.masks_from_kept(kept, {g: jnp.asarray(r)
                                       for g, r in state.ranks.items()})
  scores = jax.device_get(ev.importance(problem.variables, problem.batches,
                                        state.teacher.logits, masks))
  ranks = {g: jnp.asarray(r)
           for g, r in gates.ranks_from_scores(scores).items()}
  marked = search.mark_candidates(specs, state.rates, scores, problem.config)
  candidates = {g: search.kept_count(
      specs[g].channels, state.rates[g] - search.step_size(specs[g], 0.2))
      for g in marked}

  runs = {
      'importance': lambda: ev.importance(problem.variables, problem.batches,
                                          state.teacher.logits, masks),
  }
  for mode in args.modes.split(','):
    runs[mode] = (lambda mode=mode: ev.evaluate_candidates(
        mode, problem.variables, problem.batches, state.teacher.logits,
        ranks, kept, candidates))
  compile_s, times = {}, {name: [] for name in runs}
  for name, fn in runs.items():
    start = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s[name] = time.perf_counter() - start
  for _ in range(args.repeats):  # alternate, so drift hits every path alike
    for name, fn in runs.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  result = {
      'machine': {'platform': platform.platform(),
                  'processor': platform.processor() or platform.machine(),
                  'cpus': os.cpu_count(), 'backend': jax.default_backend(),
                  'device': str(jax.devices()[0])},
      'versions': {'jax': jax.__version__, 'python': platform.python_version()},
      'candidates': len(candidates), 'chunk_size': args.chunk_size,
      'repeats': args.repeats,
      'seconds': {n: {'median': float(np.median(t)), 'min': float(min(t)),
                      'max': float(max(t)),
                      'first_call': compile_s[n]} for n, t in times.items()},
  }
  loop = result['seconds'].get('loop', {}).get('median')
  if loop:
    result['speedup_vs_loop'] = {
        n: loop / s['median'] for n, s in result['seconds'].items()
        if n not in ('loop', 'importance')}
  print(f"ResNet-56, {len(candidates)} candidates, chunk {args.chunk_size}, "
        f"{args.repeats} repeats on {result['machine']['device']}")
  print('| path | median s | min-max s | first call s | vs loop |')
  print('|---|---|---|---|---|')
  for n, s in result['seconds'].items():
    ratio = result.get('speedup_vs_loop', {}).get(n)
    print(f"| {n} | {s['median']:.3f} | {s['min']:.3f}-{s['max']:.3f} | "
          f"{s['first_call']:.1f} | {f'{ratio:.2f}x' if ratio else '-'} |")
  if args.out:
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
