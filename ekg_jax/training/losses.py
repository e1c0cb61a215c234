"""Losses: cross-entropy, soft cross-entropy and temperature KL, per sample."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-sample CE with integer labels; with `label_smoothing` e > 0, the
  CE with the target (1 - e) * one_hot + e / classes (Szegedy et al. 2016),
  i.e. (1 - e) * CE + e * the mean over classes of -log p."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  if not label_smoothing:  # the plain CE, computed exactly as always
    return nll
  return ((1.0 - label_smoothing) * nll
          - label_smoothing * jnp.mean(logp, axis=-1))


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
