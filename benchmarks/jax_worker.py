"""JAX side of the benchmarks: a worker `run.py` talks to over stdin/stdout,
one JSON object a line (the protocol of `torch_reference.py`), so sides and
variants are timed alternately, each in its own process with its own XLA
flags and peak memory.

  python benchmarks/jax_worker.py --variant=toolkit|before|CHANGE+CHANGE...

`toolkit` runs as `python -m ekg_jax.main` does, with every profile-driven
change (CHANGES); `before` with none of them; otherwise the named ones only:
`materialize` (segment outputs materialised on CPU), `xla_flags`
(`xla_config.FAST_CPU_FLAGS`), `sliced_kernel_grad` (`ops.conv2d`'s kernel
gradient over 16-image slices).

Commands (each reply also carries `compiles`, the number of XLA compilations
so far, so the driver can tell that timed calls compiled nothing):
  setup_train {kind, batch, steps, widths, teachers, depth}
  time {}                      one stretch of `steps` training steps
  export {path}                variables, views and the loss, for the check
  setup_search {chunk_size, images_per_class, depth, split, modes}
  time_search {mode}           importance, or every candidate of one step
  search_e2e {target, images_per_class, depth, split}
  inference {batches, widths, repeats, depth}
  memory_bank {images, teachers, batch, depth, repeats}
  profile {}                   ms per training step by XLA operation kind
  conv_kernels {shapes, repeats} ms of one 3x3 conv: forward, input
                               gradient, kernel gradient
  peak {}                      peak host (and device) memory

The workloads themselves are in `jax_workloads.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from ekg_jax.runtime import xla_config  # noqa: E402

CHANGES = ('materialize', 'xla_flags', 'sliced_kernel_grad')


def parse_changes() -> set:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--variant', default='toolkit')
  variant = parser.parse_args().variant
  if variant in ('toolkit', 'before'):
    return set(CHANGES) if variant == 'toolkit' else set()
  changes = set(variant.split('+'))
  if not changes <= set(CHANGES):
    parser.error(f'--variant {variant}: changes are {CHANGES}')
  return changes


ACTIVE = parse_changes()
if 'xla_flags' in ACTIVE:  # before JAX starts
  xla_config.set_fast_cpu_flags()

import jax  # noqa: E402

import jax_workloads as w  # noqa: E402 (benchmarks/, beside this file)
from ekg_jax.supernet import ops  # noqa: E402

if 'materialize' not in ACTIVE:
  w.MATERIALIZE = False
if 'sliced_kernel_grad' not in ACTIVE:
  ops.KERNEL_GRAD_SLICE = 0


def _setup_train(request, objects):
  start = time.perf_counter()
  train = objects['train'] = w.Train(
      request['kind'], request['batch'], request['steps'],
      request.get('widths') or {}, request['teachers'], request['depth'])
  train.time()  # compiles
  return {'compile_s': train.runner.compile_seconds,
          'first_call_s': time.perf_counter() - start,
          'flops_per_step': train.flops_per_step}


def _setup_search(request, objects):
  step = objects['search'] = w.SearchStep(
      request['chunk_size'], request['images_per_class'], request['depth'],
      request['split'], request['modes'])
  return {'first_call_s': step.compile_s, 'candidates': step.candidates,
          'weights': step.weights}


def _profile(request, objects):
  import profiling  # noqa: E402 (benchmarks/, beside this file)
  train = objects['train']
  by_kind = profiling.profile(train.time)
  return {k: ({'ms': v['ms'] / len(train.indices),
               'count': v['count'] / len(train.indices)}
              if isinstance(v, dict) else v / len(train.indices))
          for k, v in by_kind.items()}


def _versions(request, objects):
  import flax
  import optax
  return {'jax': jax.__version__, 'jaxlib': jax.lib.__version__,
          'flax': flax.__version__, 'optax': optax.__version__,
          'backend': jax.default_backend(),
          'device': jax.devices()[0].device_kind,
          'device_count': jax.device_count(),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _with(fn, *keys):
  """A command that calls `fn` with the request's `keys`, in order."""
  return lambda request, objects: fn(*(request[k] for k in keys))


# Each command: (request, objects this process keeps) -> its reply.
COMMANDS = {
    'setup_train': _setup_train,
    'time': lambda request, objects: {
        'seconds': objects['train'].time(),
        'steps': len(objects['train'].indices)},
    'export': lambda request, objects: objects['train'].export(
        request['path']),
    'setup_search': _setup_search,
    'time_search': lambda request, objects: {
        'seconds': objects['search'].time(request['mode'])},
    'search_e2e': _with(w.search_e2e, 'target', 'images_per_class', 'depth',
                        'split'),
    'inference': _with(w.inference, 'batches', 'widths', 'repeats', 'depth'),
    'memory_bank': _with(w.bank_throughput, 'images', 'teachers', 'batch',
                         'depth', 'repeats'),
    'profile': _profile,
    'conv_kernels': _with(w.conv_kernels, 'shapes', 'repeats'),
    'peak': lambda request, objects: w.peak(),
    'versions': _versions,
}


def handle(request, objects):
  if request['cmd'] not in COMMANDS:
    raise ValueError(f"unknown cmd {request['cmd']!r}")
  return COMMANDS[request['cmd']](request, objects)


def main():
  objects = {}
  for line in sys.stdin:
    request = json.loads(line)
    reply = handle(request, objects)
    reply['compiles'] = w.COMPILES[0]
    print(json.dumps(reply), flush=True)


if __name__ == '__main__':
  main()
