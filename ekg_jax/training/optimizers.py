"""The optimizers and learning-rate schedules of a training recipe, by name.

A recipe (config.pretrain, config.finetune) names its optimizer
(`OPTIMIZERS`) and its schedule (`SCHEDULES`); the defaults are the
reference's (Nesterov SGD, step decays), and ViTs take AdamW with a linear
warm-up then a cosine decay (configs/vit_cifar.py). With the default keys
`make_optimizer` builds exactly the optax chain it always has (tested), so
no existing number changes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


# --- schedules: (recipe, steps_per_epoch) -> optax schedule ----------------

def step_decay(recipe, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate times `lr_decay_factor` at each listed fraction of
  the run's steps (reference: 0.01, x0.2 at epochs 30, 60, 80 of 100).
  Step-granular, so a run of a few epochs keeps the schedule's shape (the
  reference's epoch-granular points would all fall on epoch 0)."""
  total = recipe.epochs * steps_per_epoch
  boundaries = {}
  for f in recipe.lr_decay_epochs_fraction:
    step = round(f * total)
    boundaries[step] = boundaries.get(step, 1.0) * recipe.lr_decay_factor
  return optax.piecewise_constant_schedule(recipe.learning_rate, boundaries)


def cosine(recipe, steps_per_epoch: int) -> optax.Schedule:
  """Half a cosine from `learning_rate` to 0 over the steps after the
  warm-up (`lr_decay_epochs_fraction` and `lr_decay_factor` are unused)."""
  total = recipe.epochs * steps_per_epoch
  warm = warmup_steps(recipe, steps_per_epoch)
  return optax.cosine_decay_schedule(recipe.learning_rate,
                                     max(total - warm, 1))


SCHEDULES: dict[str, Callable[..., optax.Schedule]] = {
    'step': step_decay,
    'cosine': cosine,
}


def warmup_steps(recipe, steps_per_epoch: int) -> int:
  return round(recipe.lr_warmup_fraction * recipe.epochs * steps_per_epoch)


def lr_schedule(recipe, steps_per_epoch: int) -> optax.Schedule:
  """The recipe's schedule (`lr_schedule`, default 'step'), after a linear
  warm-up from 0 over the first `lr_warmup_fraction` of the run's steps
  (default 0: none, and the schedule is the named one as it is)."""
  schedule = SCHEDULES[recipe.lr_schedule](recipe, steps_per_epoch)
  warm = warmup_steps(recipe, steps_per_epoch)
  if not warm:
    return schedule
  if recipe.lr_schedule == 'cosine':
    # The cosine starts where the warm-up ends.
    return optax.join_schedules(
        [optax.linear_schedule(0.0, recipe.learning_rate, warm), schedule],
        [warm])
  # Step decays stay at their fractions of the whole run.
  ramp = optax.linear_schedule(0.0, recipe.learning_rate, warm)
  return lambda count: jnp.where(count < warm, ramp(count), schedule(count))


# --- optimizers: (recipe, schedule) -> optax transformation ----------------

def sgd_nesterov(learning_rate, momentum: float, weight_decay: float
                 ) -> optax.GradientTransformation:
  """The reference's one optimizer (warm-up, pretraining, fine-tuning): SGD
  with Nesterov momentum, weight decay added to the gradient of every
  parameter, BN included. `learning_rate`: a float or an optax schedule."""
  decay = optax.add_decayed_weights(weight_decay)
  if callable(learning_rate):
    # As Keras computes it: the momentum accumulates lr-scaled gradients, so
    # a decay point does not rescale the velocity.
    return optax.chain(decay, optax.scale_by_learning_rate(learning_rate),
                       optax.trace(decay=momentum, nesterov=True))
  # A constant rate (the warm-up): both orders are the same function, but
  # rounding differs, and this one reproduces the reference run's search
  # trajectory (tests/search/test_pinned_search.py); the Keras order flips its
  # second step at a near-tie (stage1/block4 instead of stage2/block8).
  return optax.chain(decay, optax.sgd(learning_rate, momentum,
                                      nesterov=True))


def _matrices(params):
  """Decay mask: kernels and embeddings (arrays of 2+ dimensions), not
  biases or LayerNorm/BN scales and offsets (the usual ViT practice)."""
  return jax.tree_util.tree_map(lambda p: jnp.ndim(p) > 1, params)


def adamw(recipe, schedule) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay, scaled by the learning rate as optax's
  and PyTorch's) with `adam_betas`; `weight_decay` applies to arrays of 2+
  dimensions only. `momentum` is unused."""
  b1, b2 = recipe.adam_betas
  return optax.adamw(schedule, b1=b1, b2=b2,
                     weight_decay=recipe.weight_decay, mask=_matrices)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    'sgd_nesterov': lambda recipe, schedule: sgd_nesterov(
        schedule, recipe.momentum, recipe.weight_decay),
    'adamw': adamw,
}


def make_optimizer(recipe, steps_per_epoch: int
                   ) -> optax.GradientTransformation:
  """The recipe's optimizer (`optimizer`, default 'sgd_nesterov') on its
  schedule (`lr_schedule`), after clipping the gradients' global norm to
  `clip_grad_norm` when that is above 0 (default 0: no clipping)."""
  tx = OPTIMIZERS[recipe.optimizer](
      recipe, lr_schedule(recipe, steps_per_epoch))
  clip = recipe.clip_grad_norm
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx
