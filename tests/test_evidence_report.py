"""experiments/evidence_report.py: the study's tables are made from the
committed summaries, and the README shows what the script makes."""

import importlib.util
import json

from conftest import REPO


def _module():
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
  module = _module()
  results = tmp_path / 'evidence'
  for arm, summary in {'l1': _summary(0.6934, 0.0758, 87.23),
                       'ekg_ft_ensemble': _summary(0.61, 0.0618, 88.16,
                                                   'ensemble'),
                       'ekg': _summary(0.61, 0.0618, 87.0),
                       'ekg_seed2': _summary(0.61, 0.0618, 88.0)}.items():
    (results / arm).mkdir(parents=True)
    (results / arm / 'summary.json').write_text(json.dumps(summary))
  readme = tmp_path / 'README.md'
  readme.write_text(f'before\n{module.MARKERS[0]}\nold\n{module.MARKERS[1]}\n'
                    'after\n')
  monkeypatch.setattr(module, 'RESULTS', str(results))
  monkeypatch.setattr(module, 'README', str(readme))
  monkeypatch.setattr(module, 'FIGURE', str(tmp_path / 'figure.png'))
  module.main()
  text = readme.read_text()
  assert text.startswith('before\n') and text.endswith('after\n')
  assert 'old' not in text
  # L1's column: ours beside the poster's; FPGM's arm has not run.
  assert '0.0758 (paper 0.4078)' in text and '87.23 (paper 93.57)' in text
  assert 'not run yet (paper 0.1461)' in text
  # ensemble / ensemble row: accuracy and search / fine-tune hours.
  assert '| `ekg_ft_ensemble` | 94.09 (+-0.07) | 88.16 | 0.20 / 0.50 |' in text
  # Every arm's row: its measures and each phase's seconds (no bank here).
  assert ('| `l1` | a none arm | 0.4490 | 600,000 | 0.6934 | 300.0 | 0.0758 | '
          '7000 | 75.00 | 87.23 | 720 / 600 / - / 1800 |') in text
  assert '| `per_channel` | not run yet |' in text
  assert '# l1: finetune\npython -m ekg_jax.main --k=none\n' in text
  # Seeds 0 and 2 of the ekg network: mean 87.5, sample std 0.71.
  assert ('87.00, 88.00; mean 87.50%, sample standard deviation 0.71 '
          'points, range 1.00 (2 of 3 seeds run).') in text
  # Only arms fine-tuned without knowledge go in the figure, seeds as a
  # range on their network's point.
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


def test_rank_correlations_of_the_landscape_with_accuracy():
  module = _module()
  assert module.spearman([1, 2, 3], [30, 20, 10]) == -1.0
  # Ties take their mean rank (scipy.stats.spearmanr gives 0.94868).
  assert abs(module.spearman([1, 2, 2, 3], [1, 2, 3, 4]) - 0.948683) < 1e-6
  # Flatter (lower condition) and better: the paper's claim, -1; the
  # uniform allocation is left out of the greedy searches' correlation.
  arms = {'ekg': _summary(0.61, 0.05, 88.0), 'gbn': _summary(0.64, 0.07, 87.5),
          'l1': _summary(0.69, 0.09, 87.0),
          'l1_uniform': _summary(2.7, 0.01, 81.0)}
  line = module.correlations(arms, sorted(arms))
  assert 'across the 3 greedy searches' in line
  assert 'search CE -1.00, condition -1.00, lambda_max n/a' in line
  assert module.correlations(arms, ['ekg', 'l1']) == ''
