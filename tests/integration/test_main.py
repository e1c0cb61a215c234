"""The command line, end to end on small data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import OFFICIAL_RESNET56, REPO, TFDS_DIR, needs_cifar10, needs_official
from small import PIPELINE, check_search, run_cli
from ekg_jax import pipeline
from ekg_jax.data import datasets
from ekg_jax.run import validate
from ekg_jax.config import default_config


@needs_cifar10
@needs_official
def test_cli_evaluate_writes_summary(tmp_path):
  result = run_cli('--config=configs/resnet56_cifar.py',
                   f'--workdir={tmp_path}', '--config.phases=evaluate',
                   f'--config.init_checkpoint={OFFICIAL_RESNET56}',
                   '--config.data.test_split=test[:200]',
                   f'--config.data.data_dir={TFDS_DIR}', '--config.quiet=True')
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  base = summary['base']
  assert base['test_images'] == 200
  assert summary['weights'] == os.path.abspath(OFFICIAL_RESNET56)
  # The accuracy, recomputed here from the model's logits.
  import jax
  import numpy as np
  from ekg_jax.files import official
  from ekg_jax.config import REFERENCE_MEAN, REFERENCE_STD
  from ekg_jax.models import create_model
  model = create_model('resnet56')
  variables = official.load_official_pkl(
      str(OFFICIAL_RESNET56),
      jax.eval_shape(model.init, jax.random.key(0),
                     jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)))
  test = datasets.load_split('cifar10', 'test[:200]', TFDS_DIR)
  logits = model.apply(variables, datasets.normalize(
      test.images, REFERENCE_MEAN, REFERENCE_STD))
  hits = int((np.argmax(logits, -1) == test.labels).sum())
  assert base['test_accuracy'] == pytest.approx(100.0 * hits / 200)
  # ResNet-56 MACs: stem, 9 blocks per stage, projections, fc.
  assert base['flops'] == 125_747_840
  # The terminal gets a line per phase and the results table, not the JSON
  # (that stays in summary.json), and no library warning's source line.
  assert f"base: test_accuracy {base['test_accuracy']:.4g}" in result.stdout
  assert 'report: ' in result.stdout and '{' not in result.stdout
  assert 'Warning' not in result.stderr, result.stderr[-2000:]


@needs_cifar10
def test_cli_evaluate_without_weights_is_refused(tmp_path):
  result = run_cli('--config=configs/resnet20_cifar.py',
                   f'--workdir={tmp_path}', '--config.phases=evaluate',
                   f'--config.data.data_dir={TFDS_DIR}')
  assert result.returncode == 2
  assert 'would measure randomly initialised weights' in result.stderr
  assert not (tmp_path / 'summary.json').exists()


def test_cli_unknown_override_key_is_rejected(tmp_path):
  result = run_cli('--config=configs/resnet20_cifar.py',
                   f'--workdir={tmp_path}', '--config.search.nope=1')
  assert result.returncode != 0
  assert 'nope' in result.stderr


@pytest.mark.parametrize('key,value,match', [
    ('model.name', 'resnet57', "model.name='resnet57': allowed: mobilenet"),
    ('data.name', 'mnist', "data.name='mnist': allowed: cifar10"),
    ('phases', 'evaluate,dance', "unknown or empty phases \\['dance'\\]"),
    ('init_checkpoint', '/nonexistent.pkl', 'no such file'),
])
def test_bad_config_fails_before_compute(tmp_path, key, value, match):
  config = default_config()
  section, _, leaf = key.rpartition('.')
  (config[section] if section else config)[leaf] = value
  with pytest.raises(validate.ConfigError, match=match):
    pipeline.run(config, str(tmp_path))
  assert not (tmp_path / 'summary.json').exists()


@needs_official
def test_official_checkpoint_into_wrong_model(tmp_path):
  config = default_config()
  config.model.name = 'resnet20'
  config.init_checkpoint = str(OFFICIAL_RESNET56)
  with pytest.raises(Exception, match='unexpected keys'):
    pipeline.run(config, str(tmp_path))


# The train split and warm-up of PIPELINE below (one decoded split for
# both); a search's size does not matter to what these tests check.
SMALL_SEARCH = ['--config=configs/resnet20_cifar.py', '--config.quiet=True',
                '--config.data.train_split=train[:1000]',
                '--config.data.warmup_per_class=32',
                f'--config.data.data_dir={TFDS_DIR}']


# The defaults (EKG criterion, ensemble teacher, warm-up, 'auto'
# evaluation) are the search of test_resume.py's
# test_killed_finetune_resumes_to_the_same_parameters, checked there with
# check_search.
@pytest.mark.slow
@needs_cifar10
@pytest.mark.parametrize('extra', [
    ['--config.search.criterion=l1', '--config.search.allocation=uniform'],
    # The loop path compiles fastest; the others are tested equal to it.
    ['--config.search.teacher=none', '--config.search.warmup=False',
     '--config.search.evaluation=loop'],
])
def test_cli_search_variants_reach_target(tmp_path, extra):
  result = run_cli(*SMALL_SEARCH, f'--workdir={tmp_path}',
                   '--config.search.target_flops_rate=0.95',
                   '--config.phases=search', *extra)
  assert result.returncode == 0, result.stderr[-3000:]
  check_search(tmp_path, 0.95)




@needs_cifar10
def test_finetune_without_a_search_from_a_kept_channels_file_or_dense(
    tmp_path):
  """`finetune.masks` stands in for the search: a kept-channels file (as
  another tool's pruning is carried over) or 'dense'; no search phase, no
  memory bank (knowledge none), two views; FLOPs of the kept widths."""
  from ekg_jax.supernet import flops, gates, slimming
  from ekg_jax.models import create_model
  model = create_model('resnet20', num_classes=10)
  table = gates.layer_table(model, (32, 32, 3))
  specs = gates.gate_specs(table)
  kept = {'stage0/block1': [0, 3, 5], 'stage1': list(range(0, 32, 2))}
  masks = {g: np.isin(np.arange(specs[g].channels), i).astype(np.float32)
           for g, i in kept.items()}
  path = tmp_path / 'kept.json'
  slimming.write_kept_channels(str(path), masks)
  assert json.loads(path.read_text()) == kept
  for name, source, expected in [
      ('file', str(path), flops.count_flops(
          table, {g: len(i) for g, i in kept.items()})),
      ('dense', 'dense', flops.count_flops(table))]:
    workdir = tmp_path / name
    result = run_cli(*PIPELINE, f'--workdir={workdir}',
                     '--config.phases=finetune',
                     '--config.data.train_split=train[:256]',
                     '--config.data.test_split=test[:64]',
                     '--config.data.warmup_per_class=8',
                     '--config.finetune.batch_size=64',
                     '--config.finetune.knowledge=none',
                     '--config.finetune.views=2',
                     f'--config.finetune.masks={source}')
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / 'summary.json').read_text())
    assert 'search' not in summary
    assert summary['final']['flops'] == expected
    assert summary['finetune']['views'] == 2
    assert summary['finetune']['masks'] == source
  # A file naming a gate the model lacks: one line before any compute.
  path.write_text(json.dumps({'stage9': [0]}))
  result = run_cli(*PIPELINE, f'--workdir={tmp_path / "bad"}',
                   '--config.phases=finetune',
                   '--config.finetune.knowledge=none',
                   f'--config.finetune.masks={path}')
  assert result.returncode != 0
  assert 'unknown gates' in result.stderr and 'Traceback' not in result.stderr


def test_library_warnings_go_to_the_log_file_not_the_terminal(tmp_path):
  """A third-party Python warning (tqdm's quotes its source line) is a
  record of the log file; the toolkit's own warnings still reach the
  terminal."""
  script = f"""
import logging, warnings
from absl import app
from ekg_jax import main
def run(argv):
  main._setup_logging({str(tmp_path)!r}, verbose=False)
  warnings.warn_explicit('clamping frac to range [0, 1]', UserWarning,
                         'tqdm/std.py', 1, module='tqdm.std')
  logging.getLogger('ekg_jax.pipeline').warning('our own warning')
app.run(run, argv=['x', '--config=configs/quickstart.py', '--workdir=w'])
"""
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'clamping' not in result.stderr and 'our own warning' in result.stderr
  log = (tmp_path / 'log.txt').read_text()
  assert 'clamping frac' in log


@pytest.mark.slow
@needs_cifar10
def test_landscape_on_a_held_out_subset_until_lambda_min_settles(tmp_path):
  """The landscape's repeats: another start vector, train images the
  search never saw (subset 1), Lanczos stopped by its tolerance."""
  result = run_cli(*PIPELINE, f'--workdir={tmp_path}',
                   '--config.phases=search,landscape',
                   '--config.search.target_flops_rate=0.95',
                   '--config.data.val_per_class=16',
                   '--config.data.warmup_per_class=16',
                   '--config.search.batch_size=80',
                   '--config.landscape.subset=1', '--config.landscape.seed=1',
                   '--config.landscape.lanczos_iterations=8',
                   '--config.landscape.lanczos_tolerance=0.2',
                   '--config.landscape.trace_samples=2',
                   '--config.landscape.slice_points=3',
                   '--config.landscape.grid_points=2')
  assert result.returncode == 0, result.stderr[-3000:]
  s = json.loads((tmp_path / 'summary.json').read_text())['landscape']
  assert s['subset'] == 1 and s['seed'] == 1
  steps = s['lanczos_steps']
  assert 3 <= steps <= 8 and len(s['lambda_min_trajectory']) == steps
  assert s['lambda_min'] == pytest.approx(s['lambda_min_trajectory'][-1])
  # A subset the split cannot hold: one line before any compute.
  result = run_cli(*PIPELINE, f'--workdir={tmp_path / "big"}',
                   '--config.phases=search,landscape',
                   '--config.landscape.subset=3')
  assert result.returncode != 0
  assert 'config.landscape.subset=3: it needs' in result.stderr
  assert not (tmp_path / 'big' / 'search').exists()
