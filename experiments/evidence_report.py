"""The evidence study's tables and figure, from the committed arm summaries.

Reads `results/evidence/<arm>/summary.json` (what `evidence_study.py`
commits; `<arm>_seed<k>` is `<arm>` fine-tuned with seed k) and writes, into
`experiments/README.md` (between the `evidence-tables` markers): the poster's
two tables with the paper's numbers beside ours, each arm's accuracy as mean
and standard deviation over its seeds, every comparison the paper makes
(`evidence_claims.py` lists them) with its Welch t-interval and
Holm-corrected p-value (`evidence_stats.py`), the baselines a user would
pick instead, a table of every arm with every measure, the code commits
behind the numbers and the exact commands; and the
feasibility figure (landscape measure against accuracy, arm means) to
`results/evidence/landscape_vs_accuracy.png`. Arms not finished yet read
"not run yet"; nothing else is left out.

  python experiments/evidence_report.py
"""

from __future__ import annotations

import json
import os
import re
import sys

import evidence_figure as figure  # experiments/, beside this file
import evidence_stats as st
from evidence_claims import (ABLATION, ARM_ORDER, COMPARISONS,
                             FEASIBILITY_NAMES, LANDSCAPE_NETS,
                             PAPER_FEASIBILITY)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, 'results', 'evidence')
README = os.path.join(HERE, 'README.md')
FIGURE = os.path.join(RESULTS, 'landscape_vs_accuracy.png')
MARKERS = ('<!-- evidence-tables:start -->', '<!-- evidence-tables:end -->')

SEED = re.compile(r'^(?P<arm>.+)_seed(?P<seed>[0-9]+)$')
MISSING = 'not run yet'


def read_json(path: str) -> dict:
  """A JSON file's object; {} when the file is not there (yet)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load(arm: str) -> dict:
  return read_json(os.path.join(RESULTS, arm, 'summary.json'))


def load_all() -> dict[str, dict]:
  """Every committed arm, seeds included, by name."""
  names = sorted(os.listdir(RESULTS)) if os.path.isdir(RESULTS) else []
  found = {n: load(n) for n in names
           if os.path.isfile(os.path.join(RESULTS, n, 'summary.json'))}
  return {**{n: found.get(n, {}) for n in ARM_ORDER}, **found}


def seeds(arms: dict, arm: str) -> dict[int, dict]:
  """The finished fine-tunings of `arm`'s network and recipe, by seed."""
  out = {0: arms[arm]} if 'final' in arms.get(arm, {}) else {}
  for name, summary in arms.items():
    match = SEED.match(name)
    if match and match['arm'] == arm and 'final' in summary:
      out[int(match['seed'])] = summary
  return dict(sorted(out.items()))


def accuracy(arms: dict, arm: str):
  """The arm's test accuracies over its seeds (None: none finished)."""
  values = [s['final']['test_accuracy'] for s in seeds(arms, arm).values()]
  return st.Spread(tuple(values)) if values else None


def _acc(arms: dict, arm: str) -> str:
  spread = accuracy(arms, arm)
  return str(spread) if spread else MISSING


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
    return '-' if 'final' in summary else MISSING  # finished: never runs
  return f"{sum(summary.get(p, {}).get('seconds', 0) for p in phases) / 3600:.2f}"


def feasibility_table(arms: dict) -> str:
  rows = [('validation CE of the search (paper: "validation loss")',
           lambda n: _get(arms[n], 'search', 'val_loss', fmt='{:.4f}'), 0),
          ('condition: abs(lambda_min / lambda_max) (paper: "condition '
           'number", undefined)',
           lambda n: _get(arms[n], 'landscape', 'condition', fmt='{:.4f}'),
           1),
          ('test accuracy after fine-tuning, % (ours: 1 epoch, mean +- '
           'std over seeds)', lambda n: _acc(arms, n), 2),
          ('lambda_max', lambda n: _get(arms[n], 'landscape', 'lambda_max',
                                        fmt='{:.1f}'), None),
          ('Hessian trace', lambda n: _get(arms[n], 'landscape', 'trace',
                                           fmt='{:.0f}'), None),
          ('test accuracy before fine-tuning, % (per-batch BN)',
           lambda n: _get(arms[n], 'landscape', 'test_accuracy_batch_bn',
                          fmt='{:.2f}'), None),
          ('FLOPs rate', lambda n: _get(arms[n], 'search', 'flops_rate',
                                        fmt='{:.4f}'), None),
          ('parameters', lambda n: _get(arms[n], 'search', 'params',
                                        fmt='{:,}'), None)]
  names = list(FEASIBILITY_NAMES)
  lines = ['| score | ' + ' | '.join(FEASIBILITY_NAMES[n] for n in names)
           + ' |', '|---' * (len(names) + 1) + '|']
  for label, cell, paper in rows:
    cells = [cell(n) if paper is None else
             f'{cell(n)} (paper {PAPER_FEASIBILITY[n][paper]})'
             for n in names]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def ablation_table(arms: dict) -> str:
  lines = ['| search teacher | fine-tune teacher | arm | test accuracy, % '
           '(paper, 3 runs) | test accuracy, % (ours, 1 epoch, mean +- std '
           'over seeds) | CPU hours search / fine-tune (paper: GPU hours) |',
           '|---|---|---|---|---|---|']
  for search, finetune, arm, paper in ABLATION:
    s = arms[arm]
    hours = (f"{_hours(s, ('search',))} / "
             f"{_hours(s, ('memory_bank', 'finetune'))}")
    lines.append(f'| {search} | {finetune} | `{arm}` | {paper} | '
                 f'{_acc(arms, arm)} | {hours} |')
  return '\n'.join(lines)


def baselines_table(arms: dict) -> str:
  """The dense network and what a user would pick instead, each fine-tuned
  with two views and no knowledge, beside the EKG network with the same
  recipe and with ensemble knowledge."""
  lines = ['| arm | what | FLOPs rate (without BN) | parameters | test accuracy, % (1 '
           'epoch, mean +- std over seeds) |', '|---|---|---|---|---|']
  for arm in ('dense', 'tp_magnitude', 'tp_taylor', 'ekg_2view',
              'ekg_ft_ensemble'):
    s = arms[arm]
    reduction = s.get('final', {}).get('flops_reduction')
    rate = MISSING if reduction is None else f'{1 - reduction:.4f}'
    lines.append(f"| `{arm}` | {_get(s, 'study', 'what')} | {rate} | "
                 f"{_get(s, 'final', 'params', fmt='{:,}')} | "
                 f'{_acc(arms, arm)} |')
  return '\n'.join(lines)


def verdict(d, claim: str, adjusted: float) -> str:
  if adjusted >= st.ALPHA:
    return (f'not resolved (seeds detect about {d.detectable:.2f} points)')
  if not claim:
    return 'differ'
  return 'holds' if d.diff > 0 else 'reversed'


def _p(p: float) -> str:
  return f'{p:.3f}' if p >= 0.001 else '< 0.001'


def comparisons_table(arms: dict, table: str) -> str:
  """The table's comparisons: difference of means (a - b), its Welch
  95% interval, p-value, Holm-corrected over the table, and the verdict on
  the paper's claim."""
  rows = [(what, a, b, claim, st.welch(accuracy(arms, a) or st.Spread(()),
                                       accuracy(arms, b) or st.Spread(())))
          for t, what, a, b, claim in COMPARISONS if t == table]
  tested = [d.p for *_, d in rows if d]
  adjusted = iter(st.holm(tested))
  lines = ['| comparison (a vs b) | paper | n a / b | a - b, points | 95% '
           'interval (Welch) | p | p, Holm | verdict |',
           '|---|---|---|---|---|---|---|---|']
  for what, a, b, claim, d in rows:
    n = '/'.join(str(len(seeds(arms, x))) for x in (a, b))
    paper = 'a > b' if claim else 'no claim'
    if d is None:
      lines.append(f'| {what} (`{a}` vs `{b}`) | {paper} | {n} | '
                   + ' | '.join(['needs 2 seeds each'] + [''] * 4) + ' |')
      continue
    p_holm = next(adjusted)
    lines.append(f'| {what} (`{a}` vs `{b}`) | {paper} | {n} | '
                 f'{d.diff:+.2f} | [{d.low:+.2f}, {d.high:+.2f}] | '
                 f'{_p(d.p)} | {_p(p_holm)} | {verdict(d, claim, p_holm)} |')
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
              '{:.2f}')]
  phases = ('search', 'landscape', 'memory_bank', 'finetune')
  lines = ['| arm | what | ' + ' | '.join(c[0] for c in columns)
           + ' | accuracy after, % (by seed) | seconds: search / landscape '
           '/ bank / fine-tune (seed 0) |', '|---' * (len(columns) + 4) + '|']
  for arm in ARM_ORDER:
    s = arms[arm]
    # A finished arm without a phase never runs it (the dense network and
    # the Torch-Pruning arms have no search): '-', not "not run yet".
    cells = [_get(s, phase, key, fmt=fmt)
             if phase in s or 'final' not in s else '-'
             for _, phase, key, fmt in columns]
    by_seed = ', '.join(f"{seed}: {r['final']['test_accuracy']:.2f}"
                        for seed, r in seeds(arms, arm).items()) or MISSING
    seconds = ' / '.join(
        _get(s, p, 'seconds', fmt='{:.0f}') if p in s else '-'
        for p in phases) if s else MISSING
    lines.append(f"| `{arm}` | {_get(s, 'study', 'what')} | "
                 + ' | '.join(cells) + f' | {by_seed} | {seconds} |')
  return '\n'.join(lines)


def reproducibility(arms: dict) -> str:
  """`ekg_rerun` fine-tunes the `ekg` network again, seed 0, at the pinned
  commit: equal numbers say the commit computes what the earlier code
  did."""
  a, b = arms['ekg'], arms['ekg_rerun']
  if 'final' not in b:
    return '**Reproducibility** (`ekg_rerun`): ' + MISSING + '.'
  x, y = a['final']['test_accuracy'], b['final']['test_accuracy']
  commit = b['study'].get('commits', {}).get('finetune', '?')[:10]
  same = 'the same' if x == y else f'{y - x:+.2f} points from'
  return (f'**Reproducibility**: the `ekg` fine-tuning run again at commit '
          f'{commit} (`ekg_rerun`, seed 0) reached {y:.2f}%, {same} the '
          f'committed {x:.2f}% of 2026-11-26.')


def code_commits(arms: dict) -> str:
  """Which pieces ran at which commit."""
  by_commit: dict[str, list[str]] = {}
  for name, s in sorted(arms.items()):
    recorded = s.get('study', {}).get('commits', {})
    for piece in s.get('study', {}).get('wall_seconds', {}):
      by_commit.setdefault(recorded.get(piece) or 'not recorded', []).append(
          f'{name} ({piece})')
  lines = [f"- {commit if commit == 'not recorded' else commit[:10]}: "
           f"{', '.join(pieces)}"
           for commit, pieces in sorted(by_commit.items())]
  return ('**Code behind the numbers** ("not recorded": run from the working '
          'checkout on 2026-11-26, before the study pinned a commit):\n\n'
          + ('\n'.join(lines) or MISSING))


def commands(arms: dict) -> str:
  """The exact command of every piece each arm ran (as the study recorded
  them; run from the root of a checkout of the piece's commit)."""
  lines = []
  for arm, s in arms.items():
    study = s.get('study', {})
    if study.get('base'):
      lines.append(f"# {arm}: starts from a copy of {study['base']}'s "
                   'finished pieces')
    for piece, command in study.get('commands', {}).items():
      lines.append(f'# {arm}: {piece}\npython {command}')
  return '```\n' + ('\n'.join(lines) or MISSING) + '\n```'


def main(quiet: bool = False):
  arms = load_all()
  plotted = figure.plotted_arms(arms, ARM_ORDER, accuracy)
  figure.plot(arms, plotted, accuracy, FIGURE)
  dates = sorted({s['study']['date'] for s in arms.values()
                  if 'study' in s})
  block = '\n\n'.join([
      MARKERS[0],
      '_Made by `python experiments/evidence_report.py` from '
      '`results/evidence/*/summary.json` (runs dated '
      f"{', '.join(dates) or 'none yet'}; the paper's numbers and the "
      'comparisons it makes: `experiments/evidence_claims.py`)._',
      '**Feasibility** (poster: "Comparison of potential loss vs '
      'validation loss and condition number"; every search with the '
      'ensemble teacher, fine-tuned without knowledge). Each cell: ours '
      '(paper).', feasibility_table(arms), comparisons_table(
          arms, 'feasibility'),
      '**Ablation** (poster: "Ablation study", ResNet-56 CIFAR-10 column; '
      'the two-view control is ours: the views knowledge comes with, no '
      'knowledge; the poster\'s baseline is the unpruned network, ours the '
      'official one fine-tuned with the same recipe).', ablation_table(arms),
      comparisons_table(arms, 'ablation'),
      '**Baselines**: the dense network and what a user would pick instead '
      '(Torch-Pruning at the same FLOPs rate, its kept channels carried '
      'over), fine-tuned with the same recipe and seeds.',
      baselines_table(arms), comparisons_table(arms, 'baselines'),
      'Comparisons: a - b is the difference of the arms\' mean accuracies; '
      'the interval and p come from Welch\'s t-test over the seeds, p '
      'Holm-corrected over the comparisons of one table; "holds": the '
      'paper\'s direction at corrected p < 0.05, "reversed": the opposite, '
      '"not resolved": neither, with the difference these seeds would '
      'detect with 80% power.',
      '**Every arm** (`l1_uniform`, `per_channel`, `dense`, `tp_*` are not '
      'in the poster; "before": the searched network on the test set, '
      'per-batch BN; "after": one epoch of fine-tuning; a `-` phase did not '
      'run for the arm, and an arm built on another shows the seconds of '
      'the pieces it copied; seconds include the pauses and shared cores '
      'of the run log above).', arms_table(arms),
      '**Variants** (ours, not in the poster): the greedy search against a '
      'uniform allocation of the same L1 scores (both fine-tuned '
      'without knowledge), and the per-channel marking cost '
      'against the reference marking (both with ensemble knowledge).',
      comparisons_table(arms, 'variants'), reproducibility(arms),
      '**Landscape with error bars**: each network of the feasibility '
      'table and the search-teacher ablation measured again with Lanczos '
      'run until lambda_min settles (at most 150 steps; stopped when it '
      'moved by at most 0.1% of itself in each of two steps running), '
      'from three start vectors on the search\'s validation images and '
      'from the first on two disjoint 320-image subsets of train images '
      'the search never saw; mean +- std over these repeats.',
      figure.landscape_table(arms, LANDSCAPE_NETS),
      f'![landscape vs accuracy](results/evidence/{os.path.basename(FIGURE)})'
      f"\n\nPlotted: {', '.join(f'`{a}`' for a in plotted) or 'none yet'}. "
      + figure.correlations(arms, plotted, accuracy), code_commits(arms),
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
  main(quiet='--quiet' in sys.argv[1:])
