"""Which JAX versions load which `model.jax` (docs/deployment.md).

Each --exporter Python (ekg_jax importable there) exports a ResNet-20 with
random weights through `ekg_jax.deploy.export` (platforms cpu, cuda, tpu, symbolic
batch) and records the logits of 5 uint8 images; each --loader Python
(jax, jaxlib and flatbuffers; ekg_jax and flax refused) loads every export
with `jax.export` alone and runs it at batch 5 and 2 on its CPU.

  python benchmarks/export_compat.py --exporter .venv/bin/python \
    --exporter .venv-colab/bin/python --loader /tmp/jax-0.10.2/bin/python ...

Writes benchmarks/results/export-compat.{json,md}; an exporter is also a
loader.
"""

import argparse
import json
import os
import subprocess
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT = r'''
import sys, numpy as np, jax, jax.numpy as jnp
from ekg_jax import config
from ekg_jax.deploy import export
from ekg_jax.models import create_model
model = create_model('resnet20')
variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
mean, std = config.REFERENCE_MEAN, config.REFERENCE_STD
export.export(model, variables, sys.argv[1], 'resnet20', (32, 32, 3), mean, std)
x = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), np.uint8)
np.save(f'{sys.argv[1]}/x.npy', x)
np.save(f'{sys.argv[1]}/want.npy',
        export.forward(model, variables, mean, std)(x))
print(jax.__version__)
'''
LOAD = r'''
import importlib.abc, json, sys
class Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('ekg_jax', 'flax'):
      raise ImportError(name)
sys.meta_path.insert(0, Refuse())
import numpy as np, jax
from jax import export
out = {'loader': jax.__version__}
try:
  with open(f'{sys.argv[1]}/model.jax', 'rb') as f:
    program = export.deserialize(bytearray(f.read()))
  x, want = np.load(f'{sys.argv[1]}/x.npy'), np.load(f'{sys.argv[1]}/want.npy')
  out['max_abs_diff'] = max(
      float(np.abs(np.asarray(program.call(x[:n])) - want[:n]).max())
      for n in (5, 2))
  out['loads'] = out['max_abs_diff'] < 1e-4
except Exception as e:  # what each version raises differs
  out.update(loads=False, error=f'{type(e).__name__}: '
             f'{str(e).splitlines()[0][:120]}')
print(json.dumps(out))
'''


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--exporter', action='append', required=True)
  parser.add_argument('--loader', action='append', default=[])
  parser.add_argument('--out-dir', default=os.path.join(ROOT, 'benchmarks',
                                                        'results'))
  args = parser.parse_args()
  # Absolute, not resolved: a virtualenv's python is a symlink.
  args.exporter = [os.path.abspath(p) for p in args.exporter]
  args.loader = [os.path.abspath(p) for p in args.loader]
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  rows, loaders = [], []
  with tempfile.TemporaryDirectory() as tmp:
    exports = []
    for i, python in enumerate(args.exporter):
      folder = os.path.join(tmp, str(i))
      version = subprocess.run([python, '-c', EXPORT, folder], cwd=ROOT,
                               env=env, check=True, capture_output=True,
                               text=True).stdout.split()[-1]
      exports.append((version, folder))
    for python in [*args.exporter, *args.loader]:
      results = [json.loads(subprocess.run(
          [python, '-c', LOAD, folder], cwd=tmp, env=env, check=True,
          capture_output=True, text=True).stdout) for _, folder in exports]
      loaders.append(results[0]['loader'])
      rows.append(results)
  order = sorted(set(loaders), key=lambda v: tuple(map(int, v.split('.'))))
  table = {exported: {r[i]['loader']: r[i] for r in rows}
           for i, (exported, _) in enumerate(exports)}
  lines = ['| exported with \\ loaded with | ' + ' | '.join(order) + ' |',
           '|---' * (len(order) + 1) + '|']
  for exported, cells in table.items():
    lines.append(f'| {exported} | ' + ' | '.join(
        'yes' if cells[v]['loads'] else
        'no: ' + cells[v].get('error', 'logits differ').replace('|', '/')
        for v in order) + ' |')
  os.makedirs(args.out_dir, exist_ok=True)
  with open(os.path.join(args.out_dir, 'export-compat.json'), 'w') as f:
    json.dump(table, f, indent=1)
  with open(os.path.join(args.out_dir, 'export-compat.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
