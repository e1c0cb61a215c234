"""Every benchmark of the toolkit, side by side, in one run.

  python benchmarks/run.py                 # full suite, ~30 min on 2 cores
  python benchmarks/run.py --quick --out-dir /tmp/bench   # smoke run (CI)

Writes `<out-dir>/<machine>.json` and `<machine>.md` (the Markdown table the
README shows). Each measured side runs in its own worker process
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
import atexit
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEARCH_SUMMARY = os.path.join(ROOT, 'experiments', 'results',
                              'r56_search_summary.json')
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


class Worker:
  """A benchmark process spoken to one JSON line at a time."""

  def __init__(self, name: str, argv: list, env: Optional[dict] = None):
    self.name = name
    self._log = tempfile.TemporaryFile(mode='w+')
    self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self._log,
                                  text=True, env=env, cwd=ROOT)

  def __call__(self, cmd: str, **request) -> dict:
    self._proc.stdin.write(json.dumps({'cmd': cmd, **request}) + '\n')
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      self._log.seek(0)
      tail = self._log.read()[-3000:]
      raise RuntimeError(f'{self.name} worker died on {cmd!r}:\n{tail}')
    return json.loads(line)

  def close(self):
    self._proc.stdin.close()
    self._proc.wait()
    self._log.close()


def settle(seconds: float = 1.0) -> None:
  """Lets the side that just ran go idle (OpenMP and Eigen threads spin a
  while after their work) before the next one is timed."""
  time.sleep(seconds)


def in_turn(workers: dict, rep: int) -> list:
  """The sides in order on even repetitions, reversed on odd ones, so no
  side always runs right after the same other one."""
  items = list(workers.items())
  return items if rep % 2 == 0 else items[::-1]


def share_compilations(prefix: str) -> None:
  """Smoke runs only: every JAX process started from here on keeps its
  compiled programs in one persistent cache, so the same train step, built
  again in the train, ablation and profile sections, compiles once (the
  quick run: 405 s -> 191 s). Its times then say nothing; quick runs check
  that every section runs, not how fast. The folder goes at exit."""
  folder = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, folder, True)
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', folder)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


def jax_worker(variant: str = 'toolkit') -> Worker:
  return Worker(f'jax_{variant}', [sys.executable,
                                   os.path.join(HERE, 'jax_worker.py'),
                                   f'--variant={variant}'])


def torch_worker(mode: str, torch_python: str) -> Worker:
  return Worker(f'torch_{mode}', [torch_python,
                                  os.path.join(HERE, 'torch_reference.py')])


def stats(values: list) -> dict:
  return {'median': statistics.median(values), 'min': min(values),
          'max': max(values), 'n': len(values)}


def slimmed_widths(depth: int) -> dict:
  """The kept channels of the committed ResNet-56 search at 45% FLOPs
  (blocks a shallower network lacks are dropped)."""
  with open(SEARCH_SUMMARY) as f:
    kept = json.load(f)['search']['kept_channels']
  blocks = (depth - 2) // 6
  return {g: k for g, k in kept.items()
          if '/block' not in g or int(g.rsplit('block', 1)[1]) < blocks}


def ratio_stats(times: dict, a: str, b: str) -> dict:
  """Speed of a over b (time_b / time_a), per repetition."""
  return stats([tb / ta for ta, tb in zip(times[a], times[b])])


# ---------------------------------------------------------------------------
# Sections.


def train_steps(o, log, torch_python) -> dict:
  from ekg_jax.config import REFERENCE_MEAN, REFERENCE_STD
  out = {}
  for kind in ('finetune', 'dense'):
    widths = slimmed_widths(o['depth']) if kind == 'finetune' else {}
    setup = dict(kind=kind, batch=o['batch'], steps=o['steps'],
                 widths=widths, teachers=o['teachers'], depth=o['depth'])
    sides = {'jax': jax_worker(), 'jax_before': jax_worker('before')}
    if torch_python:
      sides['torch_eager'] = torch_worker('eager', torch_python)
      if o['torch_compile']:
        sides['torch_compile'] = torch_worker('compile', torch_python)
    result = {'sides': {}, 'errors': {}}
    for name, worker in list(sides.items()):
      log(f'{kind}: setting up {name}')
      try:
        if name.startswith('torch'):
          reply = worker('setup', mode=name.split('_')[1], mean=REFERENCE_MEAN,
                         std=REFERENCE_STD, **setup)
          result['torch'] = reply['torch']
        else:
          reply = worker('setup_train', **setup)
          result['flops_per_step'] = reply['flops_per_step']
      except RuntimeError as e:  # e.g. torch.compile without a compiler
        result['errors'][name] = str(e)[-500:]
        worker.close()
        del sides[name]
        continue
      result['sides'][name] = {'first_call_s': reply.get(
          'first_call_s', reply.get('compile_s'))}
    step_s = {name: [] for name in sides}
    compiles = {}
    for rep in range(o['repeats']):
      for name, worker in in_turn(sides, rep):
        settle()
        reply = worker('time')
        step_s[name].append(reply['seconds'] / reply['steps'])
        compiles.setdefault(name, []).append(reply.get('compiles'))
      log(f'{kind} repetition {rep + 1}/{o["repeats"]}: ' + ', '.join(
          f'{n} {o["batch"] / s[-1]:.1f} img/s' for n, s in step_s.items()))
    for name, times in step_s.items():
      side = result['sides'][name]
      side['step_s'] = stats(times)
      side['images_per_s'] = stats([o['batch'] / t for t in times])
      side['gflops_per_s'] = result['flops_per_step'] / side['step_s'][
          'median'] / 1e9
      side['recompiles_while_timed'] = (
          compiles[name][-1] - compiles[name][0]
          if compiles[name][0] is not None else None)
      side.update(sides[name]('peak'))
    result['ratios'] = {f'jax_vs_{n}': ratio_stats(step_s, 'jax', n)
                        for n in step_s if n != 'jax'}
    if kind == 'finetune' and 'torch_eager' in sides:
      result['same_function'] = same_function(sides['jax'],
                                              sides['torch_eager'])
    for worker in sides.values():
      worker.close()
    out[kind] = result
  return out


def same_function(jax_side: Worker, torch_side: Worker) -> dict:
  """Both sides compute the same logits and loss from the same variables
  and views (the JAX ones, after the timed steps)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'check.npz')
    ours = jax_side('export', path=path)
    theirs = torch_side('check', npz=path)
  diff = max(abs(a - b) for ra, rb in zip(ours['logits'], theirs['logits'])
             for a, b in zip(ra, rb))
  scale = max(abs(a) for row in ours['logits'] for a in row)
  return {'max_abs_logit_diff': diff, 'max_abs_logit': scale,
          'loss_jax': ours['loss'], 'loss_torch': theirs['loss']}


def conv_kernels(o, log, torch_python) -> dict:
  """Where the training-step gap lies: one 3x3 conv's forward, input
  gradient and kernel gradient at each ResNet stage's shape."""
  shapes = [[o['batch'], 32 // 2 ** s, 32 // 2 ** s, 16 * 2 ** s]
            for s in range(3)]
  sides = {'jax': jax_worker(), 'jax_before': jax_worker('before')}
  if torch_python:
    sides['torch'] = torch_worker('eager', torch_python)
  ms = {name: [] for name in sides}
  for rep in range(o['search_repeats']):
    log(f'conv kernels repetition {rep + 1}/{o["search_repeats"]}')
    for name, worker in in_turn(sides, rep):
      settle()
      ms[name].append(worker('conv_kernels', shapes=shapes, repeats=10))
  for worker in sides.values():
    worker.close()
  keys = ['x'.join(map(str, shape)) for shape in shapes]
  return {name: {k: {op: statistics.median([r[k][op] for r in reps])
                     for op in reps[0][k]} for k in keys}
          for name, reps in ms.items()}




def ablation(o, log, torch_python=None) -> dict:
  """The profile-driven changes added one at a time (ABLATION, each a
  `jax_worker.py --variant`), training steps timed alternately."""
  result = {}
  for kind in ('finetune', 'dense'):
    widths = slimmed_widths(o['depth']) if kind == 'finetune' else {}
    workers = {v: jax_worker(v) for v in o['ablation']}
    for variant, worker in workers.items():
      log(f'ablation: {kind} step, setting up {variant}')
      worker('setup_train', kind=kind, batch=o['batch'], steps=o['steps'],
             widths=widths, teachers=o['teachers'], depth=o['depth'])
    step_s = {v: [] for v in workers}
    for rep in range(o['search_repeats']):
      for variant, worker in in_turn(workers, rep):
        settle()
        reply = worker('time')
        step_s[variant].append(reply['seconds'] / reply['steps'])
    for worker in workers.values():
      worker.close()
    result[kind] = {v: {'step_s': stats(t),
                        'images_per_s': stats([o['batch'] / x for x in t]),
                        'speedup_vs_before': ratio_stats(step_s, v, 'before')}
                    for v, t in step_s.items()}
  return result


def profile(o, log, torch_python=None) -> dict:
  """Time per XLA operation kind in one fine-tuning step, the toolkit and
  the code before the profile-driven changes (`benchmarks/profiling.py`)."""
  result = {}
  for variant in ('toolkit', 'before'):
    log(f'profile: fine-tuning step, {variant}')
    worker = jax_worker(variant)
    worker('setup_train', kind='finetune', batch=o['batch'], steps=1,
           widths=slimmed_widths(o['depth']), teachers=o['teachers'],
           depth=o['depth'])
    reply = worker('profile')
    reply.pop('compiles')
    result['jax' if variant == 'toolkit' else 'jax_before'] = reply
    worker.close()
  return result


def search_step(o, log, torch_python=None) -> dict:
  modes = ['vmap', 'prefix', 'loop']
  variants = {'jax': jax_worker(), 'jax_before': jax_worker('before')}
  result = {'chunk_size': 4, 'images': 10 * o['images_per_class'],
            'variants': {}}
  for name, worker in variants.items():
    log(f'search step: setting up {name} (compiles every path)')
    reply = worker('setup_search', chunk_size=4,
                   images_per_class=o['images_per_class'], depth=o['depth'],
                   split=o['search_split'], modes=modes)
    result['candidates'] = reply['candidates']
    result['weights'] = reply['weights']
    result['variants'][name] = {'first_call_s': reply['first_call_s'],
                                'compiles_before': reply['compiles']}
  times = {(v, m): [] for v in variants for m in ['importance', *modes]}
  for rep in range(o['search_repeats']):
    for mode in ['importance', *modes]:
      for name, worker in in_turn(variants, rep):
        settle()
        reply = worker('time_search', mode=mode)
        times[name, mode].append(reply['seconds'])
        result['variants'][name]['compiles_after'] = reply['compiles']
    log(f'search step repetition {rep + 1}/{o["search_repeats"]}: ' +
        ', '.join(f'{v}/{m} {t[-1]:.2f}s' for (v, m), t in times.items()))
  for name, worker in variants.items():
    entry = result['variants'][name]
    entry['seconds'] = {m: stats(times[name, m])
                        for m in ['importance', *modes]}
    entry['recompiles_while_timed'] = (entry.pop('compiles_after')
                                       - entry.pop('compiles_before'))
    entry['step_s'] = stats([times[name, 'importance'][i]
                             + times[name, 'prefix'][i]
                             for i in range(o['search_repeats'])])
    worker.close()
  per_mode = {m: times['jax', m] for m in modes}
  result['ratios'] = {
      'vmap_vs_loop': ratio_stats(per_mode, 'vmap', 'loop'),
      'prefix_vs_loop': ratio_stats(per_mode, 'prefix', 'loop')}
  for mode in ['importance', *modes]:
    result['ratios'][f'{mode}_jax_vs_jax_before'] = stats(
        [b / a for a, b in zip(times['jax', mode],
                               times['jax_before', mode])])
  return result


def search_e2e(o, log, torch_python=None) -> dict:
  log(f'end-to-end search to FLOPs rate {o["target"]}')
  worker = jax_worker()
  result = worker('search_e2e', target=o['target'],
                  images_per_class=o['images_per_class'], depth=o['depth'],
                  split=o['search_split'])
  result.update(worker('peak'))
  worker.close()
  return result


def inference(o, log, torch_python) -> dict:
  """Eval latency of the dense, masked and slimmed networks (JAX), and of
  the dense and slimmed ones in the PyTorch reference."""
  log('inference latency: dense, masked, slimmed')
  request = dict(batches=o['inference_batches'],
                 widths=slimmed_widths(o['depth']), repeats=o['repeats'],
                 depth=o['depth'])
  worker = jax_worker()
  replies = {'jax': worker('inference', **request)}
  worker.close()
  if torch_python:
    worker = torch_worker('eager', torch_python)
    replies['torch'] = worker('inference', **request)
    worker.close()
  macs = replies['jax']['macs']
  result = {'macs': macs, 'flops_rate': macs['slimmed'] / macs['dense'],
            'ideal_speedup': macs['dense'] / macs['slimmed']}
  for side, reply in replies.items():
    for b in o['inference_batches']:
      seconds = reply[str(b)]['seconds']
      entry = {n: stats(t) for n, t in seconds.items()}
      for n in seconds:
        if n != 'dense':
          entry[f'{n}_speedup'] = ratio_stats(seconds, n, 'dense')
      entry['slimmed_fraction_of_ideal'] = (
          entry['slimmed_speedup']['median'] / result['ideal_speedup'])
      result[f'{side}_batch_{b}'] = entry
  return result


def bank(o, log, torch_python=None) -> dict:
  log('memory bank throughput')
  worker = jax_worker()
  reply = worker('memory_bank', images=o['bank_images'],
                 teachers=o['teachers'], batch=256, depth=o['depth'],
                 repeats=o['search_repeats'])
  worker.close()
  return {'images': reply['images'], 'teachers': o['teachers'],
          'images_per_s': stats([reply['images'] / s
                                 for s in reply['seconds']]),
          'first_call_s': reply['first_call_s'],
          'bytes': reply['bytes'], 'dtype': reply['dtype'],
          'bytes_per_image': reply['bytes_per_image'],
          'cifar10_train_bytes': 50000 * reply['bytes_per_image']}


def memory(o, log, torch_python=None) -> dict:
  """Peak memory of each process, by chunk size (search) and batch size
  (fine-tuning step); a bare worker gives the runtime's own share."""
  result = {'search_by_chunk_size': {}, 'finetune_by_batch': {}}
  worker = jax_worker()
  result['bare_worker'] = worker('peak')
  worker.close()
  for chunk in o['chunks']:
    log(f'memory: search step, vmap chunk size {chunk}')
    worker = jax_worker()
    worker('setup_search', chunk_size=chunk,
           images_per_class=o['images_per_class'], depth=o['depth'],
           split=o['search_split'], modes=['vmap'])
    seconds = worker('time_search', mode='vmap')['seconds']
    result['search_by_chunk_size'][chunk] = {**worker('peak'),
                                             'vmap_s': seconds}
    worker.close()
  for batch in o['memory_batches']:
    log(f'memory: fine-tuning step, batch {batch}')
    worker = jax_worker()
    worker('setup_train', kind='finetune', batch=batch, steps=1,
           widths=slimmed_widths(o['depth']), teachers=o['teachers'],
           depth=o['depth'])
    result['finetune_by_batch'][batch] = worker('peak')
    worker.close()
  return result


# Each section: (options, log, PyTorch's python or '') -> its results.
SECTIONS = {'train': train_steps, 'conv_kernels': conv_kernels,
            'ablation': ablation, 'profile': profile,
            'search_step': search_step, 'search_e2e': search_e2e,
            'inference': inference, 'memory_bank': bank, 'memory': memory}


# ---------------------------------------------------------------------------
# Report.


def machine_info(versions: dict) -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next(line.split(':', 1)[1].strip() for line in f
                 if line.startswith('model name'))
  except (OSError, StopIteration):
    pass
  return {'platform': platform.platform(), 'cpu': cpu,
          'cpus': os.cpu_count(), **versions}


def default_machine_name(versions: dict) -> str:
  if versions['backend'] == 'cpu':
    return f'cpu-{os.cpu_count()}cores'
  return versions['device'].lower().replace(' ', '-')


def _fmt(s: dict, digits: int = 1) -> str:
  return (f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-"
          f"{s['max']:.{digits}f})")


def _train_table(train: dict, o: dict) -> list:
  lines = [f"**Training step** (batch {o['batch']}, images/s; first call "
           'includes compilation)', '',
           '| step | side | images/s | GFLOP/s | first call s | '
           'peak RSS GB |', '|---|---|---|---|---|---|']
  for kind, r in train.items():
    label = {'finetune': 'EKG fine-tune (slimmed, 2 views, KD)',
             'dense': 'dense plain (1 view, CE)'}[kind]
    for name, s in r['sides'].items():
      lines.append(f"| {label} | {name} | {_fmt(s['images_per_s'])} | "
                   f"{s['gflops_per_s']:.1f} | {s['first_call_s']:.1f} | "
                   f"{s['max_rss_bytes'] / 1e9:.2f} |")
    for name, s in r['ratios'].items():
      lines.append(f"| {label} | ratio {name.replace('_vs_', ' / ')} | "
                   f"{_fmt(s, 2)}x | | | |")
    for name, err in r['errors'].items():
      lines.append(f'| {label} | {name} | failed: see JSON | | | |')
  check = train.get('finetune', {}).get('same_function')
  if check:
    lines += ['', f"Same function: logits differ by at most "
              f"{check['max_abs_logit_diff']:.2e} (largest "
              f"{check['max_abs_logit']:.1f}); loss JAX "
              f"{check['loss_jax']:.5f}, PyTorch {check['loss_torch']:.5f}."]
  lines.append('')
  return lines


def _kernels_table(kernels: dict, o: dict) -> list:
  names = list(kernels)
  lines = ['**One 3x3 conv** (ms, median over repetitions of medians of '
           '10 calls; NHWC shape)', '',
           '| shape | kernel | ' + ' | '.join(names) + ' |',
           '|---|---|' + '---|' * len(names)]
  for shape in kernels[names[0]]:
    for op in ('forward', 'input_grad', 'kernel_grad'):
      lines.append(f'| {shape} | {op} | ' + ' | '.join(
          f'{kernels[n][shape][op]:.2f}' for n in names) + ' |')
  lines.append('')
  return lines


def _ablation_table(abl: dict, o: dict) -> list:
  lines = ['**The speed-ups one at a time** (training step, batch '
           f"{o['batch']}; images/s and speed-up over `before`)", '',
           '| variant | ' + ' | '.join(abl) + ' |',
           '|---|' + '---|' * len(abl)]
  for variant in next(iter(abl.values())):
    lines.append(f'| {variant} | ' + ' | '.join(
        f"{_fmt(abl[k][variant]['images_per_s'])} img/s, "
        f"{abl[k][variant]['speedup_vs_before']['median']:.2f}x"
        for k in abl) + ' |')
  lines.append('')
  return lines


def _profile_table(prof: dict, o: dict) -> list:
  kinds = sorted({k for r in prof.values() for k in r if k != '_total_ms'},
                 key=lambda k: -max(r.get(k, {}).get('ms', 0)
                                    for r in prof.values()))
  lines = ['**Profile** of one fine-tuning step (ms per step by XLA '
           'operation kind, `jax.profiler`; Eigen convolutions run on '
           'their own threads and are only partly covered)', '',
           '| operation kind | ' + ' | '.join(prof) + ' |',
           '|---|' + '---|' * len(prof)]
  for k in kinds:
    lines.append(f'| {k} | ' + ' | '.join(
        f"{r[k]['ms']:.0f} ({r[k]['count']:.0f} ops)" if k in r else '-'
        for r in prof.values()) + ' |')
  lines.append('')
  return lines


def _search_step_table(step: dict, o: dict) -> list:
  lines = [f"**Search step** ({step['candidates']} candidates on "
           f"{step['images']} images, chunk {step['chunk_size']}, "
           f"{step['weights']} weights; seconds)", '',
           '| path | jax s | jax_before s | jax first call s | '
           'speed-up vs loop | jax vs jax_before |',
           '|---|---|---|---|---|---|']
  v = step['variants']
  for mode in ('importance', 'vmap', 'prefix', 'loop'):
    vs_loop = step['ratios'].get(f'{mode}_vs_loop')
    lines.append(
        f"| {mode} | {_fmt(v['jax']['seconds'][mode], 2)} | "
        f"{_fmt(v['jax_before']['seconds'][mode], 2)} | "
        f"{v['jax']['first_call_s'][mode]:.1f} | "
        f"{_fmt(vs_loop, 2) + 'x' if vs_loop else '-'} | "
        f"{_fmt(step['ratios'][f'{mode}_jax_vs_jax_before'], 2)}x |")
  lines += ['', f"Recompilations while timed: "
            f"{v['jax']['recompiles_while_timed']}.", '']
  return lines


def _search_e2e_line(e2e: dict, o: dict) -> list:
  return [f"**End-to-end search** to FLOPs rate {o['target']}: "
          f"{e2e['seconds']:.0f} s, {e2e['steps']} steps "
          f"(`{e2e['evaluation']}` evaluation), reached "
          f"{e2e['flops_rate']:.4f}; compilations after the first step: "
          f"{e2e['compiles_after_step_1']}; peak RSS "
          f"{e2e['max_rss_bytes'] / 1e9:.2f} GB.", '']


def _inference_table(inf: dict, o: dict) -> list:
  lines = [f"**Inference** (eval mode; slimmed MACs "
           f"{inf['macs']['slimmed']:,} vs dense {inf['macs']['dense']:,}"
           f", ideal speed-up {inf['ideal_speedup']:.2f}x; ms per batch;"
           ' `masked`: the supernet with the same masks)', '',
           '| side | batch | dense ms | masked ms | slimmed ms | slimmed '
           'speed-up | of ideal |', '|---|---|---|---|---|---|---|']
  for key, e in inf.items():
    if '_batch_' not in key:
      continue
    side, b = key.split('_batch_')
    ms = {n: _fmt({k: v * 1e3 if k != 'n' else v
                   for k, v in e[n].items()}, 2) if n in e else '-'
          for n in ('dense', 'masked', 'slimmed')}
    lines.append(f"| {side} | {b} | {ms['dense']} | {ms['masked']} | "
                 f"{ms['slimmed']} | {_fmt(e['slimmed_speedup'], 2)}x | "
                 f"{e['slimmed_fraction_of_ideal']:.0%} |")
  lines.append('')
  return lines


def _memory_bank_line(mb: dict, o: dict) -> list:
  return [f"**Memory bank**: {_fmt(mb['images_per_s'])} images/s with "
          f"{mb['teachers']} teachers ({mb['images']} images); "
          f"{mb['bytes_per_image']} bytes per image ({mb['dtype']}), "
          f"{mb['cifar10_train_bytes'] / 1e6:.1f} MB for the 50,000 "
          'CIFAR-10 training images.', '']


def _memory_table(mem: dict, o: dict) -> list:
  gb = lambda r: f"{r['max_rss_bytes'] / 1e9:.2f}"  # noqa: E731
  lines = ['**Peak memory** (resident set of the whole process, GB; a '
           f"bare JAX worker: {gb(mem['bare_worker'])})", '',
           '| what | setting | peak RSS GB | seconds (one call) |',
           '|---|---|---|---|']
  for c, r in mem['search_by_chunk_size'].items():
    lines.append(f"| search step, vmap | chunk_size {c} | {gb(r)} | "
                 f"{r['vmap_s']:.2f} |")
  for b, r in mem['finetune_by_batch'].items():
    lines.append(f'| fine-tuning step | batch {b} | {gb(r)} | |')
  lines.append('')
  return lines


# Each section's results -> its Markdown lines, in report order.
MARKDOWN = {'train': _train_table, 'conv_kernels': _kernels_table,
            'ablation': _ablation_table, 'profile': _profile_table,
            'search_step': _search_step_table,
            'search_e2e': _search_e2e_line, 'inference': _inference_table,
            'memory_bank': _memory_bank_line, 'memory': _memory_table}


def markdown(results: dict) -> str:
  m, o = results['machine'], results['options']
  lines = [f"Machine: {m['cpu']}, {m['cpus']} cores, JAX {m['jax']} "
           f"({m['backend']}: {m['device']}), PyTorch "
           f"{results.get('train', {}).get('finetune', {}).get('torch', '-')}"
           f"; ResNet-{o['depth']}, medians (min-max) over "
           f"{o['repeats']} repetitions after warm-up.", '']
  for section, table in MARKDOWN.items():
    if results.get(section):
      lines += table(results[section], o)
  return '\n'.join(lines)


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
