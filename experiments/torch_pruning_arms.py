"""The evidence study's Torch-Pruning arms (issue 25, item 7): what a user
would pick instead of EKG.

Torch-Pruning 1.6 (`MetaPruner`, global pruning) prunes the PyTorch ResNet-56
of `benchmarks/torch_reference.py` (checked to compute our network's
function, here again on the images below) from the official weights to the
EKG search's FLOPs rate (0.45 of the dense conv + fc multiply-accumulates,
ekg_jax's count without BN), once per importance:

  tp_magnitude  tp.importance.GroupMagnitudeImportance(p=2) (its default)
  tp_taylor     tp.importance.GroupTaylorImportance(), gradients of the mean
                cross-entropy over the EKG search's validation images (the
                class subset `phases.common.validation_batches` reads)

and carries the channels it keeps over as a kept-channels file, which the
running evidence study fine-tunes when it reaches the arm:

  experiments/results/evidence/<arm>/kept_channels.json  {gate: [indices]}
  experiments/results/evidence/<arm>/pruning.json        the calls and counts

One command, from the repository root in the main virtualenv (`make tp-arms`):

  python experiments/torch_pruning_arms.py [--arms=tp_magnitude,tp_taylor]

runs three steps: `export` (main venv: the official weights as flat arrays,
the validation images, normalised as the model expects, and our network's
logits on them), `prune` (experiments/tp_prune.py, run in .venv-torch, `make
torch-venv`, once per arm) and `write` (main venv: maps the pruned layers'
kept channels onto ekg_jax's gates, fails loudly on anything ekg_jax cannot
represent, writes the files and counts FLOPs and parameters with ekg_jax's
own `flops.count_flops`). Intermediate files go to workdirs/tp_arms/.

Which original channels survive is read off the pruned tensors: every value
Torch-Pruning keeps is a copy of an original one, so each pruned BN
channel's (scale, offset, mean, variance) and each pruned kernel slice is
found among the originals (exactly one match required), and the pruned
network is checked to equal the original sliced at those indices.

Only NumPy and the standard library at module level: the torch side
imports the index mapping from here, the torch virtualenv has no JAX and
the main one no torch; the mapping is tested in the main one
(tests/project/test_torch_pruning_arms.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Mapping, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(REPO, 'experiments', 'results', 'evidence')
WORK = os.path.join(REPO, 'workdirs', 'tp_arms')
OFFICIAL = os.path.join(REPO, '..', 'shared', 'pretrained',
                        'ekg_official_resnet56_cifar10.pkl')
TORCH_PYTHON = os.path.join(REPO, '.venv-torch', 'bin', 'python')
ARMS = ('tp_magnitude', 'tp_taylor')
TARGET = 0.45  # the EKG search's target (configs/resnet56_cifar.py)
# Torch-Pruning's own CIFAR benchmark recipe (benchmarks/main.py): ratio 1.0
# spread over many small steps (400 there), stepped until the MACs target is
# reached. 100 here, for the Taylor arm's sake: each of its steps needs fresh
# gradients over the 320 images, ~25 s on the shared 2 cores. Smaller steps
# barely land closer: the last step removes a residual-stream channel either
# way (magnitude arm: 0.4503 -> 0.4402 with 400 steps, -> 0.4419 with 1000).
ITERATIVE_STEPS = 100


# ---------------------------------------------------------------------------
# Index mapping (NumPy only; unit-tested without torch).


def match_indices(original: np.ndarray, pruned: np.ndarray,
                  axis: int) -> list[int]:
  """The original index of each slice of `pruned` along `axis`: the one
  slice of `original` equal to it, bit for bit. ValueError when a slice has
  no match or more than one (two equal originals: ambiguous)."""
  original = np.moveaxis(np.asarray(original), axis, 0)
  pruned = np.moveaxis(np.asarray(pruned), axis, 0)
  if original.shape[1:] != pruned.shape[1:]:
    raise ValueError(f'slices differ in shape: {original.shape[1:]} vs '
                     f'{pruned.shape[1:]}')
  where: dict[bytes, list[int]] = {}
  for i, row in enumerate(np.ascontiguousarray(original)):
    where.setdefault(row.tobytes(), []).append(i)
  out = []
  for j, row in enumerate(np.ascontiguousarray(pruned)):
    found = where.get(row.tobytes(), [])
    if len(found) != 1:
      raise ValueError(f'pruned slice {j} matches {len(found)} original '
                       'slices (needs exactly one)')
    out.append(found[0])
  if len(set(out)) != len(out):
    raise ValueError(f'two pruned slices match the same original: {out}')
  return out


def gate_indices(layers: Mapping[str, Mapping[str, Sequence[int]]],
                 table) -> dict[str, list[int]]:
  """{gate: kept original channel indices} from each layer's kept input and
  output channels ({'<layer path>': {'in': [...], 'out': [...]}}).

  `table` is `gates.layer_table(model, input_shape)`. Every layer of the
  table must be described, and nothing else; a layer side that ekg_jax does
  not gate must keep all its channels, and every layer on one gate must keep
  the same channels (a residual stream is one gate): otherwise ValueError,
  since ekg_jax could not represent what Torch-Pruning kept."""
  names = {'/'.join(layer.path) for layer in table}
  unknown = sorted(set(layers) - names)
  missing = sorted(names - set(layers))
  if unknown or missing:
    raise ValueError(f'pruned layers do not match the model: unknown '
                     f'{unknown[:4]}, missing {missing[:4]}')
  kept: dict[str, list[int]] = {}
  where: dict[str, str] = {}
  for layer in table:
    name = '/'.join(layer.path)
    for side, gate, full in (('in', layer.in_gate, layer.in_channels),
                             ('out', layer.out_gate, layer.out_channels)):
      idx = [int(i) for i in layers[name][side]]
      if idx != sorted(set(idx)) or not idx or idx[-1] >= full:
        raise ValueError(f'{name} {side}: kept indices {idx[:8]} are not '
                         f'increasing, distinct and below {full}')
      if gate is None:
        if idx != list(range(full)):
          raise ValueError(f'Torch-Pruning removed {side}put channels of '
                           f'{name}, which ekg_jax does not gate')
        continue
      if gate not in kept:
        kept[gate], where[gate] = idx, f'{name} {side}'
      elif kept[gate] != idx:
        raise ValueError(f'gate {gate!r}: {name} {side} keeps {idx}, '
                         f'{where[gate]} keeps {kept[gate]}; ekg_jax gates '
                         'them together')
  return kept


# ---------------------------------------------------------------------------
# Step 1 (main venv): what the torch side needs.


def export(path: str) -> dict:
  """Official weights (flat 'params/...' arrays), the search's validation
  images normalised as `search.Batches.from_split` does, their labels and
  our network's eval logits on them."""
  import jax
  import jax.numpy as jnp
  from flax import traverse_util

  from ekg_jax.files import official
  from ekg_jax.data import datasets as data_lib
  from ekg_jax.run.phases import common
  sys.path.insert(0, os.path.join(REPO, 'configs'))
  import resnet56_cifar

  config = resnet56_cifar.get_config()
  model = common.build_model(config)
  shape = (1, *common.input_shape(config))
  ref = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  variables = official.load_official_pkl(OFFICIAL, ref)
  # The same images, order and preprocessing as the search's validation
  # batches (phases.common.validation_batches), in one array.
  subset = common.class_subset(config, config.data.val_per_class,
                               from_end=True)
  images = np.asarray(data_lib.normalize(subset.images, config.data.mean,
                                         config.data.std))
  labels = np.asarray(subset.labels, np.int64)
  logits = np.asarray(model.apply(variables, jnp.asarray(images),
                                  train=False))
  flat = {'/'.join(k): np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(variables)).items()}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **flat, images=images, labels=labels, logits=logits)
  return {'images': int(len(labels)),
          'per_class': int(config.data.val_per_class),
          'subset_seed': int(config.data.subset_seed),
          'split': config.data.train_split,
          'classes': int(len(np.unique(labels)))}


# ---------------------------------------------------------------------------
# Step 3 (main venv): the kept-channels file and ekg_jax's counts.


def write(arm: str, pruned: dict, subset: dict, command: str,
          machine: str, results: str = RESULTS) -> dict:
  from ekg_jax.supernet import flops, gates, slimming
  from ekg_jax.models import create_model

  table = gates.layer_table(create_model('resnet56'), (32, 32, 3))
  specs = gates.gate_specs(table)
  indices = gate_indices(pruned['layers'], table)
  masks = {}
  for g, idx in indices.items():
    masks[g] = np.zeros(specs[g].channels, np.float32)
    masks[g][idx] = 1.0
  folder = os.path.join(results, arm)
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, 'kept_channels.json')
  slimming.write_kept_channels(path, masks)
  # Read back as fine-tuning reads it (checked against the model's gates).
  kept = gates.kept_from_masks(slimming.read_kept_channels(path, specs))
  counts = {
      'flops': flops.count_flops(table, kept),
      'flops_dense': flops.count_flops(table),
      'flops_rate': flops.flops_rate(table, kept),
      'flops_rate_with_bn': flops.flops_rate(table, kept, include_bn=True),
      'params': flops.count_params(table, kept),
      'params_dense': flops.count_params(table),
      'kept': kept,
  }
  ours = pruned['conv_fc_macs']
  if (counts['flops'], counts['flops_dense']) != (ours['pruned'],
                                                  ours['dense']):
    raise ValueError(f'{arm}: ekg_jax counts {counts["flops"]} of '
                     f'{counts["flops_dense"]} FLOPs, the torch side '
                     f'{ours["pruned"]} of {ours["dense"]}')
  summary = {k: v for k, v in pruned.items() if k != 'layers'}
  summary.update({
      'gradient_images': subset if summary['gradients'] else None,
      'ekg_jax': counts,
      'kept_channels': os.path.relpath(path, REPO),
      'date': datetime.date.today().isoformat(),
      'machine': machine,
      'command': command,
  })
  with open(os.path.join(folder, 'pruning.json'), 'w') as f:
    json.dump(summary, f, indent=2)
    f.write('\n')
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--arms', default=','.join(ARMS))
  parser.add_argument('--steps', type=int, default=ITERATIVE_STEPS)
  parser.add_argument('--target', type=float, default=TARGET)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--machine', default=(
      f'{platform.node()}: {os.cpu_count()} CPU cores, {platform.machine()}'))
  parser.add_argument('--inputs', default=os.path.join(WORK, 'inputs.npz'),
                      help='the exported inputs; the torch side\'s JSON '
                      'files go beside it')
  parser.add_argument('--results', default=RESULTS,
                      help='<results>/<arm>/kept_channels.json, pruning.json')
  args = parser.parse_args(argv)
  arms = args.arms.split(',')
  command = ' '.join(['python', 'experiments/torch_pruning_arms.py',
                      *(argv if argv is not None else sys.argv[1:])])
  # The study's data (evidence_study.code_env): the shared CIFAR-10 copy
  # unless TFDS_DATA_DIR names another.
  os.environ.setdefault('TFDS_DATA_DIR',
                        os.path.join(REPO, '..', 'shared', 'tfds'))
  subset = export(args.inputs)
  print(f'exported {subset}', flush=True)
  for arm in arms:
    out = os.path.join(os.path.dirname(args.inputs), f'{arm}.json')
    subprocess.run([TORCH_PYTHON, os.path.join(HERE, 'tp_prune.py'), arm,
                    f'--inputs={args.inputs}',
                    f'--out={out}', f'--steps={args.steps}',
                    f'--target={args.target}', f'--threads={args.threads}'],
                   check=True)
    with open(out) as f:
      summary = write(arm, json.load(f), subset, command, args.machine,
                      args.results)
    e = summary['ekg_jax']
    print(f'{arm}: {summary["steps_taken"]} steps, FLOPs rate '
          f'{e["flops_rate"]:.4f} ({e["flops_rate_with_bn"]:.4f} with BN), '
          f'{e["params"]:,} params, val CE {summary["val_ce"]["pruned"]}, '
          f'{summary["seconds"]} s; kept {e["kept"]}', flush=True)


if __name__ == '__main__':
  main()
