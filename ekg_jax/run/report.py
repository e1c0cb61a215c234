"""report.md and its plots: the numbers of a run for a person to read."""

from __future__ import annotations

import json
import os
from typing import Mapping

from ekg_jax.run import plots

REPORT = 'report.md'


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _row(*cells) -> str:
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def _fmt(value, digits=4):
  if isinstance(value, float):
    return f'{value:.{digits}g}'
  return f'{value:,}' if isinstance(value, int) else str(value)


# What the terminal's line per phase and the report's table show of each
# summary entry; the whole record stays in summary.json.
FIELDS = {
    'pretrain': ('test_accuracy', 'epochs', 'images_per_second', 'seconds'),
    'base': ('test_accuracy', 'flops', 'params', 'seconds'),
    'search': ('flops_rate', 'flops', 'params', 'steps', 'val_loss',
               'seconds'),
    'landscape': ('lambda_max', 'trace', 'condition',
                  'test_accuracy_batch_bn', 'seconds'),
    'memory_bank': ('teachers', 'bytes', 'dtype', 'seconds'),
    'finetune': ('test_accuracy', 'epochs', 'knowledge', 'images_per_second',
                 'seconds'),
    'final': ('test_accuracy', 'flops', 'params', 'flops_reduction'),
    'export': ('program', 'seconds'),
}


def phase_cells(record: Mapping, key: str) -> str:
  """One summary entry as `name value, ...` (FIELDS' names only)."""
  return ', '.join(f'{n} {_fmt(record[n])}' for n in FIELDS.get(key, ())
                   if n in record)


def results_table(summary: Mapping) -> list[tuple[str, str]]:
  """(phase, result) rows of the entries `summary` holds, in FIELDS' order."""
  return [(key, phase_cells(summary[key], key)) for key in FIELDS
          if key in summary]


def terminal_table(summary: Mapping) -> str:
  """The results table as aligned plain text, for the end of a run."""
  rows = [('phase', 'result')] + results_table(summary)
  width = max(len(phase) for phase, _ in rows)
  return '\n'.join(f'{phase:<{width}}  {cells}' for phase, cells in rows)


def write_report(workdir: str, summary: Mapping, gates: Mapping) -> str:
  """Writes workdir/report.md (and the plots it shows) from `summary`, the
  phases' metrics files and the gate widths; returns the path."""
  lines = ['# EKG run report', '',
           f'Workdir: `{os.path.abspath(workdir)}`', '']
  table = [_row('phase', 'result'), _row('---', '---')]
  table += [_row(phase, cells) for phase, cells in results_table(summary)]
  lines += table + ['']

  curves = {phase: _read_jsonl(os.path.join(workdir, phase, 'metrics.jsonl'))
            for phase in ('pretrain', 'finetune')}
  curves = {k: v for k, v in curves.items() if v}
  if curves:
    plots.training_plot(os.path.join(workdir, 'training.png'), curves)
    lines += ['## Training', '', '![training](training.png)', '']

  if 'search' in summary:
    kept = summary['search']['kept_channels']
    channels = {g: spec.channels for g, spec in gates.items()}
    plots.kept_channels_plot(os.path.join(workdir, 'kept_channels.png'),
                             channels, kept)
    lines += ['## Search', '']
    if os.path.exists(os.path.join(workdir, 'search', 'search.png')):
      lines += ['![search](search/search.png)', '']
    lines += ['![kept channels](kept_channels.png)', '',
              _row('gate', 'dense', 'kept', 'kept fraction'),
              _row('---', '---:', '---:', '---:')]
    lines += [_row(g, channels[g], kept[g], f'{kept[g] / channels[g]:.2f}')
              for g in channels if g in kept]
    lines.append('')
  path = os.path.join(workdir, REPORT)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write('\n'.join(lines))
  os.replace(tmp, path)
  return path
