"""The benchmark sections: each measures one thing side by side, in worker
processes taking turns, and returns its results (`run.py` runs them and
`report.py` renders them). Options `o` are `run.FULL` or `run.QUICK`.
"""

from __future__ import annotations

import os
import statistics
import tempfile

from workers import (Worker, in_turn, jax_worker, ratio_stats, settle,
                     slimmed_widths, stats, torch_worker)


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
  """The profile-driven changes added one at a time (run.ABLATION, each a
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
