"""Where XLA:CPU spends a slimmed ResNet-56's forward pass: the time of each
convolution (from a `jax.profiler` trace), by its input and output
channels, for the dense network and the committed round_to=1 search's
widths, next to each convolution's share of the MACs.

  python benchmarks/conv_profile.py [--batch=256] [--calls=3]

Prints a Markdown table and writes `results/conv-profile-<machine>.json`.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ekg_jax.runtime import xla_config  # noqa: E402

xla_config.set_fast_cpu_flags()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import speedup  # noqa: E402

# Every instruction's shape, `%name = f32[256,32,32,16]{...} op(...)`, and
# the convolutions' operands, `convolution(%input, %kernel)`.
_SHAPE = re.compile(r'%?([\w.-]+) = f32\[([\d,]+)\]')
_CONV = re.compile(r'%?([\w.-]+) = f32\[[\d,]+\]\S* convolution\('
                   r'(?:f32\[[\d,]+\]\S* )?%?([\w.-]+)')


def conv_times(fn, x, calls: int) -> dict:
  """{(cin, cout, side): [ms per call, count, MACs]} over the program's
  convolutions."""
  compiled = fn.lower(x).compile()
  text = compiled.as_text()
  dims = {m.group(1): [int(d) for d in m.group(2).split(',')]
          for m in _SHAPE.finditer(text)}
  shapes = {}
  for m in _CONV.finditer(text):
    out, source = dims[m.group(1)], dims.get(m.group(2))
    if source and len(out) == 4:
      shapes[m.group(1)] = (source[-1], out[-1], out[1])
  jax.block_until_ready(compiled(x))
  with tempfile.TemporaryDirectory() as directory:
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    for _ in range(calls):
      jax.block_until_ready(compiled(x))
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(directory, '**', '*.trace.json.gz'),
                      recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  out = collections.defaultdict(lambda: [0.0, 0, 0])
  for e in events:
    key = shapes.get(e.get('name'))
    if e.get('ph') == 'X' and key:
      out[key][0] += e['dur'] / 1e3 / calls
  for name, key in shapes.items():
    out[key][1] += 1
  return dict(out)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--calls', type=int, default=3)
  parser.add_argument('--machine', default='cpu-2cores')
  args = parser.parse_args(argv)
  nets = speedup.widths(56)
  x = np.random.default_rng(0).integers(0, 256, (args.batch, 32, 32, 3),
                                        np.uint8)
  from ekg_jax.deploy import export
  result = {}
  for name in ('dense', 'round_to_1'):
    model, variables = speedup._flax(56, nets[name])
    fn = jax.jit(export.forward(model, variables, (0.5,) * 3, (0.25,) * 3))
    times = conv_times(fn, x, args.calls)
    result[name] = {f'{cin}->{cout}@{side}': {'ms': t, 'convs': n} for
                    (cin, cout, side), (t, n, _) in sorted(times.items())}
  lines = [f'batch {args.batch}; ms per forward pass, summed over the '
           'convolutions of each shape (trace events; Eigen runs on its own '
           'threads, so totals are approximate)', '',
           '| network | convolution (in->out @ side) | count | ms | ms per '
           'conv |', '|---|---|---|---|---|']
  for name, rows in result.items():
    for shape, r in rows.items():
      lines.append(f"| {name} | {shape} | {r['convs']} | {r['ms']:.1f} | "
                   f"{r['ms'] / max(r['convs'], 1):.2f} |")
  print('\n'.join(lines))
  with open(os.path.join(HERE, 'results',
                         f'conv-profile-{args.machine}.json'), 'w') as f:
    json.dump({'batch': args.batch, 'calls': args.calls,
               'command': 'python benchmarks/conv_profile.py', **result}, f,
              indent=1)


if __name__ == '__main__':
  main()
