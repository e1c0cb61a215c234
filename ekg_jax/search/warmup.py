"""The reference code's warm-up before the search (ekg_algorithm.md 1.2).

One pass over a small fixed train subset, no augmentation, BN in training
mode (running statistics updated), the reference's one optimizer
(`optimizers.sgd_nesterov`: Nesterov SGD, weight decay added to the
gradient of every trainable variable). The loss keeps the reference
quirk: the batch's summed CE divided by `loss_divisor` (128) while batches
hold 256 images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ekg_jax import rules
from ekg_jax.data import datasets as data_lib
from ekg_jax.supernet import model as model_lib
from ekg_jax.training import losses, optimizers


def check_model(table, model_name: str) -> None:
  """The warm-up exists to refresh BatchNorm statistics: a model without
  any (a ViT) is refused by name rather than warmed up for nothing."""
  if not any(v.collection == 'batch_stats' for layer in table
             for v in layer.variables):
    raise rules.ConfigError(
        f'search.warmup=True: the warm-up pass refreshes BatchNorm '
        f'statistics, and {model_name} has no BatchNorm; set '
        'search.warmup=False')


def warmup(model, variables: Any, split: data_lib.Split, mean, std,
           config) -> Any:
  """Returns the variables after one warm-up pass over `split` (in order)."""
  if 'batch_stats' not in variables:
    raise rules.ConfigError(
        f'search.warmup=True: the warm-up pass refreshes BatchNorm '
        f'statistics, and {type(model).__name__} has none; set '
        'search.warmup=False')
  tx = optimizers.sgd_nesterov(config.learning_rate, config.momentum,
                               config.weight_decay)
  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state, images, labels):
    x = data_lib.normalize(images, mean, std)

    def loss_fn(params):
      logits, stats_now = model_lib.forward_train(
          model, {'params': params, 'batch_stats': stats}, x)
      loss = losses.cross_entropy(logits, labels).sum() / config.loss_divisor
      return loss, stats_now

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  for sl in data_lib.batches(len(split), config.batch_size):
    params, stats, opt_state, _ = step(params, stats, opt_state,
                                       jnp.asarray(split.images[sl]),
                                       jnp.asarray(split.labels[sl]))
  # Block: the steps were dispatched asynchronously, and callers time this.
  return jax.block_until_ready({'params': params, 'batch_stats': stats})
