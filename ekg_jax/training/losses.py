"""Losses: cross-entropy, soft cross-entropy and temperature KL, per sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample CE with integer labels."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  return -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def soft_cross_entropy(logits: jax.Array, teacher_logits: jax.Array,
                       temperature: float = 1.0) -> jax.Array:
  """Per-sample CE(softmax(teacher / t), logits / t)."""
  target = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
  return -jnp.sum(target * logp, axis=-1)


def kl_divergence(teacher_logits: jax.Array, logits: jax.Array,
                  temperature: float) -> jax.Array:
  """Per-sample KL_tau(teacher || student) = tau * sum p_t (log p_t - log p_s)
  with p = softmax(. / tau), as the reference's distillation term."""
  t = teacher_logits.astype(jnp.float32) / temperature
  s = logits.astype(jnp.float32) / temperature
  p_t = jax.nn.softmax(t)
  return temperature * jnp.sum(
      p_t * (jax.nn.log_softmax(t) - jax.nn.log_softmax(s)), axis=-1)
