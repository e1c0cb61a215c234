"""The JAX workloads the benchmarks time, on the toolkit's own code paths:
a training step (`train.make_step` on the pipeline's StepRunner), a search
step and a whole search (`search.Evaluator`), the memory bank's teacher
logits, inference, and single convolutions. `jax_worker.py` serves them to
the drivers one JSON line at a time; `device_check.py` calls them directly.
Import this after setting XLA flags: it starts JAX.
"""

from __future__ import annotations

import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ekg_jax.files import official
from ekg_jax.data import datasets
from ekg_jax.training import distill
from ekg_jax.supernet import flops, gates
from ekg_jax.knowledge import memory_bank
from ekg_jax.training import optimizers
from ekg_jax.training import steps as train_lib
from ekg_jax.supernet import ops
from ekg_jax import search
from ekg_jax.config import REFERENCE_MEAN, REFERENCE_STD, default_config
from ekg_jax.models import create_model

SHARED = os.environ.get('EKG_SHARED', os.path.join(
    os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared'))
# Segment outputs materialised as the toolkit chooses (None); `jax_worker.py
# --variant` without `materialize` sets False (never).
MATERIALIZE = None
COMPILES = [0]  # XLA compilations in this process


def _count_compiles(event: str, _seconds: float, **_):
  if event == '/jax/core/compile/backend_compile_duration':
    COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def model_for(depth: int, widths=None):
  return create_model(f'resnet{depth}',
                      widths=tuple(sorted((widths or {}).items())),
                      materialize_segments=MATERIALIZE)


def init(model):
  return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def macs(model) -> int:
  return flops.count_flops(gates.layer_table(model, (32, 32, 3)))


class Train:
  """One training step of the toolkit (`train.make_step` on the
  StepRunner the pipeline uses) on random uint8 data held on device."""

  def __init__(self, kind, batch, steps, widths, teachers, depth,
               program='auto', dtype='float32'):
    self.model = model_for(depth, widths)
    if dtype != 'float32':  # as trainer.train does for model.dtype
      self.model = self.model.clone(dtype=jnp.dtype(dtype))
    section = 'finetune' if kind == 'finetune' else 'pretrain'
    config = default_config()  # the CIFAR recipes, as the pipeline runs them
    self.config = distill.StepConfig.from_config(config, section)
    tx = optimizers.make_optimizer(config[section], 100)
    self.state = train_lib.TrainState.create(init(self.model), tx)
    self.runner = train_lib.StepRunner(
        train_lib.make_step(self.model, tx, self.config), program)
    rng = np.random.default_rng(0)
    pool = 4 * batch
    self.data = train_lib.TrainData(
        jnp.asarray(rng.integers(0, 256, (pool, 32, 32, 3), np.uint8)),
        jnp.asarray(rng.integers(0, 10, (pool,)), jnp.int32),
        jnp.asarray(rng.normal(size=(pool, teachers, 10)), jnp.float32)
        if kind == 'finetune' else None)
    self.indices = (np.arange(steps * batch) % pool).reshape(steps, batch)
    self.key = jax.random.key(1)
    self.flops_per_step = (2 * 3 * macs(self.model) * batch
                           * self.config.views)

  def time(self) -> float:
    start = time.perf_counter()
    self.state, metrics = self.runner(self.state, self.data, self.indices,
                                      self.key)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  def export(self, path: str) -> dict:
    """Writes what `torch_reference.check` needs and returns JAX's answer."""
    images = self.data.images[:32]
    labels, bank = self.data.labels[:32], self.data.bank[:32]
    keys = jax.random.split(jax.random.key(2), 32)
    views = distill.augmented_views(self.config, keys, images)
    variables = self.state.variables
    logits = self.model.apply(variables, views[0], train=False)
    train_logits, _ = distill.views_logits(self.model, variables, views)
    loss, _ = distill.views_loss(train_logits, labels, bank, self.config)
    flat = {'/'.join(k): np.asarray(v) for k, v in
            traverse_util.flatten_dict(jax.device_get(variables)).items()}
    np.savez(path, **flat, view0=np.asarray(views[0]),
             view1=np.asarray(views[1]), labels=np.asarray(labels),
             bank=np.asarray(bank), temperature=self.config.temperature,
             depth=self.model.depth, widths=json.dumps(dict(self.model.widths)))
    return {'logits': np.asarray(logits).tolist(), 'loss': float(loss)}


def load_pretrained(model):
  depth = model.depth
  ref = jax.eval_shape(model.init, jax.random.key(0),
                       jnp.zeros((1, 32, 32, 3)))
  path = os.path.join(SHARED, 'pretrained',
                      f'ekg_official_resnet{depth}_cifar10.pkl')
  if os.path.exists(path):
    return official.load_official_pkl(path, ref), 'official'
  return init(model), 'random'  # ResNet-20 (quick runs): no checkpoint


def synthetic_split(images: int) -> datasets.Split:
  """Random CIFAR-shaped images (timing only: no dataset needed)."""
  rng = np.random.default_rng(0)
  return datasets.Split(rng.integers(0, 256, (images, 32, 32, 3), np.uint8),
                        (np.arange(images) % 10).astype(np.int32))


def search_problem(chunk_size, images_per_class, depth, split,
                   evaluation='auto', target=0.45):
  """`split`: a CIFAR-10 train split, or 'synthetic' (random images)."""
  model = model_for(depth)
  table = gates.layer_table(model, (32, 32, 3))
  variables, weights = load_pretrained(model)
  if split == 'synthetic':
    train = synthetic_split(10 * images_per_class)
  else:
    train = datasets.load_split('cifar10', split, os.environ.get(
        'TFDS_DATA_DIR', os.path.join(SHARED, 'tfds')))
  val = train.subset(datasets.class_subset_indices(train.labels,
                                                   images_per_class, True))
  batches = search.Batches.from_split(val, 256, REFERENCE_MEAN,
                                      REFERENCE_STD)
  config = search.SearchConfig(chunk_size=chunk_size, evaluation=evaluation,
                               target_flops_rate=target)
  problem = search.SearchProblem(search.Evaluator(model, table, config),
                                 variables, batches, config)
  return problem, weights


class SearchStep:
  """The first step of the search: importance, then every candidate."""

  def __init__(self, chunk_size, images_per_class, depth, split, modes):
    self.problem, self.weights = search_problem(chunk_size, images_per_class,
                                                depth, split)
    problem, ev = self.problem, self.problem.evaluator
    state = search.init_state(problem)
    specs = problem.specs
    kept = search.kept_from_rates(specs, state.rates)
    masks = gates.masks_from_kept(kept, {g: jnp.asarray(r)
                                         for g, r in state.ranks.items()})
    scores = jax.device_get(problem.scores(state, masks))
    ranks = {g: jnp.asarray(r)
             for g, r in gates.ranks_from_scores(scores).items()}
    marked = search.mark_candidates(specs, state.rates, scores,
                                    problem.config)
    candidates = {g: search.kept_count(
        specs[g].channels,
        state.rates[g] - search.step_size(specs[g], problem.config.step))
                  for g in marked}
    self.candidates = len(candidates)
    self._step = (state.teacher.logits, ranks, kept, candidates)
    self.runs = {'importance': lambda: problem.scores(state, masks)}
    self.compile_s = {}
    self._compile('importance')
    for mode in modes:
      self.add(mode, ev)

  def add(self, mode, evaluator, name=None):
    """Compiles `mode` of `evaluator` (another chunk size, say) on this
    step's candidates and times it as `name`."""
    problem = self.problem
    self.runs[name or mode] = lambda: evaluator.evaluate_candidates(
        mode, problem.variables, problem.batches, *self._step)
    self._compile(name or mode)

  def _compile(self, name):
    start = time.perf_counter()
    jax.block_until_ready(self.runs[name]())
    self.compile_s[name] = time.perf_counter() - start

  def time(self, mode) -> float:
    start = time.perf_counter()
    jax.block_until_ready(self.runs[mode]())
    return time.perf_counter() - start


def search_e2e(target, images_per_class, depth, split, chunk_size=4
               ) -> dict:
  problem, weights = search_problem(chunk_size, images_per_class, depth,
                                    split, target=target)
  start = time.perf_counter()
  state = search.init_state(problem)
  compiles_at_step = []
  evaluation = problem.evaluator.evaluation
  while not search.done(problem, state):
    state = search.search_step(problem, state, evaluation)
    compiles_at_step.append(COMPILES[0])
  seconds = time.perf_counter() - start
  return {'seconds': seconds, 'steps': state.step, 'weights': weights,
          'evaluation': evaluation,
          'flops_rate': state.history[-1]['flops_rate'],
          'compiles_after_step_1': (compiles_at_step[-1] - compiles_at_step[0]
                                    if compiles_at_step else 0)}


def inference(batches, widths, repeats, depth) -> dict:
  """Eval-mode latency: dense, the masked supernet and the slimmed
  network, alternating, per batch size."""
  dense, slimmed = model_for(depth), model_for(depth, widths)
  table = gates.layer_table(dense, (32, 32, 3))
  specs = gates.gate_specs(table)
  kept = {g: widths.get(g, s.channels) for g, s in specs.items()}
  masks = gates.masks_from_kept(kept, {g: jnp.arange(s.channels)
                                       for g, s in specs.items()})
  nets = {'dense': (dense, init(dense), None),
          'masked': (dense, init(dense), masks),
          'slimmed': (slimmed, init(slimmed), None)}
  fns = {name: jax.jit(lambda v, x, m, model=model: model.apply(
      v, x, masks=m, train=False)) for name, (model, _, _) in nets.items()}
  out = {'macs': {'dense': macs(dense), 'slimmed': macs(slimmed)}}
  for b in batches:
    x = jax.random.normal(jax.random.key(0), (b, 32, 32, 3))
    times = {n: [] for n in nets}
    compile_s = {}
    for n, (_, v, m) in nets.items():
      start = time.perf_counter()
      jax.block_until_ready(fns[n](v, x, m))
      compile_s[n] = time.perf_counter() - start
    reps = max(repeats, 3 if b > 1 else 20)
    for _ in range(reps):
      for n, (_, v, m) in nets.items():
        start = time.perf_counter()
        jax.block_until_ready(fns[n](v, x, m))
        times[n].append(time.perf_counter() - start)
    out[str(b)] = {'seconds': times, 'first_call_s': compile_s}
  return out


def bank_throughput(images, teachers, batch, depth, repeats) -> dict:
  """`memory_bank.make_teacher_logits` over `images` CIFAR-shaped images
  with `teachers` teachers (masks of the first search step's shape)."""
  model = model_for(depth)
  variables = init(model)
  specs = gates.gate_specs(gates.layer_table(model, (32, 32, 3)))
  ranks = {g: jnp.arange(s.channels) for g, s in specs.items()}
  masks = [gates.masks_from_kept(
      {g: max(1, s.channels - k) for g, s in specs.items()}, ranks)
           for k in range(teachers)]
  stacked = jax.tree_util.tree_map(lambda *m: jnp.stack(m), *masks)
  fn = memory_bank.make_teacher_logits(model, REFERENCE_MEAN, REFERENCE_STD)
  x = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (images, 32, 32, 3), np.uint8))

  def run():
    outs = [fn(variables, x[i:i + batch], stacked)
            for i in range(0, images, batch)]
    return jnp.concatenate(outs).astype(jnp.bfloat16)

  start = time.perf_counter()
  logits = jax.block_until_ready(run())
  first = time.perf_counter() - start
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    seconds.append(time.perf_counter() - start)
  return {'seconds': seconds, 'first_call_s': first,
          'bytes': int(logits.nbytes), 'images': images,
          'bytes_per_image': int(logits.nbytes) // images,
          'dtype': str(logits.dtype)}


def conv_kernels(shapes, repeats) -> dict:
  """Median ms of a 3x3 'SAME' conv on each NHWC shape: forward, input
  gradient and kernel gradient, each its own jitted program."""
  out = {}
  for shape in shapes:
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, shape[-1],
                                                   shape[-1]))
    g = ops.conv2d(x, kernel)
    programs = {
        'forward': jax.jit(ops.conv2d),
        'input_grad': jax.jit(lambda x, k, g: jax.vjp(
            lambda x: ops.conv2d(x, k), x)[1](g)[0]),
        'kernel_grad': jax.jit(lambda x, k, g: jax.vjp(
            lambda k: ops.conv2d(x, k), k)[1](g)[0])}
    entry = out['x'.join(map(str, shape))] = {}
    for name, fn in programs.items():
      args = (x, kernel) if name == 'forward' else (x, kernel, g)
      jax.block_until_ready(fn(*args))
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
      entry[name] = float(np.median(times)) * 1e3
  return out


def peak() -> dict:
  out = {'max_rss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
         * 1024}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['device_peak_bytes'] = stats['peak_bytes_in_use']
  return out
