"""The ViT demonstration's stage 5 (experiments/vit_demo.py): the report.
summary.json, table.md (dense / EKG / uniform-L1 rows: test accuracy,
FLOPs, parameters, speed-ups) and kept.png (heads and MLP units kept per
block, both arms), from the stages' workdirs."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 0.5
ARMS = ('ekg', 'uniform_l1')
LABELS = {'dense': 'dense', 'ekg': 'EKG', 'uniform_l1': 'uniform L1'}


def read_json(path: str) -> dict:
  """The file's object, or {} where it is missing or unfinished."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime(
      '%Y-%m-%d %H:%M UTC')


def git(*args) -> str:
  r = subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                     text=True)
  return r.stdout.strip()


def arm_rows(workdir: str) -> dict:
  """Network -> its accuracy, FLOPs, parameters, kept widths."""
  ekg = read_json(os.path.join(workdir, 'ekg', 'summary.json'))
  rows = {'dense': {'test_accuracy': ekg['base']['test_accuracy'],
                    'flops': ekg['base']['flops'],
                    'params': ekg['base']['params'], 'flops_rate': 1.0}}
  for arm in ARMS:
    s = read_json(os.path.join(workdir, arm, 'summary.json'))
    rows[arm] = {'test_accuracy': s['final']['test_accuracy'],
                 'flops': s['final']['flops'], 'params': s['final']['params'],
                 'flops_rate': s['search']['flops_rate'],
                 'search_steps': s['search']['steps'],
                 'kept': s['search']['kept_channels'],
                 'knowledge': s['finetune']['knowledge'],
                 'views': s['finetune']['views']}
  return rows


def architecture(workdir: str) -> dict:
  with open(os.path.join(workdir, 'ekg', 'export', 'network.json')) as f:
    a = json.load(f)['attributes']
  return {k: a[k] for k in ('depth', 'embed_dim', 'num_heads', 'mlp_ratio',
                            'patch_size', 'pool')}


def per_block(kept: dict, arch: dict) -> tuple[list, list]:
  """(heads kept, MLP units kept) per block (an unpruned gate is whole)."""
  heads = [kept.get(f'block{i}/heads', arch['num_heads'])
           for i in range(arch['depth'])]
  mlp = [kept.get(f'block{i}/mlp', arch['embed_dim'] * arch['mlp_ratio'])
         for i in range(arch['depth'])]
  return heads, mlp


def figure(path: str, rows: dict, arch: dict) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  blocks = np.arange(arch['depth'])
  full = (arch['num_heads'], arch['embed_dim'] * arch['mlp_ratio'])
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for k, (ax, what) in enumerate(zip(axes, ('attention heads',
                                            'MLP hidden units'))):
    for j, arm in enumerate(ARMS):
      kept = per_block(rows[arm]['kept'], arch)[k]
      ax.bar(blocks + (j - 0.5) * 0.38, kept, 0.38,
             label=f"{LABELS[arm]} (FLOPs rate {rows[arm]['flops_rate']:.3f})")
    ax.axhline(full[k], color='k', lw=0.8, ls='--', label='dense')
    ax.set_xticks(blocks, [f'block{i}' for i in blocks])
    ax.set_title(f'{what} kept')
    ax.set_ylim(0, full[k] * 1.25)
    if k == 0:
      ax.set_yticks(range(full[0] + 1))
  fig.legend(*axes[1].get_legend_handles_labels(), loc='lower center',
             ncol=3, fontsize=8, frameon=False)
  fig.suptitle(f"ViT (depth {arch['depth']}, width {arch['embed_dim']}) on "
               f'CIFAR-10, FLOPs target {TARGET}')
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def table(result: dict) -> str:
  rows, speed = result['networks'], result['speedup']
  batches = speed['options']['batches']
  cols = [(side, b) for side in speed['sides'] for b in batches]
  lines = [
      f"{result['command']}, {result['date']}, {result['machine']}. "
      f"Test accuracy on {result['test_images']:,} CIFAR-10 test images; "
      'FLOPs: multiply-accumulates of one image; speed-up: dense latency / '
      'slimmed latency of the exported forward (uint8 images -> logits), '
      f"median of {speed['options']['repeats']} alternating repetitions; "
      "the dense row gives the dense network's latency instead.",
      '',
      '| network | test acc. % | FLOPs | FLOPs rate | params | ' + ' | '.join(
          f'{"XLA" if s == "xla" else "ONNX Runtime"}, batch {b}'
          for s, b in cols) + ' |',
      '|---|---|---|---|---|' + '---|' * len(cols)]
  for net, r in rows.items():
    cells = [f"{r['test_accuracy']:.2f}", f"{r['flops']:,}",
             f"{r['flops_rate']:.3f}", f"{r['params']:,}"]
    for side, b in cols:
      e = speed['latency'][side][str(b)]
      cells.append(f"{e['dense']['median'] * 1e3:.2f} ms" if net == 'dense'
                   else f"{e[f'{net}_speedup']['median']:.2f}x")
    lines.append(f'| {LABELS[net]} | ' + ' | '.join(cells) + ' |')
  if speed['missing']:
    lines += ['', f"Not measured (missing modules): "
              f"{', '.join(speed['missing'])}."]
  return '\n'.join(lines) + '\n'


def report(workdir: str, out: str, command: str, stages: dict) -> dict:
  """Writes `out`/summary.json, table.md and kept.png; returns the
  summary."""
  ekg = read_json(os.path.join(workdir, 'ekg', 'summary.json'))
  rows = arm_rows(workdir)
  arch = architecture(workdir)
  with open(os.path.join(workdir, 'speedup.json')) as f:
    speed = json.load(f)
  result = {
      'command': command, 'date': now(),
      'machine': f'{platform.processor() or platform.machine()}, '
                 f'{os.cpu_count()} cores',
      'commit': git('rev-parse', 'HEAD'),
      'architecture': arch, 'target_flops_rate': TARGET,
      'pretrain': {k: ekg['pretrain'][k] for k in
                   ('test_accuracy', 'epochs', 'seconds', 'images_per_second')},
      'test_images': ekg['base']['test_images'],
      'networks': rows,
      'per_block': {arm: dict(zip(('heads', 'mlp'),
                                  per_block(rows[arm]['kept'], arch)))
                    for arm in ARMS},
      'phase_seconds': {arm: {k: v['seconds'] for k, v in
                              read_json(os.path.join(workdir, arm,
                                                     'summary.json')).items()
                              if isinstance(v, dict) and 'seconds' in v}
                        for arm in ARMS},
      'stages': stages, 'speedup': speed}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(table(result))
  figure(os.path.join(out, 'kept.png'), rows, arch)
  return result
