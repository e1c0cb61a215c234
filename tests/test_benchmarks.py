"""The benchmark suite's smoke run: every section end to end at tiny sizes,
with the PyTorch reference checked to compute the toolkit's function."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, needs_cifar10

TORCH_PYTHON = REPO / '.venv-torch' / 'bin' / 'python'
SECTIONS = ('train', 'conv_kernels', 'ablation', 'profile', 'search_step',
            'search_e2e', 'inference', 'memory_bank', 'memory')


@pytest.mark.slow
@needs_cifar10
def test_quick_benchmark_runs_every_section(tmp_path):
  if os.environ.get('CI') and not TORCH_PYTHON.exists():
    pytest.fail('CI builds the PyTorch virtualenv first (make torch-venv)')
  subprocess.run([sys.executable, 'benchmarks/run.py', '--quick',
                  f'--out-dir={tmp_path}', '--machine=smoke'], cwd=REPO,
                 check=True, timeout=900)
  results = json.loads((tmp_path / 'smoke.json').read_text())
  assert set(SECTIONS) <= set(results)
  sides = {'jax', 'jax_before'} | ({'torch_eager'} if TORCH_PYTHON.exists()
                                   else set())
  for kind in ('finetune', 'dense'):
    assert set(results['train'][kind]['sides']) == sides
    assert not results['train'][kind]['errors']
  if TORCH_PYTHON.exists():
    check = results['train']['finetune']['same_function']
    assert check['max_abs_logit_diff'] <= 1e-4 * max(1.0,
                                                     check['max_abs_logit'])
    assert check['loss_torch'] == pytest.approx(check['loss_jax'], rel=1e-4)
  assert results['search_step']['variants']['jax'][
      'recompiles_while_timed'] == 0
  e2e = results['search_e2e']
  assert e2e['compiles_after_step_1'] == 0
  assert e2e['flops_rate'] <= results['options']['target']
  inference = results['inference']
  assert inference['macs']['slimmed'] < inference['macs']['dense']
  table = (tmp_path / 'smoke.md').read_text()
  for heading in ('Training step', 'One 3x3 conv', 'one at a time',
                  'Profile', 'Search step',
                  'End-to-end search', 'Inference', 'Memory bank',
                  'Peak memory'):
    assert heading in table


@pytest.mark.slow
def test_speedup_benchmark_runs_every_path(tmp_path):
  """benchmarks/speedup.py --quick: every deployment path times the dense
  and both slimmed networks, and the slimmed ones have fewer MACs."""
  onnx_python = REPO / '.venv-onnx' / 'bin' / 'python'
  if os.environ.get('CI') and not (TORCH_PYTHON.exists()
                                   and onnx_python.exists()):
    pytest.fail('CI builds both virtualenvs first (make torch-venv '
                'onnx-venv)')
  subprocess.run([sys.executable, 'benchmarks/speedup.py', '--quick',
                  f'--out-dir={tmp_path}', '--machine=smoke'], cwd=REPO,
                 check=True, timeout=900)
  results = json.loads((tmp_path / 'speedup-smoke.json').read_text())
  want = {'xla', 'xla_ynnpack', 'xla_1thread'} | (
      {'torch'} if TORCH_PYTHON.exists() else set()) | (
          {'onnxruntime'} if onnx_python.exists() else set())
  assert set(results['latency']) == want
  macs = results['macs']
  assert macs['round_to_1'] < macs['dense'] and macs['round_to_8'] < macs[
      'dense']
  for side in want:
    assert set(results['latency'][side]['1']) >= {
        'dense', 'round_to_1', 'round_to_8', 'round_to_8_speedup'}
  assert 'Narrow convolutions' in (tmp_path / 'speedup-smoke.md').read_text()
