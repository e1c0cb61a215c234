"""What the search takes: the model contract (`PrunableModel`), the fixed
validation batches (`Batches`) and the one dtype of kept counts."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax.data import datasets as data_lib


class Batches(NamedTuple):
  """The fixed validation batches (normalised images, labels), in order.
  A pytree, so jitted functions take it as an argument."""
  images: tuple[jax.Array, ...]
  labels: tuple[jax.Array, ...]

  @classmethod
  def from_split(cls, split, batch_size: int, mean, std) -> 'Batches':
    """Consecutive batches of a `data.Split`, normalised, on device."""
    slices = data_lib.batches(len(split), batch_size)
    return cls(tuple(data_lib.normalize(split.images[s], mean, std)
                     for s in slices),
               tuple(jnp.asarray(split.labels[s]) for s in slices))

  @property
  def sizes(self) -> list[int]:
    return [len(y) for y in self.labels]

  def check_labels(self, num_classes: int) -> None:
    """A label outside [0, classes) would make a NaN loss at every step."""
    for i, labels in enumerate(self.labels):
      labels = np.asarray(labels)
      bad = (labels < 0) | (labels >= num_classes)
      if bad.any():
        raise ValueError(
            f'batches: label {int(labels[bad][0])} (batch {i}) is outside '
            f'[0, {num_classes}): the model has {num_classes} classes')

  def split(self, per_sample: jax.Array) -> list[jax.Array]:
    """Cuts an array over all validation samples into per-batch pieces."""
    bounds = np.cumsum([0, *self.sizes])
    return [per_sample[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class PrunableModel(Protocol):
  """What `prune` needs of a model: a Flax module whose
  `apply(variables, x, masks=..., train=...)` returns logits [B, classes]
  (with `mutable=['batch_stats']` when `train=True`), and whose prunable
  layers are `gates.GatedConv` / `GatedDense` / `GatedBatchNorm` with
  `gates.apply_gate` between them, so `gates.layer_table` can trace it.

  Optional: a model that is a chain of segments (`Supernet.run_segments`)
  also takes `start=` / `stop=`; only then does the `prefix` strategy share
  the segments before each candidate's gate.
  """

  def apply(self, variables: Any, x: jax.Array, *, masks: Any,
            train: bool, **kwargs: Any) -> Any:
    ...


def kept_as_int32(kept: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Kept counts as int32 scalars: Python ints would be weakly typed, and a
  compiled function seeing both kinds would compile twice."""
  return {g: jnp.int32(k) for g, k in kept.items()}
