"""VGG-16 (a family added through the model registry alone) end to end."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10
from ekg_jax.files import checkpoint


@needs_cifar10
@pytest.mark.slow  # ~90 s on 2 CPU cores
def test_vgg16_searches_slims_and_finetunes(tmp_path):
  """configs/vgg16_cifar.py on a CIFAR-10 slice, random weights: a few EKG
  search steps (CPU default: the `prefix` path over VGG's segments), the
  slimmed network, one short fine-tuning epoch."""
  result = subprocess.run(
      [sys.executable, '-m', 'ekg_jax.main', '--config=configs/vgg16_cifar.py',
       f'--workdir={tmp_path}', '--config.quiet=True',
       '--config.phases=search,finetune',
       '--config.data.train_split=train[:320]',
       '--config.data.test_split=test[:100]',
       f'--config.data.data_dir={TFDS_DIR}',
       # 40 validation images in one batch; no warm-up pass.
       '--config.data.val_per_class=4', '--config.search.batch_size=40',
       '--config.search.warmup=False',
       # Big steps to a near target: a few steps, not dozens.
       '--config.search.step=0.5', '--config.search.target_flops_rate=0.95',
       '--config.finetune.epochs=1', '--config.finetune.batch_size=64',
       '--config.finetune.knowledge=none'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  search = summary['search']
  assert search['steps'] >= 1 and search['flops_rate'] <= 0.95
  kept = search['kept_channels']
  assert set(kept) == {*(f'conv{i}' for i in range(13)), 'fc1'}
  # The fine-tuned network is the slimmed one: the search's FLOPs (the
  # finetune phase also checks this) and the kept widths in its checkpoint.
  final = summary['final']
  assert (final['flops'], final['params']) == (search['flops'],
                                                search['params'])
  widths = dict(checkpoint.read_model_config(
      summary['finetune']['checkpoint'])['widths'])
  assert {g: widths.get(g) for g in kept} == kept
  assert summary['finetune']['epochs'] == 1
  assert 0.0 <= final['test_accuracy'] <= 100.0
