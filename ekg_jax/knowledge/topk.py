"""Top-k teacher logits: a memory bank that fits ImageNet (issue 17, item 4).

A dense bank holds every class's logit per image and teacher: 1.28M x 5 x
1000 values for ImageNet, 12.8 GB in bfloat16. A top-k bank keeps, per image
and teacher, the k largest logits (in the bank's dtype), their class
indices, and ONE tail logit that stands for the other C - k classes.

What "the remaining mass spread uniformly" means. The KD target is
softmax(z / T) at the fine-tuning temperature T. Let I be the k top
classes, p = softmax(z / T) and r = 1 - sum_{i in I} p_i the mass the top k
leave at temperature T. The tail logit is

    c_T = T * log( mean_{j not in I} exp(z_j / T) )

(a log-mean-exp of the other logits), and the rebuilt logits are z_i on I
and c_T on every other class. Then softmax(rebuilt / T) gives each top
class exactly p_i and each other class exactly r / (C - k): the top-k
probabilities and the tail's total mass are kept, only how the mass is
shared out inside the tail is lost. So KL(p || rebuilt) = r * KL(p_tail / r
|| uniform) <= r * log(C - k). With k = C there is no tail and the rebuilt
logits are the stored ones, bit for bit.

c_T depends on T, so the bank records the temperature it was built for and
fine-tuning at another temperature is refused. Logits are rebuilt on
device, per batch, before the teacher filter and the ensemble mean, which
then run as for a dense bank (the mean is over logits, so rebuilt logits,
not probabilities, are what the target needs).
"""

from __future__ import annotations

import math
from typing import Union

import flax
import jax
import jax.numpy as jnp
import numpy as np


def index_dtype(num_classes: int) -> np.dtype:
  """The narrowest unsigned integer that holds a class index."""
  return np.dtype(np.uint8 if num_classes <= 256 else
                  np.uint16 if num_classes <= 65536 else np.uint32)


@flax.struct.dataclass
class TopKLogits:
  """Per image and teacher: the k largest logits, their classes, the tail.

  A pytree (it goes on device as the dense bank does); indexing it with
  image indices gathers a batch, as indexing a dense [N, K, C] bank does.
  """
  values: Union[np.ndarray, jax.Array]  # [N, K, k], the bank's dtype
  indices: Union[np.ndarray, jax.Array]  # [N, K, k], index_dtype(classes)
  tail: Union[np.ndarray, jax.Array]  # [N, K], the bank's dtype
  num_classes: int = flax.struct.field(pytree_node=False)
  temperature: float = flax.struct.field(pytree_node=False)

  def __getitem__(self, idx) -> 'TopKLogits':
    return self.replace(values=self.values[idx], indices=self.indices[idx],
                        tail=self.tail[idx])

  def __len__(self) -> int:
    return len(self.values)

  @property
  def k(self) -> int:
    return self.values.shape[-1]

  @property
  def nbytes(self) -> int:
    return sum(int(a.nbytes) for a in (self.values, self.indices, self.tail))

  @classmethod
  def zeros(cls, shape: tuple, k: int, dtype, temperature: float
            ) -> 'TopKLogits':
    """An empty bank for `shape` = (N, K, classes)."""
    n, teachers, classes = shape
    return cls(np.zeros((n, teachers, k), dtype),
               np.zeros((n, teachers, k), index_dtype(classes)),
               np.zeros((n, teachers), dtype), classes, float(temperature))


def bytes_per_image(teachers: int, classes: int, top_k: int,
                    dtype_bytes: int) -> int:
  """Bank bytes per image: dense (top_k = 0) or top-k with its tail."""
  if top_k == 0:
    return teachers * classes * dtype_bytes
  return teachers * (top_k * (dtype_bytes + index_dtype(classes).itemsize)
                     + dtype_bytes)


def compress(logits: jax.Array, k: int, temperature: float
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """[..., C] logits -> (values [..., k], indices [..., k] int32, tail
  [...]) in float32 (the caller casts to the bank's dtypes)."""
  z = jnp.asarray(logits, jnp.float32)
  classes = z.shape[-1]
  values, indices = jax.lax.top_k(z, k)
  if k == classes:  # no tail: rebuilding never reads it
    return values, indices, jnp.zeros(z.shape[:-1], jnp.float32)
  rest = jnp.put_along_axis(z / temperature, indices, -jnp.inf, axis=-1,
                            inplace=False)
  tail = temperature * (jax.nn.logsumexp(rest, axis=-1)
                        - math.log(classes - k))
  return values, indices, tail


def expand(bank: TopKLogits) -> jax.Array:
  """Float32 logits [..., C]: the top k as stored, c_T elsewhere."""
  tail = jnp.asarray(bank.tail, jnp.float32)[..., None]
  base = jnp.broadcast_to(tail, (*tail.shape[:-1], bank.num_classes))
  return jnp.put_along_axis(base, jnp.asarray(bank.indices, jnp.int32),
                            jnp.asarray(bank.values, jnp.float32), axis=-1,
                            inplace=False)


def as_logits(bank):
  """A batch of the bank as [B, K, C] logits: dense banks as they are."""
  return expand(bank) if isinstance(bank, TopKLogits) else bank
