"""The ViT demonstration's stage 4 (experiments/vit_demo.py): latency of
the dense and slimmed networks' exported forward (uint8 images -> logits) on
XLA:CPU (`deploy.export.forward`, jitted with the toolkit's CPU flags) and
ONNX Runtime (`deploy.export_onnx.to_onnx`): one worker process per path,
the paths taking turns, alternating repetitions of median-of-`calls`
timings (benchmarks/speedup.py's timing and benchmarks/workers.py's
plumbing). `python experiments/vit_latency.py SIDE` is a worker."""

from __future__ import annotations

import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, 'benchmarks')
SIDES = ('xla', 'onnxruntime')
ONNX_MODULES = ('jax2onnx', 'onnx', 'onnxruntime')


def _networks(nets: dict):
  """{name: (model, variables, network.json)}: 'dense' from the pretrained
  checkpoint at the export's architecture, the arms from their exports."""
  import jax
  import jax.numpy as jnp
  from ekg_jax.deploy import export
  from ekg_jax.files import checkpoint
  out = {}
  for name, spec in nets.items():
    model, variables = export.load(spec['export'])
    with open(os.path.join(spec['export'], export.NETWORK)) as f:
      network = json.load(f)
    if spec.get('checkpoint'):  # the dense network, pretrained weights
      model = model.clone(widths=())
      reference = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(
          (1, *network['input_shape']), jnp.float32))
      variables = checkpoint.load_model_variables(spec['checkpoint'],
                                                  reference)
    out[name] = (model, variables, network)
  return out


def _build_xla(nets):
  import jax
  from ekg_jax.deploy import export
  runs = {}
  for name, (model, variables, network) in _networks(nets).items():
    fn = jax.jit(export.forward(model, variables, network['mean'],
                                network['std']))
    runs[name] = lambda x, fn=fn: jax.block_until_ready(fn(x))
  return runs


def _build_onnxruntime(nets):
  import tempfile
  import onnxruntime as ort
  from ekg_jax.deploy import export_onnx
  runs = {}
  for name, (model, variables, network) in _networks(nets).items():
    path = os.path.join(tempfile.mkdtemp(), 'model.onnx')
    export_onnx.to_onnx(model, variables, path, network['input_shape'],
                        network['mean'], network['std'])
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    runs[name] = lambda x, s=session: s.run(['logits'], {'images': x})
  return runs


def worker(side: str) -> None:
  """Answers `build` and `time` requests on stdin, one JSON line each."""
  import numpy as np
  sys.path.insert(0, BENCHMARKS)
  from speedup import _time
  if side == 'xla':
    from ekg_jax.runtime import xla_config
    xla_config.set_fast_cpu_flags()
  runs, inputs = {}, {}
  for line in sys.stdin:
    request = json.loads(line)
    if request['cmd'] == 'build':
      start = time.perf_counter()
      runs = globals()[f'_build_{side}'](request['nets'])
      reply = {'build_s': time.perf_counter() - start}
    else:
      b = request['batch']
      x = inputs.setdefault(b, np.random.default_rng(0).integers(
          0, 256, (b, 32, 32, 3), np.uint8))
      reply = {'seconds': _time(lambda: runs[request['net']](x),
                                request['calls'])}
    print(json.dumps(reply), flush=True)


def measure_speedup(nets: dict, o: dict, log) -> dict:
  """Latency per path, batch and network; speed-ups per repetition;
  `log(line)` reports progress."""
  import importlib.util
  sys.path.insert(0, BENCHMARKS)
  from workers import Worker, latencies, time_in_turns
  onnx = all(importlib.util.find_spec(m) for m in ONNX_MODULES)
  sides = [s for s in SIDES if s != 'onnxruntime' or onnx]
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
  workers = {s: Worker(s, [sys.executable, os.path.abspath(__file__), s],
                     env=env) for s in sides}
  out = {'sides': sides, 'missing': sorted(set(SIDES) - set(sides)),
         'options': {**o, 'calls': {str(k): v for k, v in o['calls'].items()}},
         'build_s': {}, 'latency': {}}
  for side, w in workers.items():
    out['build_s'][side] = round(w('build', nets=nets)['build_s'], 1)
    log(f'speedup: {side} built in {out["build_s"][side]} s')
  out['latency'] = latencies(time_in_turns(
      workers, o, nets, lambda line: log(f'speedup: {line}')))
  return out


if __name__ == '__main__':
  worker(sys.argv[1])
