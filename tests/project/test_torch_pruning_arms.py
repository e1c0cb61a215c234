"""experiments/torch_pruning_arms.py: the index mapping from Torch-Pruning's
pruned tensors to ekg_jax's gates, the committed kept-channels files of the
evidence study's `tp_*` arms, and (slow, .venv-torch) the whole command."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAVE_OFFICIAL, REPO, needs_cifar10
from ekg_jax.supernet import flops, gates, slimming
from ekg_jax.models import create_model

TORCH_PYTHON = REPO / '.venv-torch' / 'bin' / 'python'


def _load():
  spec = importlib.util.spec_from_file_location(
      'torch_pruning_arms', REPO / 'experiments' / 'torch_pruning_arms.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


arms = _load()


@pytest.fixture(scope='module')
def table():
  return gates.layer_table(create_model('resnet56'), (32, 32, 3))


def _layers_for(table, kept):
  """What the torch side reports for a network pruned to `kept` (gate ->
  indices): each layer's kept inputs and outputs."""
  def side(gate, full):
    return list(kept.get(gate, range(full))) if gate else list(range(full))
  return {'/'.join(l.path): {'in': side(l.in_gate, l.in_channels),
                             'out': side(l.out_gate, l.out_channels)}
          for l in table}


def test_match_indices_recovers_a_slice():
  rng = np.random.default_rng(0)
  original = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
  keep = [1, 4, 5, 11, 15]
  assert arms.match_indices(original, original[keep], 0) == keep
  cols = [0, 2, 7]
  assert arms.match_indices(original, original[:, cols], 1) == cols


def test_match_indices_refuses_what_it_cannot_place():
  rng = np.random.default_rng(1)
  original = rng.normal(size=(6, 4)).astype(np.float32)
  changed = original[[0, 2]].copy()
  changed[1, 0] += 1e-6  # not a copy of any original channel
  with pytest.raises(ValueError, match='matches 0'):
    arms.match_indices(original, changed, 0)
  twins = np.concatenate([original, original[:1]])  # two equal originals
  with pytest.raises(ValueError, match='matches 2'):
    arms.match_indices(twins, original[:1], 0)
  with pytest.raises(ValueError, match='shape'):
    arms.match_indices(original, original[:, :2], 0)


def test_gate_indices_round_trip(table):
  rng = np.random.default_rng(2)
  specs = gates.gate_specs(table)
  kept = {g: sorted(rng.choice(s.channels, rng.integers(1, s.channels + 1),
                               replace=False).tolist())
          for g, s in specs.items() if rng.random() < 0.7}
  assert arms.gate_indices(_layers_for(table, kept), table) == {
      g: kept.get(g, list(range(s.channels))) for g, s in specs.items()}


def test_gate_indices_fails_on_what_ekg_jax_cannot_represent(table):
  kept = {'stage1': list(range(0, 32, 2)), 'stage2/block3': [0, 5, 9]}
  layers = _layers_for(table, kept)
  # One conv of the stage-1 residual stream keeps other channels.
  broken = json.loads(json.dumps(layers))
  broken['BasicBlock1.4/conv2']['out'] = list(range(1, 32, 2))
  with pytest.raises(ValueError, match="gate 'stage1'"):
    arms.gate_indices(broken, table)
  # An ungated side pruned: the image channels, the classes.
  for name, side in (('conv', 'in'), ('fc', 'out')):
    broken = json.loads(json.dumps(layers))
    broken[name][side] = broken[name][side][1:]
    with pytest.raises(ValueError, match='does not gate'):
      arms.gate_indices(broken, table)
  broken = json.loads(json.dumps(layers))
  del broken['BasicBlock2.8/bn1']
  with pytest.raises(ValueError, match='missing'):
    arms.gate_indices(broken, table)
  broken = json.loads(json.dumps(layers))
  broken['BasicBlock0.0/conv1']['out'] = [3, 1]
  with pytest.raises(ValueError, match='increasing'):
    arms.gate_indices(broken, table)


@pytest.mark.parametrize('arm', arms.ARMS)
def test_committed_kept_channels(arm, table):
  """The files the evidence study fine-tunes: they load against ResNet-56's
  gates, reach the EKG search's FLOPs target (at most 0.45, within 0.01 of
  it) and agree with their pruning.json."""
  folder = REPO / 'experiments' / 'results' / 'evidence' / arm
  specs = gates.gate_specs(table)
  masks = slimming.read_kept_channels(str(folder / 'kept_channels.json'),
                                      specs)
  kept = gates.kept_from_masks(masks)
  rate = flops.flops_rate(table, kept)
  assert arms.TARGET - 0.01 <= rate <= arms.TARGET
  summary = json.loads((folder / 'pruning.json').read_text())
  counts = summary['ekg_jax']
  assert counts['kept'] == kept
  assert counts['flops'] == flops.count_flops(table, kept)
  assert counts['params'] == flops.count_params(table, kept)
  assert counts['flops_rate'] == pytest.approx(rate)
  assert summary['torch_pruning'].startswith('1.6.')
  assert summary['conv_fc_macs']['pruned'] == counts['flops']


@pytest.mark.slow
@needs_cifar10
@pytest.mark.skipif(not HAVE_OFFICIAL, reason='official ResNet-56 missing')
def test_command_end_to_end(tmp_path):
  """Export, Torch-Pruning in .venv-torch and the mapping back, on real
  pruned tensors (a few steps, to a loose target, into tmp_path)."""
  if not TORCH_PYTHON.exists():
    if os.environ.get('CI'):
      pytest.fail('CI builds the PyTorch virtualenv first (make torch-venv)')
    pytest.skip('no .venv-torch (make torch-venv)')
  subprocess.run([sys.executable, 'experiments/torch_pruning_arms.py',
                  '--arms=tp_magnitude', '--target=0.9', '--steps=100',
                  f'--inputs={tmp_path / "inputs.npz"}',
                  f'--results={tmp_path}', '--machine=test'],
                 cwd=REPO, check=True, timeout=900)
  summary = json.loads(
      (tmp_path / 'tp_magnitude' / 'pruning.json').read_text())
  assert summary['ekg_jax']['flops_rate'] <= 0.9
  assert summary['dense_logits_max_abs_diff_vs_jax'] < 1e-3
  assert summary['steps_taken'] == len(summary['rate_after_each_step'])
  kept = summary['ekg_jax']['kept']
  assert any(k < gates.gate_specs(gates.layer_table(
      create_model('resnet56'), (32, 32, 3)))[g].channels
             for g, k in kept.items())
