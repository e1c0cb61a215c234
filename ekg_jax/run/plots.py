"""PNG plots of what a person would rather look at than JSON."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def search_plot(path: str, history: Sequence[Mapping],
                channels: Mapping[str, int], target: float) -> None:
  """FLOPs rate and objective per step; kept fraction per gate at the end."""
  steps = [e['step'] for e in history]
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.2),
                           gridspec_kw={'width_ratios': [1, 1, 1.6]})
  ax = axes[0]
  ax.plot(steps, [e['flops_rate'] for e in history], marker='.')
  ax.axhline(target, color='grey', ls='--', label=f'target {target}')
  ax.set(xlabel='search step', ylabel='FLOPs rate', title='FLOPs rate')
  ax.legend()
  ax = axes[1]
  ax.plot(steps, [e['objective'] for e in history], marker='.',
          label='objective (CE + teacher CE)')
  ax.plot(steps, [e['val_loss'] for e in history], marker='.',
          label='validation CE')
  ax.set(xlabel='search step', title='chosen candidate')
  ax.legend()
  ax = axes[2]
  final = history[-1]['kept']
  names = list(channels)
  ax.bar(range(len(names)), [final[g] / channels[g] for g in names])
  ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
  ax.set(ylim=(0, 1.05), ylabel='kept fraction', title='kept channels')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def kept_channels_plot(path: str, channels: Mapping[str, int],
                       kept: Mapping[str, int]) -> None:
  """Dense vs pruned width of every gate, as bars."""
  names = list(channels)
  x = range(len(names))
  fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * len(names) + 2), 4.2))
  ax.bar(x, [channels[g] for g in names], color='#c8d3e0', label='dense')
  ax.bar(x, [kept[g] for g in names], color='#2f6db3', label='kept')
  ax.set_xticks(x, names, rotation=90, fontsize=7)
  ax.set(ylabel='channels', title='channels per gate')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def training_plot(path: str, curves: Mapping[str, Sequence[Mapping]]) -> None:
  """Train loss and test accuracy per epoch, one line per phase."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for phase, history in curves.items():
    epochs = [e['epoch'] for e in history]
    axes[0].plot(epochs, [e['train_loss'] for e in history], marker='.',
                 label=phase)
    axes[1].plot(epochs, [e['test_accuracy'] for e in history], marker='.',
                 label=phase)
  axes[0].set(xlabel='epoch', ylabel='train loss', title='train loss')
  axes[1].set(xlabel='epoch', ylabel='test accuracy (%)',
              title='test accuracy')
  for ax in axes:
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
