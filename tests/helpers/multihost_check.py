"""One process of a data-parallel run over several JAX processes (run by
tests/integration/test_multihost.py; the device count per process comes from XLA_FLAGS).

  multihost_check.py OUT PROCESS_ID NUM_PROCESSES PORT

With NUM_PROCESSES > 1 it joins the others through a coordinator on
localhost:PORT (process 0 serves it). Every process feeds only its own rows
of the same global batch; what it saw goes to OUT/process_<id>.npz:
- step_*: the state and metrics after two fine-tuning steps of the
  data-parallel step the trainer runs (sync BN, ensemble knowledge);
- train_*: `loop.train` for one epoch of 4 steps (per-device BN,
  orbax checkpoints every 2 steps in OUT/train, shared by the processes);
- bad_batch: the error of a batch that does not divide over every device.
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # tests/ (conftest), helpers/
from small import random_split, tiny_config  # noqa: E402

from ekg_jax.training import distill, loop
from ekg_jax.run.phases.common import trainer_records  # noqa: E402
from ekg_jax.training import optimizers
from ekg_jax.training import steps as steps_lib
from ekg_jax.runtime import distributed  # noqa: E402
from ekg_jax.supernet import gates as gates_lib  # noqa: E402
from ekg_jax.config import ConfigError  # noqa: E402
from ekg_jax.models.resnet_cifar import CifarResNet  # noqa: E402

BATCH = 16


def small_model(width=4):
  """ResNet-8 (one block per stage), every gate `width` wide: the
  smallest real CIFAR ResNet, quick to compile three times."""
  model = CifarResNet(depth=8, num_classes=10)
  specs = gates_lib.gate_specs(gates_lib.layer_table(model, (32, 32, 3)))
  model = model.clone(widths=tuple((g, width) for g in specs))
  return model, model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def flat(prefix, tree):
  return {prefix + jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def steps(model, variables, out):
  """Two steps of the trainer's data-parallel step on this process's rows."""
  del out
  mesh = steps_lib.data_mesh()  # every process's devices
  config = tiny_config(knowledge='ensemble', batch_size=BATCH,
                       sync_batch_norm=True)
  sc = distill.StepConfig.from_config(config)
  tx = optimizers.make_optimizer(config.finetune, 10)
  step = jax.jit(steps_lib.data_parallel(steps_lib.make_step(
      model.clone(bn_axis_name=steps_lib.DATA_AXIS), tx, sc,
      steps_lib.DATA_AXIS),
      mesh))
  # The same global batch in every process; each keeps its own rows.
  split = random_split(BATCH, 11)
  bank = np.random.default_rng(12).normal(size=(BATCH, 3, 10)).astype(
      np.float32)
  rows = distributed.process_rows(mesh, BATCH)
  state = distributed.replicate(
      mesh, steps_lib.TrainState.create(variables, tx))
  for i in range(2):
    keys = jax.random.split(jax.random.key(i), BATCH)
    batch = distributed.global_batch(
        mesh, (keys[rows], split.images[rows], split.labels[rows],
               bank[rows]), BATCH)
    assert batch[1].shape[0] == BATCH
    state, metrics = step(state, *batch)
  return {**flat('step_', jax.device_get(state.variables)),
          **flat('step_metrics_', jax.device_get(metrics))}


def fine_tune(model, variables, out):
  config = tiny_config(epochs=1)  # batch 8: 4 steps, checkpoints every 2
  train_split, test = random_split(32, 7), random_split(16, 8)
  bank = np.random.default_rng(9).normal(size=(32, 3, 10)).astype(
      jnp.bfloat16)
  result = loop.train(model, variables, train_split, bank, test,
                      folder=os.path.join(out, 'train'), progress=False,
                      **trainer_records(config, 'finetune'))
  history = {f'train_history_{k}': np.asarray(v)
             for k, v in result.history[-1].items()}
  return {**flat('train_', result.variables), **history}


def bad_batch(model, variables, out):
  """A global batch of 6 over 4 devices: refused before any compute."""
  try:
    loop.train(model, variables, random_split(32, 7), None,
               random_split(16, 8), folder=os.path.join(out, 'bad'),
               progress=False, **trainer_records(
                   tiny_config(batch_size=6, knowledge='none'), 'finetune'))
  except ConfigError as e:
    return {'bad_batch': np.asarray(str(e))}
  return {'bad_batch': np.asarray('accepted')}


def main(out, process_id, num_processes, port):
  if num_processes > 1:
    jax.distributed.initialize(f'localhost:{port}', num_processes,
                               process_id)
  model, variables = small_model()
  result = {}
  for part in (steps, fine_tune, bad_batch):
    start = time.time()
    result.update(part(model, variables, out))
    print(f'process {process_id}: {part.__name__} {time.time() - start:.1f} s')
  np.savez(os.path.join(out, f'process_{process_id}.npz'), **result)
  print(f'process {process_id}/{num_processes}: {len(jax.local_devices())} '
        f'of {jax.device_count()} devices, done')


if __name__ == '__main__':
  main(sys.argv[1], *map(int, sys.argv[2:5]))
