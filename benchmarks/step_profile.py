"""Where a ResNet-56 search step's time goes on this machine, and how far it
is from the floor that the machine's convolution throughput sets.

  python benchmarks/step_profile.py [--steps=6]

The real search problem (official weights, the 320 validation images, the
default options, `segments` evaluation; `search_startup.official_problem`)
runs steps 1..N as any search does. Steps 2..N give each step's parts as
the search records them (`importance_seconds`, `candidates_seconds`, the
rest host work) without disturbing it. Then one more step runs with every
program call waited on, to split the candidates' time by segment program
(calls, seconds, the MACs it executed, their rate) and the summarising
program; the waiting costs the overlap of host dispatch with compute, so
this step is a little slower than the others (both reported).

The floor: the MACs a step must execute, each convolution's at the rate
this CPU reaches for that convolution shape alone (a jitted
`lax.conv_general_dilated` at the search's batch size, timed here):
- importance: the current network's forward plus its backward to the
  activations (the gate gradients need no weight gradients): twice the
  forward's MACs, on all validation images;
- candidates: each candidate's suffix, from the first segment its gate
  touches to the logits, on all validation images.
Two floors: at the supernet's widths (masks multiply full-width
activations: what this design executes) and at the kept widths (what an
evaluator running slimmed networks would execute).

Writes `results/step-profile-<machine>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from report import machine_info  # noqa: E402
import search_startup  # noqa: E402


def shape(layer) -> tuple:
  """What a convolution's measured rate is keyed by: (in, out, hw,
  kernel)."""
  return (layer.in_channels, layer.out_channels, layer.out_hw,
          layer.kernel_size)


def conv_rates(table, batch: int, reps: int = 5) -> dict:
  """(in, out, hw, kernel) -> MACs per second of that convolution alone,
  forward, stride 1 at its output size (the same MACs as the network's
  strided one), `batch` images, median of `reps` timed calls."""
  import jax
  import jax.numpy as jnp
  from ekg_jax.supernet import flops as flops_lib
  rates = {}
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  for l in table:
    key = shape(l)
    if l.kind != 'conv' or key in rates:
      continue
    x = jnp.ones((batch, *l.out_hw, l.in_channels), jnp.float32)
    w = jnp.ones((*l.kernel_size, l.in_channels, l.out_channels), jnp.float32)
    conv(x, w).block_until_ready()
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      conv(x, w).block_until_ready()
      times.append(time.perf_counter() - t)
    macs = batch * flops_lib.layer_flops(l, l.in_channels, l.out_channels,
                                         include_bn=False)
    rates[key] = macs / statistics.median(times)
  return rates


def segment_costs(table, kept, rates, images: int) -> dict:
  """segment -> [MACs, floor seconds] of one forward on `images` images,
  each layer at its kept widths (`kept=None`: full widths), each
  convolution at its shape's rate (other layers at the best rate)."""
  from ekg_jax.supernet import flops as flops_lib
  best = max(rates.values())
  out = collections.defaultdict(lambda: [0.0, 0.0])
  for l in table:
    def width(gate, full):
      return full if kept is None or gate is None else kept[gate]
    macs = images * flops_lib.layer_flops(
        l, width(l.in_gate, l.in_channels), width(l.out_gate, l.out_channels),
        include_bn=False)
    rate = rates.get(shape(l), best)
    out[l.segment][0] += macs
    out[l.segment][1] += macs / rate
  return out


def floor(ev, kept, candidates, rates, images: int) -> dict:
  """A step's floor seconds and MACs, at the supernet's full widths and at
  the kept widths: importance (forward and backward to the activations:
  twice the forward) plus every candidate's suffix."""
  result = {}
  for name, widths in (('supernet', None), ('kept', kept)):
    whole = segment_costs(ev.table, widths, rates, images)
    importance = [2 * sum(v[i] for v in whole.values()) for i in (0, 1)]
    suffix = [0.0, 0.0]
    for g, k in candidates.items():
      costs = segment_costs(ev.table, None if widths is None
                            else {**kept, g: k}, rates, images)
      for segment, v in costs.items():
        if segment >= ev.first_segment[g]:
          suffix = [suffix[0] + v[0], suffix[1] + v[1]]
    result[name] = {'importance_macs': importance[0],
                    'importance_floor_s': importance[1],
                    'candidates_macs': suffix[0],
                    'candidates_floor_s': suffix[1],
                    'floor_s': importance[1] + suffix[1]}
  return result


@contextlib.contextmanager
def recording(ev, seen: list):
  """While open, `ev` appends each step's (kept, candidates) to `seen`; a
  plain call through, so the steps run as they would."""
  evaluate = ev.evaluate_candidates

  def record(mode, variables, batches, teacher, ranks, kept, candidates,
             boundaries=None):
    seen.append((dict(kept), dict(candidates)))
    return evaluate(mode, variables, batches, teacher, ranks, kept,
                    candidates, boundaries)
  ev.evaluate_candidates = record
  try:
    yield seen
  finally:
    del ev.evaluate_candidates  # the class's method again


def profiled_step(problem, state):
  """One search step with every program call waited on. Returns the new
  state, its seconds and segment or 'summarise' -> [calls, seconds]."""
  import jax
  from ekg_jax import search
  ev = problem.evaluator
  spent = collections.defaultdict(lambda: [0, 0.0])

  def timed(key, fn):
    def call(*args):
      t = time.perf_counter()
      out = jax.block_until_ready(fn(*args))
      spent[key][0] += 1
      spent[key][1] += time.perf_counter() - t
      return out
    return call
  programs, summarise = ev.segment_programs, ev.summarise_batches
  ev.segment_programs = [timed(k, p) for k, p in enumerate(programs)]
  ev.summarise_batches = timed('summarise', summarise)
  try:
    t = time.perf_counter()
    new = search.search_step(problem, state, 'segments')
    total = time.perf_counter() - t
  finally:
    ev.segment_programs, ev.summarise_batches = programs, summarise
  return new, total, dict(spent)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--steps', type=int, default=6)
  p.add_argument('--weights', default=search_startup._official())
  p.add_argument('--tfds-dir', default=os.environ.get(
      'TFDS_DATA_DIR', os.path.join(os.path.dirname(search_startup.REPO),
                                    'shared', 'tfds')))
  p.add_argument('--out', default=os.path.join(
      'benchmarks', 'results', 'step-profile-cpu-2cores'))
  args = p.parse_args()
  started = datetime.datetime.now(datetime.timezone.utc)
  import jax
  from ekg_jax import search
  with tempfile.TemporaryDirectory() as tmp:
    args.data = os.path.join(tmp, 'val.npz')
    search_startup.prepare(args.data, args.tfds_dir)
    problem = search_startup.official_problem(args, 'segments')
  ev, images = problem.evaluator, sum(problem.batches.sizes)
  state = search.init_state(problem)
  with recording(ev, []) as seen:
    for _ in range(args.steps):
      state = search.search_step(problem, state, 'segments')
      e = state.history[-1]
      print(f"step {e['step']}: {e['seconds']:.2f} s (importance "
            f"{e['importance_seconds']:.2f}, candidates "
            f"{e['candidates_seconds']:.2f})", flush=True)
    state, profiled_seconds, spent = profiled_step(problem, state)
  rates = conv_rates(ev.table, problem.batches.sizes[0])
  steps = []
  for e, (kept, candidates) in zip(state.history[1:], seen):
    fl = floor(ev, kept, candidates, rates, images)
    steps.append({
        **{k: e[k] for k in ('step', 'gate', 'candidates', 'seconds',
                             'importance_seconds', 'candidates_seconds')},
        'floor': fl, 'over_floor': {
            n: e['seconds'] / f['floor_s'] for n, f in fl.items()}})
  timed_steps = steps[1:-1]  # step 1 compiles; the last one is profiled
  median = lambda f: statistics.median(f(x) for x in timed_steps)
  full = segment_costs(ev.table, None, rates, images)
  segments = {k: {'calls': calls, 'seconds': round(seconds, 4),
                  'macs': calls * full[k][0],
                  'macs_per_s': calls * full[k][0] / seconds,
                  'floor_s': round(calls * full[k][1], 4)}
              for k, (calls, seconds) in sorted(
                  (k, v) for k, v in spent.items() if k != 'summarise')}
  result = {
      'command': f'python benchmarks/step_profile.py --steps={args.steps}',
      'date': started.strftime('%Y-%m-%d %H:%M UTC'),
      'machine': machine_info({'jax': jax.__version__}), 'images': images,
      'median': {
          'step': median(lambda x: x['seconds']),
          'importance': median(lambda x: x['importance_seconds']),
          'candidates': median(lambda x: x['candidates_seconds']),
          'host': median(lambda x: x['seconds'] - x['importance_seconds']
                         - x['candidates_seconds']),
          **{f'{part}_floor_{n}': median(lambda x: x['floor'][n][key])
             for n in ('supernet', 'kept') for part, key in (
                 ('importance', 'importance_floor_s'),
                 ('candidates', 'candidates_floor_s'), ('step', 'floor_s'))},
          **{f'over_floor_{n}': median(lambda x: x['over_floor'][n])
             for n in ('supernet', 'kept')}},
      'steps': steps,
      'profiled_step': {'step': steps[-1]['step'],
                        'seconds': round(profiled_seconds, 3),
                        'summarise': spent.get('summarise', [0, 0.0]),
                        'segments': segments},
      'conv_macs_per_s': {f'{a}->{b}@{hw[0]} k{ks[0]}': r
                          for (a, b, hw, ks), r in rates.items()}}
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  markdown = report(result)
  with open(args.out + '.md', 'w') as f:
    f.write(markdown)
  print(markdown)


def report(r: dict) -> str:
  """The Markdown summary: the parts of a step against their floors."""
  m, prof = r['median'], r['profiled_step']
  last = r['steps'][-1]
  segs = prof['segments'].values()
  waited = sum(v['seconds'] for v in segs) + prof['summarise'][1]
  macs = sum(v['macs'] for v in segs)
  rows = [('importance pass', 'importance'), ('candidates', 'candidates'),
          ('host work between', 'host'), ('whole step', 'step')]
  lines = [
      '# Where a search step goes, and its floor\n',
      f"`{r['command']}`, {r['date']}, {r['machine']['cpu']}, "
      f"{r['machine']['cpus']} cores; ResNet-56 from the official weights, "
      f"{r['images']} validation images, `segments` evaluation. Medians over "
      f"steps 2-{len(r['steps']) - 1} as the search records them. Floor: "
      "the step's MACs at each convolution shape's measured rate "
      "(`conv_macs_per_s` in the JSON), at the supernet's full widths (what "
      'masked evaluation executes) and at the kept widths; the importance '
      'pass counted as twice the forward.\n',
      '| part | median s | floor s (supernet) | floor s (kept) |',
      '|---|---|---|---|']
  for name, key in rows:
    lines.append(f"| {name} | {m[key]:.2f} | "
                 f"{m.get(f'{key}_floor_supernet', 0.0):.2f} | "
                 f"{m.get(f'{key}_floor_kept', 0.0):.2f} |")
  lines += [
      '', f"A step takes {m['over_floor_supernet']:.2f}x its supernet floor "
      f"and {m['over_floor_kept']:.2f}x its kept-width floor (medians).",
      '', f"Step {prof['step']} ({last['candidates']} candidates) with every "
      f"program call waited on: {prof['seconds']:.2f} s; the candidates' "
      f"{sum(v['calls'] for v in segs)} segment-program calls and "
      f"{prof['summarise'][0]} summaries {waited:.2f} s (summaries "
      f"{prof['summarise'][1]:.2f} s), {macs / 1e9:.1f} GMACs at "
      f"{macs / 1e9 / max(waited, 1e-9):.1f} GMAC/s; convolutions alone run "
      f"at {min(r['conv_macs_per_s'].values()) / 1e9:.1f}-"
      f"{max(r['conv_macs_per_s'].values()) / 1e9:.1f} GMAC/s here."]
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
