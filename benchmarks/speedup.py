"""Is the slimmed network really faster? Dense vs slimmed ResNet-56 latency
per deployment path, sides alternating in one run (issue 16, item 3).

  python benchmarks/speedup.py            # ~15 min on 2 cores
  python benchmarks/speedup.py --quick    # smoke run (CI)

Paths (each its own worker process, spoken to one JSON line at a time):
- `xla`: the exported forward (`ekg_jax.deploy.export.forward`, what `model.jax`
  holds) jitted with the toolkit's XLA:CPU flags (Eigen convolutions);
- `xla_ynnpack`: the same with XLA's default flags (YNNPACK convolutions);
- `xla_1thread`: `xla` with Eigen's convolutions on one thread
  (`--xla_cpu_multi_thread_eigen=false`), to see what threading gives;
- `onnxruntime`: `ekg_jax.deploy.export_onnx` then ONNX Runtime (the [onnx] extra);
- `torch`: the PyTorch reference network, eager (`.venv-torch`).
Networks: dense, and slimmed to the widths of the committed ResNet-56
searches at 45% FLOPs with `round_to` 1 and 8, and `round_to_1_pad8`: the
round_to_1 network with its gates under 8 channels padded to 8 by zero
channels for inference (`slimming.pad_narrow`; the same logits, its MACs
counted at the real widths). Weights are random (latency
does not depend on them). A `narrow conv` table times the pair of 3x3
convolutions of a slimmed block (16 -> k -> 16 channels, 32x32) against k.
Results: `results/speedup-<machine>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEARCHES = {'round_to_1': 'r56_search_summary.json',
            'round_to_8': 'r56_search_round8_summary.json'}
# Inference-only padding (`slimming.pad_narrow`): this network is the
# round_to_1 one with every gate narrower than 8 widened to 8 by zero
# channels (the same logits); its MACs and ideal speed-up are round_to_1's.
PADDED = {'round_to_1_pad8': ('round_to_1', 8)}
# PyTorch runs in its own virtualenv; ONNX Runtime in this one, with the
# [onnx] extra (make onnx).
PYTHONS = {'torch': os.path.join(ROOT, '.venv-torch', 'bin', 'python')}
ONNX_MODULES = ('jax2onnx', 'onnx', 'onnxruntime')
SIDES = ('xla', 'xla_ynnpack', 'xla_1thread', 'onnxruntime', 'torch')
FULL = dict(depth=56, batches=[1, 256], repeats=7, calls={1: 20, 256: 2},
            narrow=[1, 2, 4, 7, 8, 16], narrow_batch=256, sides=SIDES,
            nets=('dense', 'round_to_1', 'round_to_1_pad8', 'round_to_8'))
# The smoke run (CI) leaves out the XLA variants that differ only in flags.
QUICK = dict(depth=20, batches=[1, 8], repeats=1, calls={1: 2, 8: 1},
             narrow=[1, 16], narrow_batch=8,
             sides=('xla', 'onnxruntime', 'torch'),
             # round_to_8 is the same code path as round_to_1
             nets=('dense', 'round_to_1', 'round_to_1_pad8'))


def widths(depth: int) -> dict:
  """Network name -> kept channels ({} = dense), from the committed
  searches (blocks a shallower network lacks are dropped)."""
  nets = {'dense': {}}
  for name, file in SEARCHES.items():
    with open(os.path.join(ROOT, 'experiments', 'results', file)) as f:
      kept = json.load(f)['search']['kept_channels']
    nets[name] = {g: k for g, k in kept.items() if '/block' not in g or
                  int(g.rsplit('block', 1)[1]) < (depth - 2) // 6}
  for name, (base, _) in PADDED.items():
    nets[name] = nets[base]
  return nets


# ---------------------------------------------------------------------------
# Workers: `build(side, nets, depth)` -> {name: f(batch) -> run once}.


def _uint8(batch):
  import numpy as np
  return np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3),
                                           np.uint8)


def _flax(depth, kept):
  import jax
  import jax.numpy as jnp
  from ekg_jax.models import create_model
  model = create_model(f'resnet{depth}', widths=tuple(kept.items()))
  return model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def _padded(name, model, variables):
  """A PADDED network padded for inference; any other as it is."""
  from ekg_jax.supernet import slimming
  if name not in PADDED:
    return model, variables
  return slimming.pad_narrow(model, variables, (32, 32, 3), PADDED[name][1])


def _build_xla(nets, depth):
  import jax
  from ekg_jax.deploy import export
  from ekg_jax.supernet import flops
  from ekg_jax.supernet import gates
  runs, macs = {}, {}
  for name, kept in nets.items():
    model, variables = _flax(depth, kept)
    # MACs at the real widths, for a padded network too
    macs[name] = flops.count_flops(gates.layer_table(model, (32, 32, 3)))
    model, variables = _padded(name, model, variables)
    fn = jax.jit(export.forward(model, variables, (0.5,) * 3, (0.25,) * 3))
    runs[name] = lambda x, fn=fn: jax.block_until_ready(fn(x))
  return runs, macs


def _build_onnxruntime(nets, depth):
  import tempfile
  import onnxruntime as ort
  from ekg_jax.deploy import export_onnx
  runs = {}
  for name, kept in nets.items():
    model, variables = _padded(name, *_flax(depth, kept))
    path = os.path.join(tempfile.mkdtemp(), 'model.onnx')
    export_onnx.to_onnx(model, variables, path, (32, 32, 3), (0.5,) * 3,
                        (0.25,) * 3)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    runs[name] = lambda x, s=session: s.run(['logits'], {'images': x})
  return runs, {}


def _build_torch(nets, depth):
  import torch
  sys.path.insert(0, HERE)
  import torch_reference
  runs = {}
  for name, kept in nets.items():
    if name in PADDED:  # the same widths (its zero weights cost the same)
      kept = {g: max(k, PADDED[name][1]) for g, k in kept.items()}
    model = torch_reference.CifarResNet(depth, kept).eval()

    def run(x, model=model):
      with torch.inference_mode():
        model(torch.from_numpy(x).permute(0, 3, 1, 2).float())
    runs[name] = run
  return runs, {}


def _narrow_xla(k, batch, layout='NHWC'):
  import jax
  import jax.numpy as jnp
  kernel = 'HWIO' if layout == 'NHWC' else 'OIHW'
  a = jnp.ones([{'H': 3, 'W': 3, 'I': 16, 'O': k}[d] for d in kernel])
  b = jnp.ones([{'H': 3, 'W': 3, 'I': k, 'O': 16}[d] for d in kernel])
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w * 0.01, (1, 1), 'SAME', dimension_numbers=(layout, kernel, layout))
  fn = jax.jit(lambda x: conv(jax.nn.relu(conv(x, a)), b))
  x = jnp.ones([{'N': batch, 'H': 32, 'W': 32, 'C': 16}[d] for d in layout])
  return lambda: jax.block_until_ready(fn(x))


def _narrow_onnxruntime(k, batch, layout=None):
  import numpy as np
  import onnx
  import onnxruntime as ort
  from onnx import helper, numpy_helper
  weights = [numpy_helper.from_array(np.full(s, 0.01, np.float32), n)
             for n, s in (('a', (k, 16, 3, 3)), ('b', (16, k, 3, 3)))]
  nodes = [helper.make_node('Conv', ['x', 'a'], ['y'], pads=[1] * 4),
           helper.make_node('Relu', ['y'], ['r']),
           helper.make_node('Conv', ['r', 'b'], ['z'], pads=[1] * 4)]
  io = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                      ['B', 16, 32, 32]) for n in 'xz']
  graph = helper.make_graph(nodes, 'pair', [io[0]], [io[1]], weights)
  session = ort.InferenceSession(helper.make_model(graph).SerializeToString(),
                                 providers=['CPUExecutionProvider'])
  x = np.ones((batch, 16, 32, 32), np.float32)
  return lambda: session.run(['z'], {'x': x})


def _narrow_torch(k, batch, layout=None):
  import torch
  a, b = torch.nn.Conv2d(16, k, 3, padding=1), torch.nn.Conv2d(k, 16, 3,
                                                                padding=1)
  x = torch.ones(batch, 16, 32, 32)

  def run():
    with torch.inference_mode():
      b(torch.relu(a(x)))
  return run


def worker(side: str) -> None:
  """Answers `build`, `time` and `narrow` requests on stdin."""
  if side in ('xla', 'xla_1thread'):
    from ekg_jax.runtime import xla_config
    xla_config.set_fast_cpu_flags()
  if side == 'xla_1thread':
    os.environ['XLA_FLAGS'] += ' --xla_cpu_multi_thread_eigen=false'
  base = 'xla' if side.startswith('xla') else side
  build = globals()[f'_build_{base}']
  narrow = globals()[f'_narrow_{base}']
  runs, inputs = {}, {}
  for line in sys.stdin:
    request = json.loads(line)
    if request['cmd'] == 'build':
      start = time.perf_counter()
      runs, macs = build(request['nets'], request['depth'])
      reply = {'macs': macs, 'build_s': time.perf_counter() - start}
    elif request['cmd'] == 'time':
      b = request['batch']
      x = inputs.setdefault(b, _uint8(b))
      fn = lambda: runs[request['net']](x)
      reply = {'seconds': _time(fn, request['calls'])}
    else:
      fn = narrow(request['k'], request['batch'], request['layout'])
      reply = {'seconds': _time(fn, request['calls'])}
    print(json.dumps(reply), flush=True)


def _time(fn, calls: int) -> float:
  """Median seconds of `calls` calls after one warm-up call."""
  fn()
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ---------------------------------------------------------------------------
# The driver.


def sides(wanted) -> dict:
  """Side -> the Python that runs its worker (an absent virtualenv or
  [onnx] extra leaves its side out, and the results say so)."""
  import importlib.util
  onnx = all(importlib.util.find_spec(m) for m in ONNX_MODULES)
  return {side: PYTHONS.get(side, sys.executable) for side in wanted
          if os.path.exists(PYTHONS.get(side, sys.executable))
          and (side != 'onnxruntime' or onnx)}


def measure(o: dict, log) -> dict:
  from workers import Worker, latencies, stats, time_in_turns
  nets = {n: k for n, k in widths(o['depth']).items() if n in o['nets']}
  workers = {side: Worker(side, [python, os.path.abspath(__file__),
                                 f'--worker={side}'])
             for side, python in sides(o['sides']).items()}
  out = {'sides': list(workers), 'missing': sorted(
      set(o['sides']) - set(workers)), 'nets': nets, 'latency': {},
         'narrow': {}}
  for side, w in workers.items():
    reply = w('build', nets=nets, depth=o['depth'])
    out.setdefault('build_s', {})[side] = reply['build_s']
    out['macs'] = reply['macs'] or out.get('macs')
    log(f'{side}: built in {reply["build_s"]:.1f} s')
  narrow = {}

  def time_narrow(side, w, b):
    """The narrow-convolution pairs, in the side's turn after its last
    batch."""
    layouts = ('NHWC', 'NCHW') if side.startswith('xla') else (None,)
    for k in o['narrow'] if b == o['batches'][-1] else ():
      for layout in layouts:
        t = w('narrow', k=k, batch=o['narrow_batch'], calls=2,
              layout=layout)['seconds']
        name = side + ('_nchw' if layout == 'NCHW' else '')
        narrow.setdefault((name, k), []).append(t)

  times = time_in_turns(workers, o, nets, log, also=time_narrow)
  m = out['macs']
  out['latency'] = latencies(times, {n: m['dense'] / m[n] for n in nets
                                     if n != 'dense'})
  for (name, k), t in narrow.items():
    out['narrow'].setdefault(name, {})[str(k)] = stats(t)
  return out


def markdown(r: dict) -> str:
  m = r['macs']
  ideal = {n: m['dense'] / m[n] for n in m}
  lines = [f"Machine: {r['machine']}; {r['date']}; medians (min-max) over "
           f"{r['options']['repeats']} alternating repetitions. MACs: dense "
           f"{m['dense']:,}, " + ', '.join(
               f'{n} {m[n]:,} (ideal speed-up {ideal[n]:.2f}x)'
               for n in m if n != 'dense') + '.', '',
           '| path | batch | dense ms | ' + ' | '.join(
               f'{n} ms | {n} speed-up (of ideal)' for n in m if n != 'dense')
           + ' |', '|---|---|---|' + '---|---|' * (len(m) - 1)]
  fmt = lambda s, f=1e3: (f"{s['median'] * f:.2f} ({s['min'] * f:.2f}-"
                          f"{s['max'] * f:.2f})")
  for side, by_batch in r['latency'].items():
    for b, e in by_batch.items():
      cells = [fmt(e['dense'])]
      for n in m:
        if n != 'dense':
          cells += [fmt(e[n]), f"{fmt(e[f'{n}_speedup'], 1)}x "
                    f"({e[f'{n}_of_ideal']:.0%})"]
      lines.append(f'| {side} | {b} | ' + ' | '.join(cells) + ' |')
  ks = r['options']['narrow']
  lines += ['', f"**Narrow convolutions**: 3x3 conv 16 -> k -> 16 channels "
            f"(ReLU between), {r['options']['narrow_batch']}x32x32, ms; "
            'MACs are proportional to k.', '',
            '| path | ' + ' | '.join(f'k={k}' for k in ks) + ' |',
            '|---|' + '---|' * len(ks)]
  for side, by_k in r['narrow'].items():
    lines.append(f'| {side} | ' + ' | '.join(
        f"{by_k[str(k)]['median'] * 1e3:.1f}" for k in ks) + ' |')
  if r['missing']:
    lines += ['', f"Not measured (no virtualenv): {', '.join(r['missing'])}."]
  return '\n'.join(lines) + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--out-dir', default=os.path.join(HERE, 'results'))
  parser.add_argument('--machine', default='cpu-2cores')
  args = parser.parse_args(argv)
  if args.worker:
    return worker(args.worker)
  sys.path.insert(0, HERE)
  import platform
  o = QUICK if args.quick else FULL
  log = lambda s: print(f'{time.strftime("%H:%M:%S")} {s}', flush=True)
  result = measure(o, log)
  result.update(options={**o, 'calls': {str(k): v for k, v in
                                        o['calls'].items()}},
                machine=f'{platform.processor() or platform.machine()}, '
                f'{os.cpu_count()} cores',
                date=time.strftime('%Y-%m-%d'),
                command='python benchmarks/speedup.py' + (
                    ' --quick' if args.quick else ''))
  os.makedirs(args.out_dir, exist_ok=True)
  base = os.path.join(args.out_dir, f'speedup-{args.machine}')
  with open(base + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  with open(base + '.md', 'w') as f:
    f.write(markdown(result))
  print(markdown(result))


if __name__ == '__main__':
  main()
