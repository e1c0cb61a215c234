"""Runs exported networks (`ekg_jax.deploy.export`) with nothing but JAX and NumPy:
importing ekg_jax or flax is refused, so the numbers show what a deployment
gets from the artifact alone.

  python benchmarks/run_exported.py DIR[=EXPECTED.npy] ... --images=X.npy

For each export directory: the largest |logit difference| against the
expected logits (computed where the network was exported), and the median
latency at batch 1 and at the images' batch on JAX's default device.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import statistics
import sys
import time


class _Refuse(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('ekg_jax', 'flax'):
      raise ImportError(f'run_exported.py must not need {name}')


sys.meta_path.insert(0, _Refuse())

import jax  # noqa: E402
from jax import export  # noqa: E402 (older JAX needs this import)
import numpy as np  # noqa: E402


def median_ms(fn, x, repeats: int) -> float:
  jax.block_until_ready(fn(x))  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('exports', nargs='+')
  parser.add_argument('--images', required=True)
  parser.add_argument('--repeats', type=int, default=50)
  args = parser.parse_args()
  images = np.load(args.images)
  out = {'device': jax.devices()[0].device_kind, 'jax': jax.__version__}
  for item in args.exports:
    directory, _, expected = item.partition('=')
    with open(f'{directory}/model.jax', 'rb') as f:
      exported = export.deserialize(bytearray(f.read()))
    fn = jax.jit(exported.call)
    entry = {'platforms': list(exported.platforms)}
    if expected:
      got = np.asarray(fn(jax.device_put(images)))
      entry['max_abs_diff'] = float(np.abs(got - np.load(expected)).max())
    for batch in (1, len(images)):
      x = jax.device_put(images[:batch])
      entry[f'batch_{batch}_ms'] = median_ms(fn, x, args.repeats)
    out[directory] = entry
  print(json.dumps(out, indent=1))


if __name__ == '__main__':
  main()
