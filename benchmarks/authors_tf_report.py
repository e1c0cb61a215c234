"""The results of benchmarks/authors_tf.py: repetitions appended to a
results file, their summary (medians, TF / ekg_jax ratios), the fidelity
of the two sides' choices, the markdown table and the per-step figure."""

from __future__ import annotations

import json
import os

from report import _fmt  # benchmarks/, beside this file
from workers import stats


def appended(path: str, results: dict, parser) -> tuple[list, list]:
  """The runs and commands of the results file at `path`, to which this
  run adds repetitions: refused unless it matches `results` in everything
  but the repetitions (each repetition pairs both sides on one machine, so
  repetitions from two sessions of the same CPU model combine)."""
  if not os.path.exists(path):
    parser.error(f'--append: no results file {path} to add to')
  with open(path) as f:
    before = json.load(f)
  for key in ('versions', 'authors', 'weights_sha256'):
    if before.get(key) != results[key]:
      parser.error(f'--append: {path} has {key} {before.get(key)!r}, this '
                   f'run {results[key]!r}: start a new file instead')
  if before['machine']['cpu'] != results['machine']['cpu'] or \
      before['options']['steps'] != results['options']['steps']:
    parser.error(f'--append: {path} was made on {before["machine"]["cpu"]} '
                 f'with steps={before["options"]["steps"]}: start a new file')
  return before['runs'], before.get('commands', [before.get('command')]) + \
      results['commands']


def fidelity(reps: list) -> dict:
  """Both sides' choices per step, and whether they agree in every run."""
  def key(c):
    return (c['gate'], c['kept'], c['candidates'])
  def agreeing(r):  # steps, from the first, where both chose alike
    pairs = list(zip(map(key, r['tf']['choices']),
                     map(key, r['jax']['choices'])))
    return next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
  same = all(list(map(key, r['tf']['choices'])) ==
             list(map(key, r['jax']['choices'])) for r in reps)
  # Losses compared while the sides evaluate the same sub-networks.
  diffs = [abs(a['val_loss'] - b['val_loss']) for r in reps
           for a, b in list(zip(r['tf']['choices'],
                                r['jax']['choices']))[:agreeing(r)]]
  return {'same_gates_kept_candidates': same,
          'agreeing_steps': [agreeing(r) for r in reps],
          'max_abs_val_loss_diff': max(diffs, default=0.0),
          'tf': reps[0]['tf']['choices'], 'jax': reps[0]['jax']['choices']}


def summarize(reps: list) -> dict:
  keys = ('startup_s', 'step_s', 'e2e_s', 'warmup_done', 'steps')
  out = {s: {k: stats([r[s][k] for r in reps]) for k in keys}
         for s in ('tf', 'jax')}
  out['ratio_tf_over_jax'] = {k: stats([r['tf'][k] / r['jax'][k]
                                        for r in reps]) for k in keys}
  out['tf']['data_done'] = stats([r['tf']['data_done'] for r in reps])
  return out


def markdown(results: dict) -> str:
  o, v, s = results['options'], results['versions'], results['summary']
  whole = o['steps'] == 'all'
  steps = ('steps 2 to the end' if whole else
           f"steps 2-{o['steps']}" if o['steps'] > 2 else 'step 2')
  scope = (f"whole searches to FLOPs rate {o['target']}" if whole
           else f"first {o['steps']} steps")
  dates = [r['date'] for r in results['runs'] if 'date' in r]
  lines = ['Made by ' + ', then '.join(
               f'`{c}`' for c in results.get('commands',
                                             [results.get('command')]))
           + (f" (repetitions started {', '.join(dates)})" if dates else ''),
           '',
           f"Machine: {results['machine']['cpu']}, "
           f"{results['machine']['cpus']} cores. The authors' code "
           f"({results['authors']}) on TensorFlow {v['tensorflow']} "
           f"(tf-keras {v['tf_keras']}) against ekg_jax on JAX {v['jax']} "
           f"with a cold cache; the ResNet-56 / CIFAR-10 search from the "
           f"official weights, {scope}; medians (min-max) "
           f"over {o['reps']} repetition{'s' * (o['reps'] > 1)}, sides "
           'alternating.', '',
           "| seconds | authors' TF | ekg_jax | TF / ekg_jax |",
           '|---|---|---|---|']
  rows = [('start-up (launch to step 1, less one step)', 'startup_s'),
          (f'per search step ({steps})', 'step_s'),
          ('end to end (launch to the end of the search)' if whole else
           f"end to end (launch to step {o['steps']})", 'e2e_s'),
          ('launch to end of warm-up', 'warmup_done')]
  if whole:
    rows.append(('search steps to the target', 'steps'))
  for label, k in rows:
    digits = 0 if k == 'steps' else 1
    lines.append(f"| {label} | {_fmt(s['tf'][k], digits)} | "
                 f"{_fmt(s['jax'][k], digits)} | "
                 f"{_fmt(s['ratio_tf_over_jax'][k], 2)}x |")
  lines += ['', "Of the authors' start-up, launch to their datasets built: "
            f"{_fmt(s['tf']['data_done'])} s (imports, then reading and "
            'decoding all 60,000 CIFAR-10 images from the TFDS copy, the '
            "patch's loader; their original one unpickles a downloaded copy)."]
  f = results['fidelity']
  chosen = ', '.join(f"{c['gate']} -> {c['kept']}" for c in f['jax'])
  same = 'the same' if f['same_gates_kept_candidates'] else 'NOT the same'
  if whole:
    lines += ['', 'Fidelity: the sides chose the same gate, kept channels '
              'and candidate count for the first '
              f"{', '.join(map(str, f['agreeing_steps']))} steps (per "
              'repetition), then parted; there validation CE differs by at '
              f"most {f['max_abs_val_loss_diff']:.4f} (theirs x 512/320). "
              'Per-step times and step counts are each side\'s own search '
              'from there on; the figure beside this table plots them.', '']
    return '\n'.join(lines)
  lines += ['', f'Fidelity: {same} gates, kept channels and candidate '
            f'counts at every step of every repetition (ekg_jax: {chosen}); '
            'validation CE differs by at most '
            f"{f['max_abs_val_loss_diff']:.4f} (theirs x 512/320).", '']
  return '\n'.join(lines)


def figure(results: dict, path: str) -> None:
  """Seconds per step against step, each side, every repetition."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for side, label, color in (('tf', "authors' TF", 'tab:red'),
                             ('jax', 'ekg_jax', 'tab:blue')):
    for i, run in enumerate(results['runs']):
      t = run[side]['step_times']
      ax.plot(range(2, len(t) + 1), [b - a for a, b in zip(t, t[1:])],
              color=color, alpha=0.8, lw=1,
              label=label if i == 0 else None)
  ax.set(xlabel='search step', ylabel='seconds per step', ylim=(0, None),
         title='ResNet-56 search to FLOPs rate '
         f"{results['options']['target']}, side by side")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
