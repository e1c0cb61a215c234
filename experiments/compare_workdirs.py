"""Are two pipeline workdirs the same run? The guard of a refactor that must
change no number (issue 14): run the same command before and after, then

  python experiments/compare_workdirs.py workdirs/before workdirs/after

compares the summary and the search history without their timings, the
search state, the memory bank and the saved networks (pretrain/final,
finetune/final), every array bit for bit. Exit status 1 and one line per
difference when they differ.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

TIMINGS = ('seconds', 'images_per_second', 'wall', 'compile', 'breakdown')


def without_timings(obj, also=()):
  """obj without the keys that measure time (any key holding a TIMINGS
  word) and the keys `also`, at every depth."""
  if isinstance(obj, dict):
    return {k: without_timings(v, also) for k, v in obj.items()
            if k not in also and not any(t in k for t in TIMINGS)}
  if isinstance(obj, list):
    return [without_timings(v, also) for v in obj]
  return obj


def _json(path, workdir=None):
  with open(path) as f:
    text = f.read()
  if workdir:  # paths inside the workdir name it: compare them relative
    for form in (os.path.abspath(workdir), workdir.rstrip('/')):
      text = text.replace(form, '<workdir>')
  return without_timings(json.loads(text))


def _npz(path):
  with np.load(path) as z:
    out = {k: z[k] for k in z.files}
  for key in ('history', 'meta'):  # JSON entries that hold timings too
    if key in out:
      out[key] = json.dumps(without_timings(json.loads(str(out[key]))))
  return out


def _model(path):
  from flax import traverse_util
  from ekg_jax.files import checkpoint
  import orbax.checkpoint as ocp
  config = checkpoint.read_model_config(path)
  with ocp.StandardCheckpointer() as ckptr:
    raw = ckptr.restore(os.path.join(os.path.abspath(path), 'variables'))
  return config, {'/'.join(k): np.asarray(v) for k, v in
                  traverse_util.flatten_dict(raw).items()}


def _up(path):
  return os.path.dirname(path)


def _same_arrays(a: dict, b: dict) -> list:
  if set(a) != set(b):
    return [f'entries differ: {sorted(set(a) ^ set(b))[:5]}']
  return [f'{k} differs' for k in sorted(a)
          if np.asarray(a[k]).shape != np.asarray(b[k]).shape
          or not np.array_equal(a[k], b[k])]


CHECKS = {
    'summary.json': lambda a, b: ([] if _json(a, _up(a)) == _json(b, _up(b))
                                  else ['differ']),
    'search/history.json': lambda a, b: ([] if _json(a) == _json(b)
                                         else ['differ']),
    'search/state.npz': lambda a, b: _same_arrays(_npz(a), _npz(b)),
    'memory_bank/bank.npz': lambda a, b: _same_arrays(_npz(a), _npz(b)),
    'pretrain/final': lambda a, b: _same_models(a, b),
    'finetune/final': lambda a, b: _same_models(a, b),
}


def _same_models(a, b) -> list:
  (config_a, vars_a), (config_b, vars_b) = _model(a), _model(b)
  return (['model configs differ'] if config_a != config_b else []) + \
      _same_arrays(vars_a, vars_b)


def compare(before: str, after: str) -> list[str]:
  problems = []
  for name, check in CHECKS.items():
    a, b = os.path.join(before, name), os.path.join(after, name)
    if not os.path.exists(a) and not os.path.exists(b):
      continue
    if not (os.path.exists(a) and os.path.exists(b)):
      problems.append(f'{name}: only in {before if os.path.exists(a) else after}')
      continue
    problems += [f'{name}: {p}' for p in check(a, b)]
  return problems


def main(argv) -> int:
  if len(argv) != 3:
    print(__doc__, file=sys.stderr)
    return 2
  problems = compare(argv[1], argv[2])
  for p in problems:
    print(p)
  if not problems:
    print(f'same: {", ".join(n for n in CHECKS if os.path.exists(os.path.join(argv[1], n)))}')
  return 1 if problems else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
