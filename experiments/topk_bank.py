"""How far a top-k memory bank's KD target is from the dense bank's, and
the bank's bytes for ImageNet (issue 17, item 4). No training.

From a dense bank (W/memory_bank/bank.npz), for each k: the top-k form as
`memory_bank.build` stores it (`topk.compress`, cast to the bank's dtype),
rebuilt by `topk.expand`, then the target the fine-tuning uses, through
`distill.distillation_target` at the workdir's finetune.temperature, on the
fine-tuning's batches (epoch 0's order, batch 128). The filter needs the
student's mean logits; stand-ins span its decisions: the (dense) logits of
teacher j (then the teachers closer to teacher 0 than j pass), and a far
student (the negated teacher 0: every teacher passes). Reported, over
images: KL(dense target || top-k target) at temperature T (in nats, without
the loss's factor T), per teacher and for the ensemble targets, plus how
often the filter picks other teachers, and the tail mass r that the bound
KL <= r log(C - k) turns into ImageNet's terms.

  PYTHONPATH=. .venv/bin/python experiments/topk_bank.py \
    --bank workdirs/evidence/ekg_ft_ensemble/memory_bank/bank.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax.training import distill, losses
from ekg_jax.knowledge import memory_bank, topk
from ekg_jax.training import steps as train_lib

IMAGENET_IMAGES, IMAGENET_CLASSES = 1_281_167, 1000


def stats(x) -> dict:
  x = np.asarray(x, np.float64).ravel()
  return {'mean': float(x.mean()), 'p99': float(np.percentile(x, 99)),
          'max': float(x.max())}


def kl(p_logits, q_logits, temperature):
  """KL(softmax(p / T) || softmax(q / T)) in nats, per row."""
  return losses.kl_divergence(p_logits, q_logits, temperature) / temperature


def make_batch_measure(k: int, temperature: float, dtype):
  """jit((dense batch [B, K, C] float32, students [S, B, C]) -> per-image
  measures; S students' mean logits feed the teacher filter)."""
  @jax.jit
  def measure(dense, students):
    classes = dense.shape[-1]
    values, indices, tail = topk.compress(dense, k, temperature)
    stored = topk.TopKLogits(values.astype(dtype),
                             indices.astype(topk.index_dtype(classes)),
                             tail.astype(dtype), classes, temperature)
    rebuilt = topk.expand(stored)
    p = jax.nn.softmax(dense / temperature)
    rest = 1.0 - jnp.take_along_axis(p, indices, -1).sum(-1)
    # The far student (negated teacher 0) lets every teacher pass.
    students = jnp.concatenate([students, -dense[None, :, 0]])

    def target_pair(student):
      full, used_full = distill.distillation_target(dense, student,
                                                    temperature)
      approx, used_approx = distill.distillation_target(rebuilt, student,
                                                        temperature)
      return (kl(full, approx, temperature), jnp.all(used_full == used_approx),
              used_full.sum())
    target_kl, same_filter, used = jax.lax.map(target_pair, students)
    return {'teacher_kl': kl(dense, rebuilt, temperature), 'tail_mass': rest,
            'target_kl': target_kl, 'same_filter': same_filter,
            'teachers_used': used,
            'max_logit_change': jnp.abs(rebuilt - dense).max()}
  return measure


def measure_k(logits: np.ndarray, students: np.ndarray, k: int,
              temperature: float, dtype, batches: np.ndarray) -> dict:
  measure = make_batch_measure(k, temperature, dtype)
  parts = [jax.device_get(measure(jnp.asarray(logits[idx], jnp.float32),
                                  jnp.asarray(students[:, idx])))
           for idx in batches]
  # Per image: images on the last axis of target_kl, the first elsewhere.
  cat = {'target_kl': np.concatenate([p['target_kl'] for p in parts], -1),
         **{key: np.concatenate([p[key] for p in parts])
            for key in ('teacher_kl', 'tail_mass')}}
  cases = (['fine-tuned student'] if len(students) else []) + [
      'far student (all teachers)']
  same = np.stack([p['same_filter'] for p in parts], 1)  # [cases, batches]
  used = np.stack([p['teachers_used'] for p in parts], 1)
  return {
      'k': k,
      'teacher_kl': stats(cat['teacher_kl']),
      'teacher0_kl': stats(cat['teacher_kl'][:, 0]),  # knowledge='single'
      'tail_mass': stats(cat['tail_mass']),
      'bound_holds': bool(np.all(cat['teacher_kl'] <= cat['tail_mass'] * (
          np.log(max(logits.shape[-1] - k, 1))) + 1e-6)),
      'max_logit_change': float(max(p['max_logit_change'] for p in parts)),
      'target_kl': {case: {**stats(cat['target_kl'][i]),
                           'teachers_used_mean': float(used[i].mean()),
                           'filter_same_fraction': float(same[i].mean())}
                    for i, case in enumerate(cases)},
  }


def student_logits(workdir: str, student: str, batch_size: int = 500
                   ) -> np.ndarray:
  """[N, C] logits of a saved (slimmed) network on the workdir's train
  split, unaugmented, running BN statistics."""
  from ekg_jax.data import datasets as data_lib
  from ekg_jax.config import default_config
  from ekg_jax.run.phases import common
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  config = default_config()
  config.model.update(saved['model'])
  config.data.update({k: tuple(v) if isinstance(v, list) else v
                      for k, v in saved['data'].items()})
  config.init_checkpoint = student
  model = common.build_model(config)
  variables = common.init_variables(config, model, workdir)
  train = common.load_train(config)
  apply = jax.jit(lambda v, x: model.apply(
      v, data_lib.normalize(x, config.data.mean, config.data.std),
      train=False))
  return np.concatenate([np.asarray(apply(variables, train.images[sl]))
                         for sl in data_lib.batches(len(train), batch_size)])


def bank_bytes(images: int, teachers: int, classes: int, ks) -> dict:
  rows = {'dense float32': images * topk.bytes_per_image(teachers, classes,
                                                          0, 4),
          'dense bfloat16': images * topk.bytes_per_image(teachers, classes,
                                                           0, 2)}
  for k in ks:
    rows[f'top-{k} bfloat16'] = images * topk.bytes_per_image(
        teachers, classes, k, 2)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--bank', required=True, help='a dense bank.npz')
  parser.add_argument('--temperature', type=float, default=None,
                      help="default: finetune.temperature of the bank's "
                      'workdir (config.json), else 4')
  parser.add_argument('--ks', default='1,2,3,5', help='k values to measure')
  parser.add_argument('--imagenet_ks', default='5,10,20,50')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--student', default='',
                      help="a saved network (the workdir's finetune/final) "
                      "whose logits feed the teacher filter")
  parser.add_argument('--out', default='experiments/results/topk_bank.json')
  args = parser.parse_args(argv)

  start = time.time()
  bank = memory_bank.MemoryBank.load(args.bank)
  if bank.top_k or not bank.complete:
    sys.exit(f'{args.bank}: needs a complete dense bank (top_k '
             f'{bank.top_k}, {bank.done} of {len(bank.logits)} images)')
  temperature = args.temperature
  config_path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(args.bank))), 'config.json')
  if temperature is None and os.path.exists(config_path):
    with open(config_path) as f:
      temperature = json.load(f)['finetune']['temperature']
  temperature = 4.0 if temperature is None else temperature
  logits = bank.logits
  n, teachers, classes = logits.shape
  ks = [int(k) for k in args.ks.split(',')] + [classes]  # k = C: exact
  steps = train_lib.steps_per_epoch(n, args.batch_size)
  batches = train_lib.epoch_order(args.seed, 0, n, steps, args.batch_size)
  students = np.zeros((0, n, classes), np.float32)
  if args.student:
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(args.bank)))
    students = student_logits(workdir, args.student)[None]
  per_k = [measure_k(logits, students, k, temperature, logits.dtype, batches)
           for k in ks]
  imagenet_ks = [int(k) for k in args.imagenet_ks.split(',')]
  result = {
      'command': 'PYTHONPATH=. python experiments/topk_bank.py ' + ' '.join(
          sys.argv[1:] if argv is None else argv),
      'bank': args.bank, 'images': n, 'images_measured': int(batches.size),
      'teachers': teachers, 'classes': classes, 'dtype': str(logits.dtype),
      'temperature': temperature, 'batch_size': args.batch_size,
      'student': args.student,
      'per_k': per_k,
      'bytes_this_bank': bank_bytes(n, teachers, classes, ks[:-1]),
      'bytes_imagenet': bank_bytes(IMAGENET_IMAGES, teachers,
                                   IMAGENET_CLASSES, imagenet_ks),
      'imagenet': {'images': IMAGENET_IMAGES, 'classes': IMAGENET_CLASSES,
                   'teachers': teachers},
      'seconds': round(time.time() - start, 1)}
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  # docs/memory-bank.md shows this table as written (tests/knowledge/test_topk_bank.py).
  with open(os.path.splitext(args.out)[0] + '.md', 'w') as f:
    f.write(table(result) + '\n')
  print(table(result))
  return 0


def table(r: dict) -> str:
  far, real = 'far student (all teachers)', 'fine-tuned student'
  lines = [f'{r["images_measured"]} of {r["images"]} images, {r["teachers"]} '
           f'teachers, {r["classes"]} classes, {r["dtype"]}, T = '
           f'{r["temperature"]}; KL in nats, mean / p99 / max over images',
           '',
           '| k | bytes per image | KL per teacher | KL of the target, all '
           'teachers | KL of the target, filter of the fine-tuned student '
           '| filter\'s choice unchanged | tail mass r, mean / max |',
           '|---|---|---|---|---|---|---|']
  g = lambda s: f'{s["mean"]:.1e} / {s["p99"]:.1e} / {s["max"]:.1e}'
  for row in r['per_k']:
    student = row['target_kl'].get(real)
    same = (f'{100 * student["filter_same_fraction"]:.1f}% of batches'
            if student else '-')
    lines.append(
        f'| {row["k"]} '
        f'| {topk.bytes_per_image(r["teachers"], r["classes"], row["k"], 2)} '
        f'| {g(row["teacher_kl"])} | {g(row["target_kl"][far])} '
        f'| {g(student) if student else "-"} '
        f'| {same} '
        f'| {row["tail_mass"]["mean"]:.3f} / {row["tail_mass"]["max"]:.3f} |')
  dense = topk.bytes_per_image(r['teachers'], r['classes'], 0, 2)
  lines += [f'| dense | {dense} | | | | | |', '',
            f'ImageNet ({r["imagenet"]["images"]:,} images, '
            f'{r["imagenet"]["classes"]} classes, {r["teachers"]} teachers):',
            '', '| storage | bytes | GB |', '|---|---|---|']
  for name, b in r['bytes_imagenet'].items():
    lines.append(f'| {name} | {b:,} | {b / 1e9:.2f} |')
  return '\n'.join(lines)


if __name__ == '__main__':
  sys.exit(main())
