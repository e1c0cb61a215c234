"""The evidence study's tables and figure, from the committed arm summaries.

Reads `results/evidence/<arm>/summary.json` (what `evidence_study.py`
commits) and writes the poster's two tables with the paper's numbers beside
ours, a table of every arm with every measure and each phase's wall-clock,
the spread of one network's accuracy over fine-tuning seeds, and the exact
commands, into `experiments/README.md`
(between the `evidence-tables` markers), and the feasibility figure
(landscape measure against test accuracy) to
`results/evidence/landscape_vs_accuracy.png`. Arms not finished yet read
"not run yet"; nothing else is left out.

  python experiments/evidence_report.py
"""

from __future__ import annotations

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results', 'evidence')
README = os.path.join(HERE, 'README.md')
FIGURE = os.path.join(RESULTS, 'landscape_vs_accuracy.png')
MARKERS = ('<!-- evidence-tables:start -->', '<!-- evidence-tables:end -->')

# Seed poster (ResNet-56, CIFAR-10): ../shared/docs/seed_poster.txt lines
# 85-106. Feasibility columns: validation loss, condition number, accuracy.
PAPER_FEASIBILITY = {'l1': (0.1569, 0.4078, 93.57),
                     'fpgm': (0.1066, 0.1461, 93.57),
                     'gbn': (0.0710, 0.0414, 93.70),
                     'ekg': (0.0713, 0.0211, 93.85)}
FEASIBILITY_NAMES = {'l1': 'L1', 'fpgm': 'FPGM', 'gbn': 'GBN', 'ekg': 'EKG'}
# (search teacher, fine-tune teacher, arm, paper accuracy +- spread).
ABLATION = [('none', 'none', 'teacher_none', '93.78 (+-0.07)'),
            ('single', 'none', 'teacher_single', '93.54 (+-0.09)'),
            ('ensemble', 'none', 'ekg', '93.85 (+-0.10)'),
            ('ensemble', 'single', 'ekg_ft_single', '94.02 (+-0.08)'),
            ('ensemble', 'ensemble', 'ekg_ft_ensemble', '94.09 (+-0.07)')]
# Every arm of the study, in the order the tables list them.
ARM_ORDER = ['ekg', 'l1', 'fpgm', 'gbn', 'teacher_none', 'teacher_single',
             'ekg_ft_single', 'ekg_ft_ensemble', 'l1_uniform', 'per_channel',
             'ekg_seed1', 'ekg_seed2']
# One network fine-tuned with seeds 0, 1, 2: the spread a seed alone gives.
SEED_ARMS = ['ekg', 'ekg_seed1', 'ekg_seed2']
MISSING = 'not run yet'


def read_json(path: str) -> dict:
  """A JSON file's object; {} when the file is not there (yet)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load(arm: str) -> dict:
  return read_json(os.path.join(RESULTS, arm, 'summary.json'))


def _get(summary: dict, *keys, fmt: str = '{}'):
  for key in keys:
    if not isinstance(summary, dict) or key not in summary:
      return MISSING
    summary = summary[key]
  return fmt.format(summary)


def _hours(summary: dict, phases) -> str:
  """Seconds of the phases' own records (a reused search counts for every
  arm that shares it), in hours."""
  if not any(p in summary for p in phases):
    return MISSING
  return f"{sum(summary.get(p, {}).get('seconds', 0) for p in phases) / 3600:.2f}"


def feasibility_table(arms: dict) -> str:
  rows = [('validation CE of the search (paper: "validation loss")',
           lambda s: _get(s, 'search', 'val_loss', fmt='{:.4f}'), 0),
          ('condition: abs(lambda_min / lambda_max) (paper: "condition '
           'number", undefined)',
           lambda s: _get(s, 'landscape', 'condition', fmt='{:.4f}'), 1),
          ('test accuracy after fine-tuning, % (ours: 1 epoch)',
           lambda s: _get(s, 'final', 'test_accuracy', fmt='{:.2f}'), 2),
          ('lambda_max', lambda s: _get(s, 'landscape', 'lambda_max',
                                        fmt='{:.1f}'), None),
          ('Hessian trace', lambda s: _get(s, 'landscape', 'trace',
                                           fmt='{:.0f}'), None),
          ('test accuracy before fine-tuning, % (per-batch BN)',
           lambda s: _get(s, 'landscape', 'test_accuracy_batch_bn',
                          fmt='{:.2f}'), None),
          ('FLOPs rate', lambda s: _get(s, 'search', 'flops_rate',
                                        fmt='{:.4f}'), None),
          ('parameters', lambda s: _get(s, 'search', 'params',
                                        fmt='{:,}'), None)]
  names = list(FEASIBILITY_NAMES)
  lines = ['| score | ' + ' | '.join(FEASIBILITY_NAMES[n] for n in names)
           + ' |', '|---' * (len(names) + 1) + '|']
  for label, cell, paper in rows:
    cells = []
    for name in names:
      ours = cell(arms[name])
      cells.append(ours if paper is None else
                   f'{ours} (paper {PAPER_FEASIBILITY[name][paper]})')
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def ablation_table(arms: dict) -> str:
  lines = ['| search teacher | fine-tune teacher | arm | test accuracy, % '
           '(paper, 3 runs) | test accuracy, % (ours, 1 run, 1 epoch) | '
           'CPU hours search / fine-tune (paper: GPU hours) |',
           '|---|---|---|---|---|---|']
  for search, finetune, arm, paper in ABLATION:
    s = arms[arm]
    hours = (f"{_hours(s, ('search',))} / "
             f"{_hours(s, ('memory_bank', 'finetune'))}")
    lines.append(f'| {search} | {finetune} | `{arm}` | {paper} | '
                 f"{_get(s, 'final', 'test_accuracy', fmt='{:.2f}')} | "
                 f'{hours} |')
  return '\n'.join(lines)


def arms_table(arms: dict) -> str:
  """Every arm with every measure the study records, and the wall-clock of
  each phase (an arm that reuses another's search shows that search's)."""
  columns = [('FLOPs rate', 'search', 'flops_rate', '{:.4f}'),
             ('parameters', 'search', 'params', '{:,}'),
             ('val CE', 'search', 'val_loss', '{:.4f}'),
             ('lambda_max', 'landscape', 'lambda_max', '{:.1f}'),
             ('condition', 'landscape', 'condition', '{:.4f}'),
             ('trace', 'landscape', 'trace', '{:.0f}'),
             ('accuracy before, %', 'landscape', 'test_accuracy_batch_bn',
              '{:.2f}'),
             ('accuracy after, %', 'final', 'test_accuracy', '{:.2f}')]
  phases = ('search', 'landscape', 'memory_bank', 'finetune')
  lines = ['| arm | what | ' + ' | '.join(c[0] for c in columns)
           + ' | seconds: search / landscape / bank / fine-tune |',
           '|---' * (len(columns) + 3) + '|']
  for arm in ARM_ORDER:
    s = arms[arm]
    cells = [_get(s, phase, key, fmt=fmt) for _, phase, key, fmt in columns]
    seconds = ' / '.join(
        _get(s, p, 'seconds', fmt='{:.0f}') if p in s else '-'
        for p in phases) if s else MISSING
    lines.append(f"| `{arm}` | {_get(s, 'study', 'what')} | "
                 + ' | '.join(cells) + f' | {seconds} |')
  return '\n'.join(lines)


def seed_spread(arms: dict) -> str:
  accuracies = [arms[a]['final']['test_accuracy'] for a in SEED_ARMS
                if 'final' in arms[a]]
  line = (f"**Seed spread**: the `ekg` network fine-tuned for one epoch with "
          f"seeds 0, 1, 2 (batch order and augmentation): "
          f"{', '.join(f'{a:.2f}' for a in accuracies) or MISSING}")
  if len(accuracies) < 2:
    return line + '.'
  mean = sum(accuracies) / len(accuracies)
  std = (sum((a - mean) ** 2 for a in accuracies)
         / (len(accuracies) - 1)) ** 0.5
  return (line + f'; mean {mean:.2f}%, sample standard deviation '
          f'{std:.2f} points, range {max(accuracies) - min(accuracies):.2f} '
          f'({len(accuracies)} of {len(SEED_ARMS)} seeds run).')


def commands(arms: dict) -> str:
  """The exact command of every piece each arm ran (as the study recorded
  them; run from the repository root with `python`)."""
  lines = []
  for arm in ARM_ORDER:
    study = arms[arm].get('study', {})
    if study.get('base'):
      lines.append(f"# {arm}: starts from a copy of {study['base']}'s "
                   'finished pieces')
    for piece, command in study.get('commands', {}).items():
      lines.append(f'# {arm}: {piece}\npython {command}')
  return '```\n' + ('\n'.join(lines) or MISSING) + '\n```'


def _ranks(values: list) -> list:
  """1-based ranks, ties given their mean rank."""
  order = sorted(range(len(values)), key=values.__getitem__)
  ranks = [0.0] * len(values)
  i = 0
  while i < len(order):
    j = i
    while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
      j += 1
    for k in range(i, j + 1):
      ranks[order[k]] = (i + j) / 2 + 1
    i = j + 1
  return ranks


def spearman(x: list, y: list) -> float:
  """Spearman's rank correlation (Pearson's on the ranks)."""
  rx, ry = _ranks(x), _ranks(y)
  mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
  cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
  var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
  return cov / var ** 0.5 if var else float('nan')  # nan: a constant


def correlations(arms: dict, plotted: list) -> str:
  """Does a flatter searched network fine-tune better? The rank
  correlation of each measure with the accuracy after fine-tuning, across
  the plotted greedy searches (the uniform allocation is another kind of
  network). The paper's claim predicts negative values."""
  names = [a for a in plotted if a != 'l1_uniform']
  if len(names) < 3:
    return ''
  accuracy = [arms[a]['final']['test_accuracy'] for a in names]
  measures = [('search', 'val_loss', 'search CE'),
              ('landscape', 'condition', 'condition'),
              ('landscape', 'lambda_max', 'lambda_max'),
              ('landscape', 'trace', 'trace')]
  rhos = [(label, spearman([arms[a][p][k] for a in names], accuracy))
          for p, k, label in measures]
  cells = [f'{label} {rho:+.2f}' if rho == rho else f'{label} n/a'
           for label, rho in rhos]
  return (f'Rank correlation (Spearman) with the accuracy after fine-tuning, '
          f'across the {len(names)} greedy searches plotted: '
          + ', '.join(cells) + '.')


def plot(arms: dict) -> list[str]:
  """Each searched network's landscape measures against its test accuracy
  after fine-tuning without knowledge (the arms the paper's feasibility
  figure compares; fine-tuning with knowledge would mix in a second
  effect). Returns the arms plotted."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  points = {name: s for name, s in arms.items()
            if 'landscape' in s and 'final' in s
            and s.get('finetune', {}).get('knowledge') == 'none'
            and name not in SEED_ARMS[1:]}
  seeds = [arms[a]['final']['test_accuracy'] for a in SEED_ARMS
           if 'final' in arms[a]]
  # Row 2: the greedy searches alone, whose points row 1 squeezes together
  # beside the uniform allocation's.
  rows = [points, {n: s for n, s in points.items() if n != 'l1_uniform'}]
  fig, axes = plt.subplots(2, 3, figsize=(13, 8), squeeze=False)
  measures = [('condition', 'abs(lambda_min / lambda_max)'),
              ('lambda_max', 'lambda_max'), ('trace', 'Hessian trace')]
  for row, subset in zip(axes, rows):
    for ax, (key, label) in zip(row, measures):
      for name, s in subset.items():
        x, y = s['landscape'][key], s['final']['test_accuracy']
        ax.scatter(x, y)
        ax.annotate(name, (x, y), textcoords='offset points',
                    xytext=(4, 4), fontsize=8)
      if len(seeds) > 1 and SEED_ARMS[0] in subset:
        # The same network's range over fine-tuning seeds: how far apart
        # two points must be to differ by more than a seed.
        ax.vlines(subset[SEED_ARMS[0]]['landscape'][key], min(seeds),
                  max(seeds), colors='gray', label='ekg: range over seeds')
        ax.legend(fontsize=8)
      ax.set_xlabel(label)
      ax.set_ylabel('test accuracy after 1 epoch, %')
      ax.grid(alpha=0.3)
  fig.suptitle('ResNet-56 / CIFAR-10 sub-networks at FLOPs rate 0.45: '
               'landscape of the searched network vs accuracy\n(row 2: '
               'the greedy searches alone)')
  fig.tight_layout()
  fig.savefig(FIGURE, dpi=120)
  plt.close(fig)
  return sorted(points)


def main(quiet: bool = False):
  arms = {name: load(name) for name in ARM_ORDER}
  plotted = plot(arms)
  dates = sorted({s['study']['date'] for s in arms.values()
                  if 'study' in s})
  block = '\n\n'.join([
      MARKERS[0],
      '_Made by `python experiments/evidence_report.py` from '
      '`results/evidence/*/summary.json` (runs dated '
      f"{', '.join(dates) or 'none yet'})._",
      '**Feasibility** (poster: "Comparison of potential loss vs '
      'validation loss and condition number"; every search with the '
      'ensemble teacher, fine-tuned without knowledge). Each cell: ours '
      '(paper).', feasibility_table(arms),
      '**Ablation** (poster: "Ablation study", ResNet-56 CIFAR-10 column).',
      ablation_table(arms),
      '**Every arm** (`l1_uniform` and `per_channel` are not in the poster; '
      '"before": the searched network on the test set, per-batch BN; '
      '"after": one epoch of fine-tuning; a `-` phase did not run for the '
      'arm, and an arm built on another (`ekg_ft_*`, `ekg_seed*`) shows '
      'the seconds of the pieces it copied; seconds include the pauses and '
      'shared cores of the run log above).', arms_table(arms),
      seed_spread(arms),
      f'![landscape vs accuracy](results/evidence/{os.path.basename(FIGURE)})'
      f"\n\nPlotted: {', '.join(f'`{a}`' for a in plotted) or 'none yet'}. "
      + correlations(arms, plotted),
      '<details><summary>The exact commands, as each arm\'s summary '
      'records them</summary>\n\n' + commands(arms) + '\n\n</details>',
      MARKERS[1]])
  with open(README) as f:
    text = f.read()
  pattern = re.escape(MARKERS[0]) + '.*?' + re.escape(MARKERS[1])
  if not re.search(pattern, text, flags=re.S):
    raise SystemExit(f'{README}: no {MARKERS[0]} ... {MARKERS[1]} block')
  text = re.sub(pattern, lambda _: block, text, flags=re.S)
  with open(README, 'w') as f:
    f.write(text)
  if not quiet:
    print(block)


if __name__ == '__main__':
  main()
