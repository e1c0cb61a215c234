"""The benchmark drivers' plumbing: worker processes spoken to one JSON line
at a time, the order sides take turns in, the timing loop over networks and
batches, and the statistics of repeated timings (used by `run.py`,
`speedup.py`, `authors_tf.py`, `device_check.py` and the ViT demo's
`experiments/vit_latency.py`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEARCH_SUMMARY = os.path.join(ROOT, 'experiments', 'results',
                              'r56_search_summary.json')


class Worker:
  """A benchmark process spoken to one JSON line at a time."""

  def __init__(self, name: str, argv: list, env: Optional[dict] = None):
    self.name = name
    self._log = tempfile.TemporaryFile(mode='w+')
    self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self._log,
                                  text=True, env=env, cwd=ROOT)

  def __call__(self, cmd: str, **request) -> dict:
    self._proc.stdin.write(json.dumps({'cmd': cmd, **request}) + '\n')
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      self._log.seek(0)
      tail = self._log.read()[-3000:]
      raise RuntimeError(f'{self.name} worker died on {cmd!r}:\n{tail}')
    return json.loads(line)

  def close(self):
    self._proc.stdin.close()
    self._proc.wait()
    self._log.close()


def settle(seconds: float = 1.0) -> None:
  """Lets the side that just ran go idle (OpenMP and Eigen threads spin a
  while after their work) before the next one is timed."""
  time.sleep(seconds)


def in_turn(workers: dict, rep: int) -> list:
  """The sides in order on even repetitions, reversed on odd ones, so no
  side always runs right after the same other one."""
  items = list(workers.items())
  return items if rep % 2 == 0 else items[::-1]


def time_in_turns(workers: dict, o: dict, nets, log, also=None) -> dict:
  """{(side, batch, network): seconds per repetition}: `o['repeats']`
  repetitions, the sides taking turns (`in_turn`), each timing every network
  at each of `o['batches']` (`o['calls'][batch]` calls a timing); after each
  batch, `also(side, worker, batch)` may time more in the side's turn. The
  workers are closed at the end."""
  times = {}
  for rep in range(o['repeats']):
    for side, w in in_turn(workers, rep):
      for b in o['batches']:
        for net in nets:
          t = w('time', net=net, batch=b, calls=o['calls'][b])['seconds']
          times.setdefault((side, b, net), []).append(t)
        if also:
          also(side, w, b)
      settle()
    log(f'repetition {rep + 1}/{o["repeats"]} done')
  for w in workers.values():
    w.close()
  return times


def latencies(times: dict, ideal: Optional[dict] = None) -> dict:
  """`time_in_turns`' times as {side: {batch: {network: stats,
  network_speedup: dense time / its time, per repetition}}}; with `ideal`
  ({network: dense MACs / its MACs}) also network_of_ideal, the median
  speed-up over the ideal one."""
  out = {}
  for (side, b, net), t in times.items():
    entry = out.setdefault(side, {}).setdefault(str(b), {})
    entry[net] = stats(t)
    if net != 'dense':
      entry[f'{net}_speedup'] = ratio_stats(times, (side, b, net),
                                            (side, b, 'dense'))
      if ideal:
        entry[f'{net}_of_ideal'] = (entry[f'{net}_speedup']['median'] /
                                    ideal[net])
  return out


def share_compilations(prefix: str) -> None:
  """Smoke runs only: every JAX process started from here on keeps its
  compiled programs in one persistent cache, so the same train step, built
  again in the train, ablation and profile sections, compiles once (the
  quick run: 405 s -> 191 s). Its times then say nothing; quick runs check
  that every section runs, not how fast. The folder goes at exit."""
  folder = tempfile.mkdtemp(prefix=prefix)
  atexit.register(shutil.rmtree, folder, True)
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', folder)
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


def jax_worker(variant: str = 'toolkit') -> Worker:
  return Worker(f'jax_{variant}', [sys.executable,
                                   os.path.join(HERE, 'jax_worker.py'),
                                   f'--variant={variant}'])


def torch_worker(mode: str, torch_python: str) -> Worker:
  return Worker(f'torch_{mode}', [torch_python,
                                  os.path.join(HERE, 'torch_reference.py')])


def stats(values: list) -> dict:
  return {'median': statistics.median(values), 'min': min(values),
          'max': max(values), 'n': len(values)}


def slimmed_widths(depth: int) -> dict:
  """The kept channels of the committed ResNet-56 search at 45% FLOPs
  (blocks a shallower network lacks are dropped)."""
  with open(SEARCH_SUMMARY) as f:
    kept = json.load(f)['search']['kept_channels']
  blocks = (depth - 2) // 6
  return {g: k for g, k in kept.items()
          if '/block' not in g or int(g.rsplit('block', 1)[1]) < blocks}


def ratio_stats(times: dict, a, b) -> dict:
  """Speed of a over b (time_b / time_a), per repetition."""
  return stats([tb / ta for ta, tb in zip(times[a], times[b])])
