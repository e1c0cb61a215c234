"""experiments/evidence_report.py: the study's tables are made from the
committed summaries, and the README shows what the script makes."""

import importlib.util
import json
import sys

from conftest import REPO


def _module():
  if str(REPO / 'experiments') not in sys.path:  # its sibling modules
    sys.path.insert(0, str(REPO / 'experiments'))
  spec = importlib.util.spec_from_file_location(
      'evidence_report', REPO / 'experiments' / 'evidence_report.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _summary(val_loss, condition, accuracy, knowledge='none'):
  return {'search': {'val_loss': val_loss, 'flops_rate': 0.449,
                     'params': 600000, 'seconds': 720.0},
          'landscape': {'condition': condition, 'lambda_max': 300.0,
                        'trace': 7000.0, 'test_accuracy_batch_bn': 75.0,
                        'seconds': 600.0},
          'finetune': {'knowledge': knowledge, 'seconds': 1800.0},
          'final': {'test_accuracy': accuracy},
          'study': {'date': '2026-11-26', 'wall_seconds': {},
                    'what': f'a {knowledge} arm',
                    'commands': {'finetune': f'-m ekg_jax.main --k={knowledge}'}}}


def test_tables_and_figure_from_summaries(tmp_path, monkeypatch):
  from scipy import stats
  module = _module()
  results = tmp_path / 'evidence'
  for arm, summary in {'l1': _summary(0.6934, 0.0758, 87.23),
                       'l1_seed1': _summary(0.6934, 0.0758, 87.63),
                       'ekg_ft_ensemble': _summary(0.61, 0.0618, 88.16,
                                                   'ensemble'),
                       'ekg': _summary(0.61, 0.0618, 87.0),
                       'ekg_seed2': _summary(0.61, 0.0618, 88.0),
                       # No search: its own masks (the dense network).
                       'dense': {k: v for k, v in _summary(
                           0, 0, 89.4).items() if k not in (
                               'search', 'landscape')},
                       # Two landscape repeats of the ekg network.
                       'ekg_landscape_converged': {'landscape': {
                           'condition': 0.05, 'lambda_max': 280.0,
                           'lambda_min': -14.0, 'trace': 7100.0,
                           'lanczos_steps': 61}},
                       'ekg_landscape_start1': {'landscape': {
                           'condition': 0.07, 'lambda_max': 300.0,
                           'lambda_min': -21.0, 'trace': 6900.0,
                           'lanczos_steps': 58}}}.items():
    (results / arm).mkdir(parents=True)
    (results / arm / 'summary.json').write_text(json.dumps(summary))
  readme = tmp_path / 'README.md'
  readme.write_text(f'before\n{module.MARKERS[0]}\nOLD-BLOCK\n{module.MARKERS[1]}\n'
                    'after\n')
  monkeypatch.setattr(module, 'RESULTS', str(results))
  monkeypatch.setattr(module, 'README', str(readme))
  monkeypatch.setattr(module, 'FIGURE', str(tmp_path / 'figure.png'))
  module.main()
  text = readme.read_text()
  assert text.startswith('before\n') and text.endswith('after\n')
  assert 'OLD-BLOCK' not in text
  # L1's column: ours (mean +- std over its two seeds) beside the poster's;
  # FPGM's arm has not run.
  assert '0.0758 (paper 0.4078)' in text
  assert '87.43 +- 0.28 (n=2) (paper 93.57)' in text
  assert 'not run yet (paper 0.1461)' in text
  # ensemble / ensemble row: accuracy (one seed) and search / fine-tune hours.
  assert ('| `ekg_ft_ensemble` | 94.09 (+-0.07) | 88.16 (n=1) | 0.20 / 0.50 |'
          in text)
  # The poster's baseline row: the unpruned network, which never searches.
  assert ('| - (unpruned) | none, two views | `dense` | 93.84 | 89.40 (n=1) | '
          '- / 0.50 |') in text
  # Every arm's row: its measures, accuracy by seed, each phase's seconds.
  assert ('| `l1` | a none arm | 0.4490 | 600,000 | 0.6934 | 300.0 | 0.0758 | '
          '7000 | 75.00 | 0: 87.23, 1: 87.63 | 720 / 600 / - / 1800 |') in text
  assert '| `per_channel` | not run yet |' in text
  # A finished arm without a search never runs one: '-', not "not run yet".
  assert ('| `dense` | a none arm | ' + '- | ' * 7
          + '0: 89.40 | - / - / - / 1800 |') in text
  assert '# l1: finetune\npython -m ekg_jax.main --k=none\n' in text
  # EKG (seeds 0, 2) vs L1 (0, 1): Welch's test as scipy computes it; the
  # only tested comparison of its table, so Holm leaves its p as it is.
  p = stats.ttest_ind([87.0, 88.0], [87.23, 87.63], equal_var=False).pvalue
  assert ('| 2/2 | +0.07 | ' in text and
          f'| {p:.3f} | {p:.3f} | not resolved (seeds detect about' in text)
  assert '| EKG vs FPGM scores (`ekg` vs `fpgm`) | a > b | 2/0 | needs 2 ' in text
  # Our own variants have their own table, with no claim of the paper's.
  assert ('| greedy search vs uniform allocation, L1 scores (`l1` vs '
          '`l1_uniform`) | no claim | 2/0 | needs 2 seeds each') in text
  # The landscape over its repeats: mean +- sample std (n).
  assert ('| `ekg` | 290.0 +- 14.1 (n=2) | -17.50 +- 4.95 (n=2) | 0.0600 +- '
          '0.0141 (n=2) | 7000 +- 141 (n=2) | 61, 58 |') in text
  assert '| `fpgm` | not run yet |' in text
  # Only arms fine-tuned without knowledge (one view) go in the figure.
  assert 'Plotted: `ekg`, `l1`.' in text
  assert (tmp_path / 'figure.png').stat().st_size > 0


def test_readme_block_is_what_the_script_makes(tmp_path, monkeypatch):
  module = _module()
  committed = (REPO / 'experiments' / 'README.md').read_text()
  readme = tmp_path / 'README.md'
  readme.write_text(committed)
  monkeypatch.setattr(module, 'README', str(readme))
  monkeypatch.setattr(module, 'FIGURE', str(tmp_path / 'landscape_vs_accuracy.png'))
  module.main()
  assert readme.read_text() == committed


def _stats():
  _module()
  import evidence_figure, evidence_stats
  return evidence_figure, evidence_stats


def test_rank_correlations_of_the_landscape_with_accuracy():
  module = _module()
  figure, st = _stats()
  assert st.spearman([1, 2, 3], [30, 20, 10]) == -1.0
  # Ties take their mean rank (scipy.stats.spearmanr gives 0.94868).
  assert abs(st.spearman([1, 2, 2, 3], [1, 2, 3, 4]) - 0.948683) < 1e-6
  # Exact permutation p: 2 of the 24 orderings reach |rho| = 1.
  assert st.spearman_p([1, 2, 3, 4], [5, 6, 7, 8]) == 2 / 24
  # Flatter (lower condition) and better: the paper's claim, -1; the
  # uniform allocation is left out of the greedy searches' correlation.
  arms = {'ekg': _summary(0.61, 0.05, 88.0), 'gbn': _summary(0.64, 0.07, 87.5),
          'l1': _summary(0.69, 0.09, 87.0),
          'l1_uniform': _summary(2.7, 0.01, 81.0)}
  line = figure.correlations(arms, sorted(arms), module.accuracy)
  assert 'across the 3 greedy searches' in line
  assert ('search CE -1.00 (p 0.33), condition -1.00 (p 0.33), lambda_max '
          'n/a') in line
  assert figure.correlations(arms, ['ekg', 'l1'], module.accuracy) == ''
  # A rerun of the `ekg` network's fine-tuning is that network again: one
  # point, not a second search.
  rerun = _summary(0.61, 0.05, 88.2)
  rerun['study']['base'] = 'ekg'
  plotted = figure.plotted_arms({**arms, 'ekg_rerun': rerun},
                                [*arms, 'ekg_rerun'], module.accuracy)
  assert plotted == ['ekg', 'gbn', 'l1', 'l1_uniform']


def test_welch_interval_and_holm_correction():
  from scipy import stats
  module = _module()
  _, st = _stats()
  assert (module._p(0.0123), module._p(0.0004)) == ('0.012', '< 0.001')
  a, b = st.Spread((87.1, 87.5, 87.4)), st.Spread((88.1, 87.9, 88.3, 88.0))
  d = st.welch(a, b)
  ref = stats.ttest_ind(a.values, b.values, equal_var=False)
  assert abs(d.p - ref.pvalue) < 1e-12 and abs(d.df - ref.df) < 1e-9
  ci = ref.confidence_interval(0.95)
  assert abs(d.low - ci.low) < 1e-9 and abs(d.high - ci.high) < 1e-9
  assert d.detectable > abs(d.high - d.low) / 2  # power 0.8 > 0.5
  assert st.welch(a, st.Spread((88.0,))) is None  # one seed: no test
  # Holm: sorted p times (m, m-1, ...), kept monotone, capped at 1.
  assert st.holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
  assert st.holm([0.5, 0.6]) == [1.0, 1.0]
