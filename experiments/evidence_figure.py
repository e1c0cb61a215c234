"""The evidence report's figure and rank correlations: each searched
network's loss-landscape measures against its mean accuracy after
fine-tuning (`accuracy(arms, arm)` gives an `evidence_stats.Spread`)."""

from __future__ import annotations

import evidence_stats as st  # experiments/, beside this file


def one_view_no_knowledge(summary: dict) -> bool:
  """The recipe of the paper's feasibility comparison (fine-tuning without
  knowledge, one view)."""
  finetune = summary.get('finetune', {})
  return (finetune.get('knowledge') == 'none'
          and finetune.get('views', 1) == 1)


def plotted_arms(arms: dict, order, accuracy) -> list[str]:
  return sorted(a for a in order
                if 'landscape' in arms[a] and accuracy(arms, a)
                and one_view_no_knowledge(arms[a]))


def correlations(arms: dict, plotted: list, accuracy) -> str:
  """Does a flatter searched network fine-tune better? The rank
  correlation of each measure with the arm's mean accuracy after
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
    x = [arms[a][phase][key] for a in names]
    rho = st.spearman(x, mean)
    cells.append(f'{label} {rho:+.2f} (p {st.spearman_p(x, mean):.2f})'
                 if rho == rho else f'{label} n/a')
  return (f'Rank correlation (Spearman, exact permutation p) with the mean '
          f'accuracy after fine-tuning, across the {len(names)} greedy '
          'searches plotted: ' + ', '.join(cells) + '.')


def plot(arms: dict, plotted: list, accuracy, path: str) -> None:
  """Each searched network's landscape measures against its mean test
  accuracy (error bars: the standard deviation over seeds) after
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
        x, spread = arms[name]['landscape'][key], accuracy(arms, name)
        ax.errorbar(x, spread.mean, yerr=spread.std if spread.n > 1 else 0,
                    fmt='o', capsize=3)
        ax.annotate(f'{name} (n={spread.n})', (x, spread.mean),
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
