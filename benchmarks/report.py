"""The benchmark report: the machine a run measured on, and each section's
results as the Markdown docs/performance.md shows (`run.py` writes it beside the JSON).
"""

from __future__ import annotations

import os
import platform


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
