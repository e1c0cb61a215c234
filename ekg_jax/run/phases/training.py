"""The phases that train or evaluate a network: pretrain, evaluate and
finetune (slimming the searched network, then training it with the memory
bank's knowledge)."""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.deploy import export as export_lib
from ekg_jax.deploy.options import ExportOptions
from ekg_jax.supernet import flops as flops_lib
from ekg_jax.supernet import gates as gates_lib
from ekg_jax.knowledge import memory_bank as bank_lib
from ekg_jax.supernet import slimming
from ekg_jax.training import loop
from ekg_jax.run import validate
from ekg_jax.run import workdir as workdir_lib
from ekg_jax.run.phases.common import (Setup, final_accuracy,
                                       finished_result, finished_search,
                                       input_shape, load_test, load_train,
                                       test_accuracy, trainer_records,
                                       training_summary, unreadable_records,
                                       warmed_up, with_checkpoint_widths)


def pretrain_phase(setup: Setup) -> dict:
  """Supervised training of the dense network from its random init (the
  recipe in config.pretrain); later phases start from it."""
  c = setup.config
  folder = workdir_lib.phase_dir(setup.workdir, 'pretrain')
  train, test = load_train(c), load_test(c)
  start = time.time()
  result = loop.train(setup.model, setup.variables, train, None, test,
                      folder=folder, progress=setup.progress,
                      **trainer_records(c, 'pretrain'))
  ckpt_lib.save_model(os.path.join(setup.workdir, workdir_lib.PRETRAINED),
                      c.model.name, {}, result.variables)
  setup.variables = result.variables
  accuracy = final_accuracy(setup.model, result, test, setup)
  return {'pretrain': training_summary(result, c.pretrain.epochs,
                                        time.time() - start, accuracy)}


def evaluate_phase(setup: Setup) -> dict:
  """Test accuracy (running BN statistics), FLOPs and params of the initial
  network."""
  c = setup.config
  start = time.time()
  test = load_test(c)
  acc = test_accuracy(setup.model, setup.variables, test, setup)
  return {'base': {'test_accuracy': acc, 'test_images': len(test),
                   'flops': flops_lib.count_flops(setup.table),
                   'params': flops_lib.count_params(setup.table),
                   'seconds': round(time.time() - start, 2),
                   **unreadable_records(test)}}


def finetune_phase(setup: Setup) -> dict:
  """Slims the searched network and fine-tunes it with the memory bank's
  knowledge (sections 7-8); saves the final model in finetune/final."""
  c = setup.config
  masks = finetune_masks(setup)
  folder = workdir_lib.phase_dir(setup.workdir, 'finetune')
  os.makedirs(folder, exist_ok=True)
  train, test = load_train(c), load_test(c)
  variables, _ = warmed_up(setup)
  model, variables = slimming.slim(setup.model, variables, masks,
                                   setup.table, input_shape=input_shape(c))
  table = gates_lib.layer_table(model, input_shape(c))
  flops, params = flops_lib.count_flops(table), flops_lib.count_params(table)
  searched = workdir_lib.load_summary(setup.workdir).get('search')
  if c.finetune.masks == 'search' and flops != searched['flops']:
    raise RuntimeError(f'slimmed network has {flops} FLOPs, the search '
                       f'reported {searched["flops"]}')
  bank_logits = None
  if c.finetune.knowledge != 'none':
    with finished_result('memory_bank'):
      bank = bank_lib.MemoryBank.load(
          os.path.join(setup.workdir, workdir_lib.MEMORY_BANK))
    if not bank.complete or len(bank.logits) != len(train):
      raise validate.ConfigError(
          'the memory bank does not cover the train split '
          f'({bank.done} of {len(train)} images; damaged?): '
          f'{workdir_lib.redo_hint("memory_bank")}')
    built_for = getattr(bank.logits, 'temperature', c.finetune.temperature)
    if built_for != c.finetune.temperature:
      raise validate.ConfigError(
          f'config.finetune.temperature={c.finetune.temperature}: the '
          f'memory bank keeps its top {bank.top_k} logits with a tail '
          f'computed at temperature {built_for}; fine-tune at {built_for}, '
          'or rebuild it: rerun with --config.redo=memory_bank')
    bank_logits = bank.logits
  records = trainer_records(c, 'finetune')
  start = time.time()
  result = loop.train(model, variables, train, bank_logits, test,
                      folder=folder, progress=setup.progress, **records)
  final = os.path.join(setup.workdir, workdir_lib.FINETUNED)
  ckpt_lib.save_model(final, c.model.name, {'widths': model.widths},
                      result.variables)
  accuracy = final_accuracy(model, result, test, setup)
  dense = flops_lib.count_flops(setup.table)
  return {
      'finetune': {**training_summary(result, c.finetune.epochs,
                                       time.time() - start, accuracy),
                   'knowledge': c.finetune.knowledge,
                   'views': records['options'].num_views,
                   'masks': c.finetune.masks, 'checkpoint': final},
      'final': {'test_accuracy': accuracy, 'flops': flops, 'params': params,
                'flops_reduction': round(1.0 - flops / dense, 4),
                **unreadable_records(test)}}


def finetune_masks(setup: Setup) -> dict:
  """The channels to keep (config.finetune.masks): the search's, none
  removed ('dense'), or a kept-channels file's."""
  source = setup.config.finetune.masks
  if source == 'search':
    return finished_search(setup).masks()
  if source == 'dense':
    return {}
  return slimming.read_kept_channels(source, setup.gates)


def export_phase(setup: Setup) -> dict:
  """The fine-tuned network as artifacts that need neither ekg_jax nor its
  config (ekg_jax/deploy/export.py): a jax.export program, widths and arrays."""
  c = setup.config
  final = os.path.join(setup.workdir, workdir_lib.FINETUNED)
  if 'finetune' not in workdir_lib.load_summary(setup.workdir):
    raise validate.ConfigError(
        f'no fine-tuned network in {setup.workdir}: run '
        '--config.phases=finetune first')
  with finished_result('finetune'):
    model = with_checkpoint_widths(setup.model, final)
    reference = jax.eval_shape(model.init, jax.random.key(0),
                               jnp.zeros((1, *input_shape(c))))
    variables = ckpt_lib.load_model_variables(final, reference)
  options = ExportOptions.from_config(c.export)
  start = time.time()
  directory = workdir_lib.phase_dir(setup.workdir, 'export')
  paths = export_lib.export(
      model, variables, directory, c.model.name, input_shape(c), c.data.mean,
      c.data.std, options.platform_list, options.pad_to)
  if options.onnx:  # unpadded: ONNX Runtime runs narrow kernels well
    from ekg_jax.deploy import export_onnx  # the optional [onnx] extra
    paths.update(export_onnx.to_onnx(
        model, variables, os.path.join(directory, export_onnx.ONNX),
        input_shape(c), c.data.mean, c.data.std))
  return {'export': {**paths, 'seconds': round(time.time() - start, 2)}}

