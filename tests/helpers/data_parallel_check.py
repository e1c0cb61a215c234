"""Run with 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4):
a data-parallel fine-tuning step equals a single-device computation of the
same global batch. Exits non-zero on a mismatch.

How BN is matched:
- sync BN (`finetune.sync_batch_norm`): BN averages batch statistics over the
  devices, so the reference is the plain step on the whole global batch.
- per-device BN (the default): each device normalises both views of its
  quarter of the batch with their statistics, so the reference runs the
  model on each quarter's two views (one batch) separately (on one device), then computes the loss (global
  teacher filter, global mean) on the concatenated logits, and averages the
  four updated running statistics.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np

# tests/ (conftest) and helpers/ (small)
sys.path[:0] = [__file__.rsplit('/', 2)[0], __file__.rsplit('/', 1)[0]]
from small import random_split, tiny_config, tiny_model  # noqa: E402

from ekg_jax.data import datasets as data_lib  # noqa: E402
from ekg_jax.training import distill, optimizers, steps  # noqa: E402
from ekg_jax.training import losses  # noqa: E402

DEVICES = 4
BATCH = 16


def close(a, b, what):
  leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: float(jnp.max(jnp.abs(x - y)) /
                         (jnp.max(jnp.abs(y)) + 1e-12)), a, b))
  worst = max(leaves)
  print(f'{what}: max relative difference {worst:.2e}')
  return worst < 1e-4


def per_device_reference(model, tx, sc, state, keys, images, labels, bank):
  """Per-device BN, written out on one device."""
  views = [data_lib.augment_each(
      jax.vmap(jax.random.fold_in, (0, None))(keys, v), images, sc.mean,
      sc.std, **dict(sc.augment)) for v in range(sc.views)]
  shard = BATCH // DEVICES

  def loss_fn(params):
    logits = [[] for _ in views]
    new_stats = []
    for d in range(DEVICES):
      part = slice(d * shard, (d + 1) * shard)
      # Each device holds both views of its images, in one BN batch.
      z, upd = model.apply({'params': params,
                            'batch_stats': state.batch_stats},
                           jnp.concatenate([x[part] for x in views]),
                           train=True, mutable=['batch_stats'])
      for v, zv in enumerate(jnp.split(z, len(views))):
        logits[v].append(zv)
      new_stats.append(upd['batch_stats'])
    logits = [jnp.concatenate(z) for z in logits]
    student = jax.lax.stop_gradient(sum(logits) / len(logits))
    target, _ = distill.distillation_target(bank, student, sc.temperature)
    loss = sum(losses.cross_entropy(z, labels).mean() +
               losses.kl_divergence(target, z, sc.temperature).mean()
               for z in logits) / len(logits)
    return loss, jax.tree_util.tree_map(lambda *s: sum(s) / DEVICES,
                                        *new_stats)

  grads, stats = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1,
                       params=jax.tree_util.tree_map(jnp.add, state.params,
                                                     updates),
                       batch_stats=stats, opt_state=opt_state)


def main():
  assert jax.device_count() == DEVICES, jax.devices()
  mesh = steps.data_mesh()
  model, variables = tiny_model()
  config = tiny_config(knowledge='ensemble', batch_size=BATCH)
  sc = distill.StepConfig.from_config(config)
  tx = optimizers.make_optimizer(config.finetune, 10)
  split = random_split(BATCH, 11)
  bank = jnp.asarray(np.random.default_rng(12).normal(size=(BATCH, 3, 10)),
                     jnp.float32)
  ok = True
  for sync in (True, False):
    state = steps.TrainState.create(variables, tx)
    reference = state
    parallel_model = (model.clone(bn_axis_name=steps.DATA_AXIS) if sync
                      else model)
    step = jax.jit(steps.data_parallel(
        steps.make_step(parallel_model, tx, sc, steps.DATA_AXIS), mesh))
    plain = jax.jit(steps.make_step(model, tx, sc))
    # Jitted: run op by op, the reference took most of this check's minutes.
    per_device = jax.jit(lambda *a: per_device_reference(model, tx, sc, *a))
    for i in range(2):
      keys = jax.random.split(jax.random.key(i), BATCH)
      state, _ = step(state, keys, split.images, split.labels, bank)
      if sync:
        reference, _ = plain(reference, keys, split.images, split.labels,
                             bank)
      else:
        reference = per_device(reference, keys, split.images, split.labels,
                               bank)
    name = 'sync BN' if sync else 'per-device BN'
    shards = {d.id for d in jax.tree_util.tree_leaves(
        state.params)[0].sharding.device_set}
    assert len(shards) == DEVICES, shards  # replicated over the 4 devices
    if close(state.variables, reference.variables, name):
      print(f'{name}: equal')
    else:
      ok = False
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  main()
