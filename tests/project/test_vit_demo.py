"""experiments/vit_demo.py: the `--tiny` smoke run end to end (pretrain,
EKG search + bank + fine-tuning, the uniform L1 arm, the speed-up workers,
the report), then a rerun that skips every finished stage. Its EKG arm is
the ViT's whole pipeline through the command line (configs/vit_cifar.py: a
tiny ViT on a CIFAR-10 slice, one epoch each: pretraining with AdamW, the
EKG search over heads and MLP units without warm-up, a memory bank of 2
teachers, fine-tuning the slimmed ViT with ensemble knowledge, export),
checked here too."""

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10
from ekg_jax.files import checkpoint


def run(workdir, out):
  return subprocess.run(
      [sys.executable, 'experiments/vit_demo.py', '--tiny',
       f'--workdir={workdir}', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=1500,
      env={**os.environ, 'TFDS_DATA_DIR': TFDS_DIR,
           'PYTHONPATH': str(REPO)})


@needs_cifar10
@pytest.mark.slow  # 2.5-3.5 minutes on 2 busy CPU cores
def test_tiny_demo_writes_a_consistent_report(tmp_path):
  workdir, out = tmp_path / 'work', tmp_path / 'results'
  result = run(workdir, out)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  summary = json.loads((out / 'summary.json').read_text())
  nets = summary['networks']
  assert list(nets) == ['dense', 'ekg', 'uniform_l1']
  assert summary['command'] == (f'python experiments/vit_demo.py --tiny '
                                f'--workdir={workdir} --out={out}')
  gates = {f'block{i}/{k}' for i in range(2) for k in ('heads', 'mlp')}
  for arm in ('ekg', 'uniform_l1'):
    r = nets[arm]
    assert r['flops_rate'] <= 0.5 + 1e-6
    assert r['flops'] <= 0.5 * nets['dense']['flops'] + 1
    assert r['params'] < nets['dense']['params']
    assert set(r['kept']) <= gates and r['kept']
    heads, mlp = summary['per_block'][arm]['heads'], summary['per_block'][
        arm]['mlp']
    assert all(1 <= h <= 2 for h in heads) and all(1 <= m <= 64 for m in mlp)
  assert nets['ekg']['knowledge'] == 'ensemble'
  assert (nets['uniform_l1']['knowledge'], nets['uniform_l1']['views']) == (
      'none', 2)
  # Uniform: one step, the same fraction of every gate.
  assert nets['uniform_l1']['search_steps'] == 1
  speed = summary['speedup']
  assert speed['sides'] and set(speed['sides']) <= {'xla', 'onnxruntime'}
  for side in speed['sides']:
    for b in ('1', '8'):
      e = speed['latency'][side][b]
      assert e['dense']['median'] > 0
      assert e['ekg_speedup']['median'] > 0
      assert e['uniform_l1_speedup']['median'] > 0
  table = (out / 'table.md').read_text().splitlines()
  rows = [line for line in table if line.startswith('| ')
          and not line.startswith('| network')]
  assert [r.split('|')[1].strip() for r in rows] == [
      'dense', 'EKG', 'uniform L1']
  assert (out / 'kept.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  check_the_ekg_arms_pipeline(workdir / 'ekg')
  # Rerun: every stage finished, so nothing runs again.
  again = run(workdir, out)
  assert again.returncode == 0, again.stderr[-3000:]
  for stage in ('pretrain', 'ekg', 'uniform_l1', 'speedup'):
    assert f'{stage}: finished before, skipped' in again.stdout


def check_the_ekg_arms_pipeline(workdir):
  summary = json.loads((workdir / 'summary.json').read_text())
  assert set(summary) >= {'pretrain', 'base', 'search', 'memory_bank',
                          'finetune', 'final', 'export'}
  search = summary['search']
  # Two steps at least: two networks before the last may teach.
  assert search['steps'] >= 2 and search['flops_rate'] <= 0.5 + 1e-6
  kept = search['kept_channels']
  assert set(kept) == {'block0/heads', 'block0/mlp', 'block1/heads',
                       'block1/mlp'}
  bank = summary['memory_bank']
  assert len(bank['teachers']) == 2 and bank['images'] == 256
  final = summary['final']
  assert (final['flops'], final['params']) == (search['flops'],
                                                search['params'])
  assert summary['finetune']['knowledge'] == 'ensemble'
  widths = dict(checkpoint.read_model_config(
      summary['finetune']['checkpoint'])['widths'])
  assert {g: widths.get(g) for g in kept} == kept
  for phase in ('pretrain', 'finetune'):
    metrics = [json.loads(line) for line in
               (workdir / phase / 'metrics.jsonl').read_text().splitlines()]
    assert len(metrics) == 1 and math.isfinite(metrics[0]['train_loss'])
  # The exported slimmed ViT rebuilds at the tiny size with its widths.
  network = json.loads((workdir / 'export' / 'network.json').read_text())
  assert network['attributes']['depth'] == 2
  assert network['attributes']['embed_dim'] == 32
