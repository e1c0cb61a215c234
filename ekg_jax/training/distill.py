"""Ensemble knowledge distillation (ekg_algorithm.md section 8): the
filtered ensemble target and the loss over two augmented views.

Each image gets two augmented views, run through the network as one batch;
the loss is, per view, CE plus the KL distillation term towards the mean of
the memory-bank teachers that pass the filter (a teacher is used when it is
closer to the best teacher than the student is). With `knowledge='none'` it
is the plain one-view CE that pretraining and the no-knowledge arms use.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp

from ekg_jax.data import datasets as data_lib
from ekg_jax.supernet import model as model_lib
from ekg_jax.training import losses
from ekg_jax.training.options import (  # noqa: F401  (KNOWLEDGE: its home)
    KNOWLEDGE, InputOptions, TrainOptions)
from ekg_jax.knowledge import topk


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the loss and the views need, from the option records."""
  knowledge: str = 'ensemble'
  temperature: float = 4.0
  mean: tuple = (0.0, 0.0, 0.0)
  std: tuple = (1.0, 1.0, 1.0)
  augment: tuple = ()  # keyword arguments of data.augment_each, as items
  num_views: int = 0  # 0: as the reference, two with knowledge, one without
  label_smoothing: float = 0.0  # of the CE term's labels (0: one-hot)

  @classmethod
  def from_options(cls, options: TrainOptions,
                   inputs: InputOptions) -> 'StepConfig':
    return cls(options.knowledge, options.temperature, tuple(inputs.mean),
               tuple(inputs.std), tuple(inputs.augment), options.views,
               options.label_smoothing)

  @classmethod
  def from_config(cls, config, section: str = 'finetune') -> 'StepConfig':
    """A whole config's (benchmarks and tests build steps from one)."""
    return cls.from_options(TrainOptions.from_config(config[section]),
                            InputOptions.from_config(config))

  @property
  def views(self) -> int:
    if self.num_views:
      return self.num_views
    return 1 if self.knowledge == 'none' else 2


def _batch_sum(x, axis_name):
  total = x.sum()
  return total if axis_name is None else jax.lax.psum(total, axis_name)


def distillation_target(bank_logits: jax.Array, student_mean: jax.Array,
                        temperature: float,
                        axis_name: Optional[str] = None
                        ) -> tuple[jax.Array, jax.Array]:
  """The filtered ensemble target (section 8).

  Args:
    bank_logits: [B, K, classes] teachers' logits; teacher 0 is the best.
    student_mean: [B, classes] mean of the student's views' logits.
    axis_name: sums over the batch include every device's shard.
  Returns:
    (target [B, classes], used [K] bools). Teacher k is used when
    sum_b KL(top || M_k) < sum_b KL(top || student); teacher 0 always is.
  """
  bank_logits = bank_logits.astype(jnp.float32)
  top = bank_logits[:, 0]
  student = _batch_sum(losses.kl_divergence(top, student_mean, temperature),
                       axis_name)
  per_teacher = jax.vmap(
      lambda m: _batch_sum(losses.kl_divergence(top, m, temperature),
                           axis_name), in_axes=1)(bank_logits)
  used = (per_teacher < student).at[0].set(True)
  weights = used.astype(jnp.float32) / used.sum()
  return jnp.einsum('bkc,k->bc', bank_logits, weights), used


def views_loss(logits: Sequence[jax.Array], labels: jax.Array,
               bank: Optional[jax.Array], config: StepConfig,
               axis_name: Optional[str] = None) -> tuple[jax.Array, dict]:
  """The mean over views of CE plus, with knowledge, KL_tau towards the
  teacher(s); `logits` holds one [B, classes] float32 array per view.
  `bank`: [B, K, classes] logits or their top-k form (rebuilt here, before
  the filter and the mean). Returns (this shard's loss, metrics)."""
  if isinstance(bank, topk.TopKLogits):
    if bank.temperature != config.temperature:
      raise ValueError(f'the top-k bank was built for temperature '
                       f'{bank.temperature}, not {config.temperature}')
    bank = topk.expand(bank)
  ce = sum(losses.cross_entropy(z, labels, config.label_smoothing).mean()
           for z in logits)
  kd, used = jnp.zeros(()), jnp.zeros(())
  if config.knowledge == 'single':
    kd = sum(losses.kl_divergence(bank[:, 0], z, config.temperature).mean()
             for z in logits)
    used = jnp.ones(())
  elif config.knowledge == 'ensemble':
    student_mean = jax.lax.stop_gradient(sum(logits) / len(logits))
    target, used_k = distillation_target(bank, student_mean,
                                         config.temperature, axis_name)
    kd = sum(losses.kl_divergence(target, z, config.temperature).mean()
             for z in logits)
    used = used_k.sum().astype(jnp.float32)
  # Sum over views of per-view means, gradient halved: the mean over views.
  loss = (ce + kd) / len(logits)
  return loss, {'loss': loss, 'ce': ce / len(logits), 'kd': kd / len(logits),
                'teachers_used': used}


def augmented_views(config: StepConfig, keys: jax.Array,
                    images: jax.Array) -> list[jax.Array]:
  """`config.views` augmented views of a uint8 batch; view v of image i
  draws from fold_in(keys[i], v). As the reference, colour jitter belongs to
  the two-view path (knowledge's, or `finetune.views=2` without it); a
  single view is only flipped and cropped.

  `images` [B, views, H, W, C] are views the streaming pipeline already
  cropped and flipped (`feeds.StreamFeed`): they are jittered and
  normalised only."""
  augment = dict(config.augment)
  if config.views == 1:
    augment['color_jitter'] = False
  hosted = images.ndim == 5
  if hosted:
    augment['geometric'] = False
  return [data_lib.augment_each(jax.vmap(jax.random.fold_in, (0, None))(
      keys, v), images[:, v] if hosted else images, config.mean, config.std,
      **augment) for v in range(config.views)]


def views_logits(model, variables, views: Sequence[jax.Array]
                 ) -> tuple[list[jax.Array], Any]:
  """Float32 logits of each view and the updated BN statistics. The views
  go through the network as ONE batch, as the reference: BN statistics over
  both views, one running-statistics update. A network without BatchNorm
  has none: {}."""
  z, batch_stats = model_lib.forward_train(model, variables,
                                           jnp.concatenate(views))
  return jnp.split(z.astype(jnp.float32), len(views)), batch_stats

