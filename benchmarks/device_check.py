"""What the toolkit does on an accelerator, in one short run (issue 16).

  bash benchmarks/device_check.sh                  # on a GPU: ~5 min
  bash benchmarks/device_check.sh --quick --out-dir=/tmp/dc   # CPU smoke (CI)

Reports fine-tuning step images/s (the `scan` program, float32 and
bfloat16), the search step by evaluation path (importance; vmap by chunk
size; prefix; loop), memory-bank images/s, dense vs slimmed inference
latency, and each section's peak device memory. Each section runs in its
own process (so its peak memory is its own, and one failing section does
not stop the others) under a time limit; the results are written after
every section to `<out-dir>/device-<name>.json` and `.md`.

It needs no dataset: images are random (timing does not depend on them) and
the slimmed widths are those of the committed ResNet-56 search
(`experiments/results/r56_search_summary.json`). The official ResNet-56
weights are used when `../shared` is there, else random ones (the search
step's cost does not depend on the values either).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workers import share_compilations, slimmed_widths, stats  # noqa: E402

FULL = dict(depth=56, batch=128, steps=20, repeats=5, teachers=5,
            dtypes=['float32', 'bfloat16'], images_per_class=32,
            chunks=[1, 4, 32], search_repeats=5, bank_images=10240,
            bank_repeats=3, inference_batches=[1, 256], inference_repeats=50,
            target=0.45,
            limits={'finetune': 150, 'search': 210, 'search_e2e': 90,
                    'memory_bank': 60,
                    'inference': 90})
# The smoke run: every section once, at the smallest sizes (the float32
# step is the benchmark suite's `train` section's, so bfloat16 alone here).
QUICK = dict(depth=20, batch=8, steps=2, repeats=1, teachers=2,
             dtypes=['bfloat16'], images_per_class=2,
             chunks=[2], search_repeats=1, bank_images=32, bank_repeats=1,
             inference_batches=[8], inference_repeats=2,
             target=0.9,
             limits={'finetune': 300, 'search': 300, 'search_e2e': 300,
                     'memory_bank': 120,
                     'inference': 120})


# ---------------------------------------------------------------------------
# Sections, each run in a child process: (options) -> results.


def finetune(o: dict) -> dict:
  """The fine-tuning step on the slimmed network (two views, the memory
  bank's targets) as one compiled `lax.scan` of `steps` steps."""
  import jax_workloads as workloads
  out = {}
  for dtype in o['dtypes']:
    start = time.perf_counter()
    train = workloads.Train('finetune', o['batch'], o['steps'],
                             slimmed_widths(o['depth']), o['teachers'],
                             o['depth'], program='scan', dtype=dtype)
    train.time()  # compiles
    first = time.perf_counter() - start
    seconds = [train.time() for _ in range(o['repeats'])]
    images = o['batch'] * o['steps']
    out[dtype] = {'images_per_s': stats([images / s for s in seconds]),
                  'step_ms': stats([1e3 * s / o['steps'] for s in seconds]),
                  'first_call_s': first,
                  'compile_s': train.runner.compile_seconds}
  return out


def search(o: dict) -> dict:
  """One search step: the importance pass, then every candidate by each
  evaluation path (vmap at several chunk sizes)."""
  import dataclasses

  import jax_workloads as workloads
  from ekg_jax import search as search_lib
  step = workloads.SearchStep(o['chunks'][0], o['images_per_class'],
                               o['depth'], 'synthetic', ['prefix', 'loop'])
  problem = step.problem
  names = ['importance', 'prefix', 'loop']
  for chunk in o['chunks']:
    config = dataclasses.replace(problem.config, chunk_size=chunk)
    evaluator = search_lib.Evaluator(problem.evaluator.model,
                                     problem.evaluator.table, config)
    step.add('vmap', evaluator, name=f'vmap_chunk_{chunk}')
    names.append(f'vmap_chunk_{chunk}')
  times = {n: [] for n in names}
  for _ in range(o['search_repeats']):
    for n in names:
      times[n].append(step.time(n))
  return {'candidates': step.candidates, 'weights': step.weights,
          'images': 10 * o['images_per_class'],
          'seconds': {n: stats(t) for n, t in times.items()},
          'first_call_s': step.compile_s}


def search_e2e(o: dict) -> dict:
  """The whole greedy search to the FLOPs target (`auto` evaluation),
  compilation included."""
  import jax_workloads as workloads
  return workloads.search_e2e(o['target'], o['images_per_class'],
                               o['depth'], 'synthetic')


def memory_bank(o: dict) -> dict:
  import jax_workloads as workloads
  reply = workloads.bank_throughput(o['bank_images'], o['teachers'], 256,
                                     o['depth'], o['bank_repeats'])
  return {'images': reply['images'], 'teachers': o['teachers'],
          'images_per_s': stats([reply['images'] / s
                                 for s in reply['seconds']]),
          'first_call_s': reply['first_call_s']}


def inference(o: dict) -> dict:
  import jax_workloads as workloads
  reply = workloads.inference(o['inference_batches'],
                               slimmed_widths(o['depth']),
                               o['inference_repeats'], o['depth'])
  macs = reply['macs']
  out = {'macs': macs, 'ideal_speedup': macs['dense'] / macs['slimmed']}
  for b in o['inference_batches']:
    seconds = reply[str(b)]['seconds']
    entry = {n: stats([1e3 * t for t in ts]) for n, ts in seconds.items()}
    entry['slimmed_speedup'] = stats(
        [d / s for d, s in zip(seconds['dense'], seconds['slimmed'])])
    out[f'batch_{b}'] = entry
  return out


SECTIONS = {'finetune': finetune, 'search': search, 'search_e2e': search_e2e,
            'memory_bank': memory_bank, 'inference': inference}


def child(section: str, options: dict) -> None:
  import jax
  result = SECTIONS[section](options)
  memory = jax.devices()[0].memory_stats() or {}
  result['peak_device_bytes'] = memory.get('peak_bytes_in_use')
  print('RESULT ' + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------
# Driver.


def device_info() -> dict:
  code = ('import jax, flax, json; d = jax.devices()[0]; print(json.dumps('
          '{"jax": jax.__version__, "flax": flax.__version__, '
          '"backend": jax.default_backend(), "device": d.device_kind, '
          '"device_count": jax.device_count()}))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def run_section(section: str, options: dict, log) -> dict:
  limit = options['limits'][section]
  start = time.perf_counter()
  try:
    proc = subprocess.run(
        [sys.executable, __file__, f'--child={section}',
         f'--options={json.dumps(options)}'],
        capture_output=True, text=True, timeout=limit)
  except subprocess.TimeoutExpired:
    return {'error': f'over its {limit} s limit'}
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
  if proc.returncode or not lines:
    log(proc.stderr[-3000:])
    return {'error': (proc.stderr.strip().splitlines() or ['?'])[-1][-300:]}
  result = json.loads(lines[-1][len('RESULT '):])
  result['section_s'] = time.perf_counter() - start
  return result


def _m(s: dict, digits: int = 1) -> str:
  return (f'{s["median"]:.{digits}f} ({s["min"]:.{digits}f}-'
          f'{s["max"]:.{digits}f})')


def _mib(n) -> str:
  return '-' if n is None else f'{n / 2**20:.0f} MiB'


def markdown(results: dict) -> str:
  info, o, s = results['device'], results['options'], results['sections']
  lines = [f'# Device check: {info["device"]} ({info["backend"]})', '',
           f'{results["date"]}, jax {info["jax"]}, flax {info["flax"]}, '
           f'ResNet-{o["depth"]}, command `{results["command"]}`. Medians '
           '(min-max) after a compiling call; random images.', '',
           '| section | what | result | first call | peak device memory |',
           '|---|---|---|---|---|']

  def row(section, what, result, first, peak):
    lines.append(f'| {section} | {what} | {result} | {first} | {peak} |')

  for name in SECTIONS:
    if name not in s:
      continue
    r = s[name]
    if 'error' in r:
      row(name, '-', f'failed: {r["error"]}', '-', '-')
      continue
    peak = _mib(r.get('peak_device_bytes'))
    if name == 'finetune':
      for dtype in o['dtypes']:
        d = r[dtype]
        row(name, f'{dtype}, batch {o["batch"]} x 2 views, scan of '
            f'{o["steps"]} steps', f'{_m(d["images_per_s"], 0)} images/s',
            f'{d["first_call_s"]:.1f} s', peak)
    elif name == 'search':
      for mode, t in r['seconds'].items():
        row(name, f'{mode} ({r["candidates"]} candidates, {r["images"]} '
            'images)', f'{_m(t, 3)} s', f'{r["first_call_s"][mode]:.1f} s',
            peak)
    elif name == 'search_e2e':
      row(name, f'to FLOPs rate {o["target"]} ({r["evaluation"]}, '
          f'{r["weights"]} weights)', f'{r["seconds"]:.1f} s, '
          f'{r["steps"]} steps, reached {r["flops_rate"]:.4f}',
          'included', peak)
    elif name == 'memory_bank':
      row(name, f'{r["teachers"]} teachers, batch 256',
          f'{_m(r["images_per_s"], 0)} images/s',
          f'{r["first_call_s"]:.1f} s', peak)
    else:
      for b in o['inference_batches']:
        e = r[f'batch_{b}']
        row(name, f'batch {b}: dense / masked / slimmed ms',
            f'{e["dense"]["median"]:.3f} / {e["masked"]["median"]:.3f} / '
            f'{e["slimmed"]["median"]:.3f}; slimmed '
            f'{e["slimmed_speedup"]["median"]:.2f}x (ideal '
            f'{r["ideal_speedup"]:.2f}x)', '-', peak)
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='ResNet-20, tiny sizes: a smoke run (CI, CPU)')
  parser.add_argument('--out-dir', default=os.path.join(HERE, 'results'))
  parser.add_argument('--sections', default=','.join(SECTIONS))
  parser.add_argument('--child', help=argparse.SUPPRESS)
  parser.add_argument('--options', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    child(args.child, json.loads(args.options))
    return 0
  sections = args.sections.split(',')
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    parser.error(f'--sections {sorted(unknown)}: allowed {list(SECTIONS)}')
  options = QUICK if args.quick else FULL
  if args.quick:
    share_compilations('device-check-xla-')

  def log(msg):
    print(msg, file=sys.stderr, flush=True)

  info = device_info()
  slug = re.sub(r'[^a-z0-9]+', '-', info['device'].lower()).strip('-')
  os.makedirs(args.out_dir, exist_ok=True)
  path = os.path.join(args.out_dir, f'device-{slug}')
  results = {'device': info, 'options': options, 'sections': {},
             'date': time.strftime('%Y-%m-%d'),
             'command': 'bash benchmarks/device_check.sh'
                        + (' --quick' if args.quick else '')}
  failed = 0
  for section in sections:
    log(f'device check: {section} ...')
    result = results['sections'][section] = run_section(section, options,
                                                        log)
    failed += 'error' in result
    log(f'device check: {section}: '
        + (result.get('error') or f'done in {result["section_s"]:.0f} s'))
    with open(path + '.json', 'w') as f:
      json.dump(results, f, indent=1)
    with open(path + '.md', 'w') as f:
      f.write(markdown(results))
  print(markdown(results))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
