"""The evidence report's landscape table, figure and rank correlations:
each searched network's loss-landscape measures (with their spread over
repeats) against its mean accuracy after fine-tuning (`accuracy(arms,
arm)` gives an `evidence_stats.Spread`)."""

from __future__ import annotations

import evidence_stats as st  # experiments/, beside this file


def repeats(arms: dict, net: str) -> list[dict]:
  """The landscape records of `net`'s repeats (`<net>_landscape_<name>`:
  Lanczos to convergence, other start vectors, held-out subsets)."""
  return [s['landscape'] for name, s in sorted(arms.items())
          if name.startswith(f'{net}_landscape_') and 'landscape' in s]


def measure(arms: dict, net: str, key: str) -> st.Spread:
  """A landscape measure of `net` over its repeats; before they exist, the
  one 20-step measurement of the search's piece."""
  done = repeats(arms, net)
  values = [r[key] for r in done] or [arms[net]['landscape'][key]]
  return st.Spread(tuple(values))


def landscape_table(arms: dict, nets) -> str:
  """Each network's measures as mean +- std over its repeats (n), beside
  the first 20-step measurement."""
  keys = [('lambda_max', '{:.1f}'), ('lambda_min', '{:.2f}'),
          ('condition', '{:.4f}'), ('trace', '{:.0f}')]
  lines = ['| network | ' + ' | '.join(f'{k}, repeats' for k, _ in keys)
           + ' | Lanczos steps | first measurement (20 steps): '
           'lambda_min / condition |', '|---' * (len(keys) + 3) + '|']
  for net in nets:
    done = repeats(arms, net)
    first = arms.get(net, {}).get('landscape')
    cells = []
    for key, fmt in keys:
      values = [r[key] for r in done]
      spread = st.Spread(tuple(values)) if values else None
      cells.append('not run yet' if not spread else
                   fmt.format(spread.mean) + (
                       f' +- {fmt.format(spread.std)}' if spread.n > 1
                       else '') + f' (n={spread.n})')
    steps = ', '.join(str(r.get('lanczos_steps', '?')) for r in done) or '-'
    before = (f"{first.get('lambda_min', float('nan')):.2f} / "
              f"{first['condition']:.4f}" if first else 'not run yet')
    lines.append(f'| `{net}` | ' + ' | '.join(cells)
                 + f' | {steps} | {before} |')
  return '\n'.join(lines)


def one_view_no_knowledge(summary: dict) -> bool:
  """The recipe of the paper's feasibility comparison (fine-tuning without
  knowledge, one view)."""
  finetune = summary.get('finetune', {})
  return (finetune.get('knowledge') == 'none'
          and finetune.get('views', 1) == 1)


def plotted_arms(arms: dict, order, accuracy) -> list[str]:
  """One point per searched network: an arm built on another's search
  (`study.base`, e.g. `ekg_rerun`) is the same network again, and a second
  point for it would count that network twice in the correlations."""
  return sorted(a for a in order
                if 'landscape' in arms[a] and accuracy(arms, a)
                and one_view_no_knowledge(arms[a])
                and not arms[a].get('study', {}).get('base'))


def correlations(arms: dict, plotted: list, accuracy) -> str:
  """Does a flatter searched network fine-tune better? The rank
  correlation of each measure (its mean over the landscape repeats) with
  the arm's mean accuracy after
  fine-tuning, across the plotted greedy searches (the uniform allocation
  is another kind of network), with its exact permutation p-value. The
  paper's claim predicts negative values."""
  names = [a for a in plotted if a != 'l1_uniform']
  if len(names) < 3:
    return ''
  mean = [accuracy(arms, a).mean for a in names]
  measures = [('search', 'val_loss', 'search CE'),
              ('landscape', 'condition', 'condition'),
              ('landscape', 'lambda_max', 'lambda_max'),
              ('landscape', 'trace', 'trace')]
  cells = []
  for phase, key, label in measures:
    x = [arms[a][phase][key] if phase == 'search'
         else measure(arms, a, key).mean for a in names]
    rho = st.spearman(x, mean)
    cells.append(f'{label} {rho:+.2f} (p {st.spearman_p(x, mean):.2f})'
                 if rho == rho else f'{label} n/a')
  return (f'Rank correlation (Spearman, exact permutation p) with the mean '
          f'accuracy after fine-tuning, across the {len(names)} greedy '
          'searches plotted: ' + ', '.join(cells) + '.')


def plot(arms: dict, plotted: list, accuracy, path: str) -> None:
  """Each searched network's landscape measures (mean over repeats)
  against its mean test accuracy (error bars: standard deviations over
  the repeats and over seeds) after
  fine-tuning without knowledge (the arms the paper's feasibility figure
  compares; knowledge would mix in a second effect)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  # Row 2: the greedy searches alone, whose points row 1 squeezes together
  # beside the uniform allocation's.
  rows = [plotted, [n for n in plotted if n != 'l1_uniform']]
  fig, axes = plt.subplots(2, 3, figsize=(13, 8), squeeze=False)
  measures = [('condition', 'abs(lambda_min / lambda_max)'),
              ('lambda_max', 'lambda_max'), ('trace', 'Hessian trace')]
  for row, subset in zip(axes, rows):
    for ax, (key, label) in zip(row, measures):
      for name in subset:
        x, spread = measure(arms, name, key), accuracy(arms, name)
        ax.errorbar(x.mean, spread.mean,
                    xerr=x.std if x.n > 1 else 0,
                    yerr=spread.std if spread.n > 1 else 0,
                    fmt='o', capsize=3,
                    color=f'C{plotted.index(name) % 10}')  # same in rows
        ax.annotate(f'{name} (n={spread.n})', (x.mean, spread.mean),
                    textcoords='offset points', xytext=(4, 4), fontsize=8)
      ax.set_xlabel(label)
      ax.set_ylabel('test accuracy after 1 epoch, % (mean +- std)')
      ax.grid(alpha=0.3)
  fig.suptitle('ResNet-56 / CIFAR-10 sub-networks at FLOPs rate 0.45: '
               'landscape of the searched network vs accuracy\n(row 2: '
               'the greedy searches alone)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
