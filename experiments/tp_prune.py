"""Step 2 of experiments/torch_pruning_arms.py, in .venv-torch: Torch-Pruning
1.6's `MetaPruner` (global pruning) on the PyTorch ResNet-56 of
`benchmarks/torch_reference.py`, loaded with the exported official weights
and checked to compute our network's logits, stepped until the conv + fc
multiply-accumulates reach the target; the kept original channels of every
layer are read off the pruned tensors into a JSON file.

  python experiments/tp_prune.py ARM --inputs=INPUTS.npz --out=ARM.json \
      [--steps=100] [--target=0.45] [--threads=2]

(torch_pruning_arms.py runs it; it is not meant to be run by hand.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import time

import numpy as np

# experiments/, beside this file (NumPy only at module level).
from torch_pruning_arms import (ARMS, ITERATIVE_STEPS, REPO, TARGET,
                                match_indices)


def _torch_layers(model):
  """(ekg_jax layer path, conv or linear, the BN after it or None)."""
  out = [('conv', model.conv, model.bn)]
  for name, block in zip(model.names, model.blocks):
    for i in (1, 2, 3):
      if hasattr(block, f'conv{i}'):
        out.append((f'{name}/conv{i}', getattr(block, f'conv{i}'),
                    getattr(block, f'bn{i}')))
  out.append(('fc', model.fc, None))
  return out


def _macs(model, torch) -> int:
  """ekg_jax's FLOPs convention on a torch network: conv and fc
  multiply-accumulates of one image, no BN (flops.py)."""
  total = []

  def hook(module, inputs, output):
    if isinstance(module, torch.nn.Conv2d):
      kh, kw = module.kernel_size
      total.append(output[0].numel() * kh * kw * module.in_channels
                   // module.groups)
    else:
      total.append(module.in_features * module.out_features)
  handles = [m.register_forward_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  with torch.no_grad():
    model(torch.zeros(1, 3, 32, 32))
  for h in handles:
    h.remove()
  return int(sum(total))


def _kept_layers(original: dict, model, torch) -> dict:
  """Each layer's kept original input/output channels, read off the pruned
  tensors, and a check that the pruned network is the original sliced."""
  def arr(t):
    return t.detach().cpu().numpy()

  def bn_stats(state, prefix):  # one row per channel
    return np.stack([state[f'{prefix}.{k}'] for k in
                     ('weight', 'bias', 'running_mean', 'running_var')], 1)

  names = {m: n for n, m in model.named_modules()}
  pruned = {k: arr(v) for k, v in model.state_dict().items()}
  layers = {}
  for path, layer, bn in _torch_layers(model):
    w_name = f'{names[layer]}.weight'
    w0, w = original[w_name], pruned[w_name]
    if bn is None:  # fc: Torch-Pruning is told to leave its outputs alone
      if w.shape[0] != w0.shape[0]:
        raise ValueError(f'{path}: outputs pruned ({w.shape[0]} of '
                         f'{w0.shape[0]})')
      out = list(range(w0.shape[0]))
    else:
      b = names[bn]
      out = match_indices(bn_stats(original, b), bn_stats(pruned, b), 0)
      head, _, conv_name = path.rpartition('/')  # .../convK -> .../bnK
      bn_path = (f'{head}/' if head else '') + conv_name.replace('conv', 'bn')
      layers[bn_path] = {'in': out, 'out': out}
    inp = match_indices(w0[out], w, 1)
    if not np.array_equal(w0[out][:, inp], w):
      raise ValueError(f'{path}: pruned kernel is not the original sliced')
    if bn is None and not np.array_equal(
        original[f'{names[layer]}.bias'][out], pruned[f'{names[layer]}.bias']):
      raise ValueError(f'{path}: pruned bias is not the original sliced')
    layers[path] = {'in': inp, 'out': out}
  return layers


def _importance(arm: str, tp):
  if arm == 'tp_magnitude':
    return tp.importance.GroupMagnitudeImportance(p=2), (
        'tp.importance.GroupMagnitudeImportance(p=2)')
  if arm == 'tp_taylor':
    return tp.importance.GroupTaylorImportance(), (
        'tp.importance.GroupTaylorImportance()')
  raise ValueError(f'unknown arm {arm!r}; choose from {ARMS}')


def prune(arm: str, inputs: str, out_path: str, steps: int, target: float,
          threads: int) -> dict:
  """Torch-Pruning's MetaPruner, global, `steps` iterative steps of ratio
  1/steps each, stepped until the network's conv + fc MACs are at most
  `target` of the dense network's; writes the kept channels per layer."""
  import torch
  import torch.nn.functional as F
  import torch_pruning as tp
  sys.path.insert(0, os.path.join(REPO, 'benchmarks'))
  from torch_reference import CifarResNet

  torch.manual_seed(0)
  torch.set_num_threads(threads)
  start = time.time()
  data = np.load(inputs)
  flat = {k: data[k] for k in data.files
          if k.startswith(('params/', 'batch_stats/'))}
  model = CifarResNet(56)
  model.load_jax(flat)
  model.eval()
  images = torch.from_numpy(data['images']).permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(data['labels']).long()

  def val_ce():
    with torch.no_grad():
      logits = model(images)
    return logits, float(F.cross_entropy(logits, labels))

  logits, ce_dense = val_ce()
  ours = data['logits']
  diff = float(np.abs(logits.numpy() - ours).max())
  if diff > 1e-4 * max(1.0, float(np.abs(ours).max())):
    raise ValueError(f'the torch network is not ours: logits differ by '
                     f'{diff}')
  original = {k: v.detach().cpu().numpy().copy()
              for k, v in model.state_dict().items()}
  example = torch.zeros(1, 3, 32, 32)
  tp_macs0, tp_params0 = tp.utils.count_ops_and_params(model, example)
  dense = _macs(model, torch)
  importance, importance_call = _importance(arm, tp)
  pruner_args = dict(global_pruning=True, pruning_ratio=1.0,
                     iterative_steps=steps, ignored_layers=[model.fc])
  pruner = tp.pruner.MetaPruner(model, example, importance=importance,
                                **pruner_args)
  taylor = isinstance(importance, tp.importance.GroupTaylorImportance)
  rates, gradients, size = [], 0, None

  def numel():
    return sum(p.numel() for p in model.parameters())
  while True:
    if taylor and numel() != size:
      # Gradients of the current network before each step (the importance
      # reads weight.grad): mean CE over the validation images, BN in eval
      # mode (running statistics), as the search evaluates. Recomputed only
      # when the last step changed the network: a step that pruned nothing
      # leaves the network, and so its gradients, as they were.
      model.zero_grad(set_to_none=True)
      F.cross_entropy(model(images), labels).backward()
      gradients, size = gradients + 1, numel()
    pruner.step()
    rates.append(_macs(model, torch) / dense)
    print(f'{arm} step {pruner.current_step}: rate {rates[-1]:.4f} '
          f'({time.time() - start:.0f} s)', file=sys.stderr, flush=True)
    if rates[-1] <= target or pruner.current_step >= steps:
      break
  model.zero_grad(set_to_none=True)
  _, ce_pruned = val_ce()
  tp_macs1, tp_params1 = tp.utils.count_ops_and_params(model, example)
  layers = _kept_layers(original, model, torch)
  result = {
      'arm': arm,
      # The 1.6.1 wheel still says 1.6.0 in tp.__version__: both recorded.
      'torch_pruning': importlib.metadata.version('torch-pruning'),
      'torch_pruning_module_version': tp.__version__,
      'torch': torch.__version__.split('+')[0],
      'python': platform.python_version(),
      'importance': importance_call,
      'importance_attributes': {
          k: (v if isinstance(v, (int, float, str, bool, type(None)))
              else [getattr(t, '__name__', str(t)) for t in v])
          for k, v in vars(importance).items()},
      'pruner': 'tp.pruner.MetaPruner(model, example_inputs, '
                'importance=importance, ' + ', '.join(
                    f'{k}={v!r}' for k, v in pruner_args.items()
                    if k != 'ignored_layers') + ', ignored_layers=[model.fc])',
      'pruner_class': f'{type(pruner).__module__}.{type(pruner).__name__}',
      'example_inputs': 'torch.zeros(1, 3, 32, 32)',
      'stopping': f'pruner.step() until the conv + fc MACs (ekg_jax\'s '
                  f'count, no BN) are at most {target} of the dense '
                  'network\'s (Torch-Pruning\'s benchmarks/main.py '
                  'progressive pruning, with our FLOPs count)',
      'steps_taken': pruner.current_step,
      'rate_after_each_step': [round(r, 6) for r in rates],
      'gradients': ({
          'images': int(len(labels)),
          'loss': 'F.cross_entropy(model(images), labels) (mean), '
                  'model.eval()',
          'when': 'model.zero_grad(); loss.backward() before every '
                  'pruner.step() whose network differs from the one the '
                  'last gradients were computed on (a step that prunes '
                  'nothing changes nothing)',
          'gradient_computations': gradients} if taylor else None),
      'torch_macs': {'dense': int(tp_macs0), 'pruned': int(tp_macs1),
                     'counter': 'tp.utils.count_ops_and_params(model, '
                                'torch.zeros(1, 3, 32, 32)) (counts BN too)'},
      'torch_params': {'dense': int(tp_params0), 'pruned': int(tp_params1)},
      'conv_fc_macs': {'dense': dense, 'pruned': _macs(model, torch)},
      'val_ce': {'dense': round(ce_dense, 6), 'pruned': round(ce_pruned, 6),
                 'what': 'torch eval CE on the validation images, before '
                         'and after pruning (no fine-tuning)'},
      'dense_logits_max_abs_diff_vs_jax': diff,
      'threads': threads,
      'seconds': round(time.time() - start, 1),
      'layers': layers,
  }
  with open(out_path, 'w') as f:
    json.dump(result, f)
  return result


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('arm', choices=ARMS)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--steps', type=int, default=ITERATIVE_STEPS)
  parser.add_argument('--target', type=float, default=TARGET)
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args(argv)
  prune(args.arm, args.inputs, args.out, args.steps, args.target,
        args.threads)


if __name__ == '__main__':
  main()
