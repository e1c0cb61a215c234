"""Input pipeline: TFDS splits -> uint8 arrays on device -> jitted augmentation.

Splits are read with `tfds.data_source` (random access over ArrayRecord files,
Pillow decodes; no TensorFlow at read time) and materialised once as uint8
arrays. CIFAR-sized datasets then live on the device; augmentation and
normalisation run inside `jit`, per image, with explicit PRNG keys.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ekg_jax.runtime import breakdown
from ekg_jax.data import prepare
from ekg_jax.data.location import DatasetNotFoundError, resolve_data_dir
from ekg_jax.files import cache as cache_lib


# Datasets the toolkit knows: classes and image size (the size FLOPs are
# counted at; the grain pipeline resizes to config.data.image_size).
DATASETS = {
    'cifar10': dict(num_classes=10, image_size=32),
    'cifar100': dict(num_classes=100, image_size=32),
    'imagenet2012': dict(num_classes=1000, image_size=224),
}

# How to prepare a dataset TFDS cannot download itself ({data_dir}: the
# folder searched).
MANUAL_DOWNLOAD = {
    'imagenet2012': (
        'ImageNet needs a manual download: get ILSVRC2012_img_train.tar and '
        'ILSVRC2012_img_val.tar from https://image-net.org/download-images '
        '(an account is needed), put them in {data_dir}/downloads/manual/, '
        'then, with TensorFlow installed (pip install "ekg_jax[prepare]"), '
        'run: tfds build imagenet2012 --data_dir={data_dir} '
        '--file_format=array_record'),
}


def num_classes(name: str, data_dir: Optional[str] = None,
                split: str = 'train') -> int:
  """From `DATASETS`, else from the prepared dataset's TFDS metadata (its
  'label' feature): the grain pipeline reads any image-classification
  dataset."""
  if name in DATASETS:
    return DATASETS[name]['num_classes']
  info = _source(name, split, data_dir).dataset_info
  label = info.features['label'] if 'label' in info.features else None
  if not hasattr(label, 'num_classes'):
    raise DatasetNotFoundError(
        f'dataset {name!r} has no ClassLabel feature named "label" '
        f'(features: {", ".join(info.features)}); ekg_jax reads '
        'image-classification datasets with "image" and "label"')
  return int(label.num_classes)


class SplitError(ValueError):
  """The dataset is there but has no such split (or the slice is wrong)."""


@dataclasses.dataclass(frozen=True)
class Split:
  """A materialised split: images [N, H, W, C] uint8, labels [N] int32."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def subset(self, indices: Sequence[int]) -> 'Split':
    indices = np.asarray(indices)
    return Split(self.images[indices], self.labels[indices])


def _source(name: str, split: str, data_dir: Optional[str], **kwargs):
  """tfds.data_source, or DatasetNotFoundError naming the dataset, the
  directory searched and TFDS_DATA_DIR."""
  import tensorflow_datasets as tfds  # slow import, only when reading data

  data_dir = resolve_data_dir(data_dir)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False, **kwargs)
  except (ValueError, AssertionError) as e:
    if 'split' in str(e).lower():
      raise SplitError(f'{name} has no split {split!r} ('
                       f'{str(e).splitlines()[0][:160]})') from None
    raise
  except Exception as e:  # TFDS raises several types for a missing dataset
    searched = data_dir or '~/tensorflow_datasets (TFDS default)'
    folder = _tfrecord_folder(name, data_dir)
    if folder and name in prepare.DATASETS:
      raise DatasetNotFoundError(
          f'dataset {name!r} in {folder} is prepared as TFRecord files; '
          'ekg_jax reads ArrayRecord (random access, no TensorFlow) and '
          'prepares it itself once that folder is moved aside: mv '
          f'{shlex.quote(folder)} {shlex.quote(folder + ".tfrecord")}'
      ) from None
    if folder:
      raise DatasetNotFoundError(
          f'dataset {name!r} in {folder} is prepared as TFRecord files; '
          'ekg_jax reads ArrayRecord (random access, no TensorFlow): '
          f'prepare it again with tfds build {name} --data_dir={searched} '
          '--file_format=array_record (TensorFlow installed), or convert '
          'it with tfds convert_format') from None
    if name in prepare.DATASETS and not prepare.is_prepared(name, data_dir):
      # Prepared here, once (download, checksum, ArrayRecord; no
      # TensorFlow), then read as if it had been there.
      prepare.ensure_dataset(name, data_dir)
      return _source(name, split, data_dir, **kwargs)
    how = MANUAL_DOWNLOAD.get(name, (
        'Prepare it once with TensorFlow installed (pip install '
        '"ekg_jax[prepare]"; tfds build {name} --data_dir={data_dir} '
        '--file_format=array_record)'))
    raise DatasetNotFoundError(
        f'dataset {name!r} (split {split!r}) is not prepared in {searched}. '
        f'Set data.data_dir or TFDS_DATA_DIR (now '
        f'{os.environ.get("TFDS_DATA_DIR")!r}) to a folder holding '
        f'{name}/<version>/. '
        + how.format(name=name, data_dir=searched) +
        f'. TFDS said: {type(e).__name__}: {str(e).splitlines()[0][:200]}'
    ) from None


def _tfrecord_folder(name: str, data_dir: Optional[str]) -> Optional[str]:
  """The dataset's folder when it is prepared, but as TFRecord files
  (`tfds build`'s default), which `tfds.data_source` cannot read."""
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    tfrecord = builder.info.file_format == tfds.core.FileFormat.TFRECORD
    return builder.data_dir if tfrecord and os.path.isfile(
        os.path.join(builder.data_dir, 'dataset_info.json')) else None
  except Exception:  # not registered, unreadable metadata: not this case
    return None


def _read(source, indices: Sequence[int]) -> list:
  try:
    return source.__getitems__(list(indices))  # 2x faster than one by one
  except TypeError:  # tfds.testing.mock_data's sources read one at a time
    return [source[i] for i in indices]


def load_split(name: str, split: str, data_dir: Optional[str] = None,
               indices: Optional[Sequence[int]] = None,
               cache_dir: Optional[str] = None) -> Split:
  """Reads a TFDS split (slicing such as 'test[:1000]' works), or only the
  records at `indices` of it, in that order (decoding only those images).
  With `cache_dir` (`cache.resolve`), a whole split is decoded once and
  read back from there while the dataset's files are unchanged.

  Raises DatasetNotFoundError naming the dataset, the directory searched and
  TFDS_DATA_DIR when the prepared dataset is not there.
  """
  with breakdown.reading_data():
    return _load_split(name, split, data_dir, indices, cache_dir)


def _load_split(name, split, data_dir, indices, cache_dir) -> Split:
  source = _source(name, split, data_dir)
  path = None
  if indices is None and cache_dir:
    path = cache_lib.decoded_path(cache_dir, source.dataset_info.data_dir,
                                  name, split)
    cached = cache_lib.read_decoded(path)
    if cached is not None and len(cached[1]) == len(source):
      return Split(*cached)
  records = _read(source, range(len(source)) if indices is None
                  else [int(i) for i in indices])
  images = np.stack([r['image'] for r in records]).astype(np.uint8)
  labels = np.asarray([r['label'] for r in records], dtype=np.int32)
  cache_lib.write_decoded(path, images=images, labels=labels)
  return Split(images, labels)


def split_size(name: str, split: str, data_dir: Optional[str] = None
               ) -> int:
  """Records in a split, read from its metadata (no decoding)."""
  return len(_source(name, split, data_dir))


def load_labels(name: str, split: str, data_dir: Optional[str] = None,
                cache_dir: Optional[str] = None) -> np.ndarray:
  """The labels of a split without decoding its images (seconds, not the
  half minute a CIFAR-10 train split takes to decode). Read once per
  process: the preflight check, the warm-up and the validation subsets all
  ask for them; the array is read-only. With `cache_dir`, also kept between
  runs (keyed like the decoded splits): reading them means reading every
  record, 140 GB for ImageNet's train split."""
  return _labels(name, split, resolve_data_dir(data_dir), cache_dir)


@functools.lru_cache(maxsize=8)
def _labels(name: str, split: str, data_dir: Optional[str],
            cache_dir: Optional[str]) -> np.ndarray:
  with breakdown.reading_data():
    source = _source(name, split, data_dir, decoders={
        'image': _skip_decoding()})
    path = cache_dir and cache_lib.decoded_path(
        cache_dir, source.dataset_info.data_dir, name, split, kind='labels')
    cached = cache_lib.read_decoded(path, keys=('labels',))
    if cached is not None and len(cached[0]) == len(source):
      labels = cached[0]
    else:
      labels = np.asarray([r['label'] for r in _read(source,
                                                     range(len(source)))],
                          dtype=np.int32)
      cache_lib.write_decoded(path, labels=labels)
  labels.setflags(write=False)
  return labels


def _skip_decoding():
  import tensorflow_datasets as tfds
  return tfds.decode.SkipDecoding()


def class_subset_indices(labels: np.ndarray, per_class: int,
                         from_end: bool, seed: int = 1,
                         offset: int = 0) -> np.ndarray:
  """The reference code's fixed subsets (ekg_algorithm.md section 5).

  For each class in label order, take its first `per_class` indices (or its
  last ones, walking backwards, with `from_end`), concatenate, then permute
  with NumPy's legacy global-seed shuffle, exactly as the reference does:
  with BN in batch-statistics mode, batch composition changes the results.
  `offset` skips that many indices of each class first (disjoint subsets).
  """
  labels = np.asarray(labels)
  chosen = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    if len(idx) < offset + per_class:
      raise ValueError(f'class {c} has {len(idx)} images, fewer than the '
                       f'{offset + per_class} per class asked for')
    idx = idx[::-1] if from_end else idx
    chosen.append(idx[offset:offset + per_class])
  indices = np.concatenate(chosen)
  state = np.random.get_state()  # the legacy API is global: leave it intact
  try:
    np.random.seed(seed)
    np.random.shuffle(indices)
  finally:
    np.random.set_state(state)
  return indices


def batches(n: int, batch_size: int) -> list[slice]:
  """Consecutive slices covering 0..n; the last one may be short."""
  return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------
# On-device preprocessing.


def normalize(images: jax.Array, mean: Sequence[float],
              std: Sequence[float]) -> jax.Array:
  """uint8 [..., C] -> float32 (x - mean) / std, per channel on the 0-255
  scale."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) - mean) / std


def _color_jitter(key, image, contrast, saturation, brightness):
  """EKG views' jitter on a [0, 255] float image (section 8), in the
  reference's order and without clipping, as TensorFlow's random_brightness,
  random_contrast and random_saturation: a brightness shift in
  [-brightness, brightness] (0-255 scale), contrast around the per-channel
  mean, then HSV saturation. Factors are drawn per image (the reference draws
  them once per batch).
  """
  kc, ks, kb = jax.random.split(key, 3)
  image = image + jax.random.uniform(kb, (), minval=-brightness,
                                     maxval=brightness)
  c = jax.random.uniform(kc, (), minval=contrast[0], maxval=contrast[1])
  mean = image.mean(axis=(0, 1), keepdims=True)
  image = (image - mean) * c + mean
  s = jax.random.uniform(ks, (), minval=saturation[0], maxval=saturation[1])
  return _scale_saturation(image, s)


def _scale_saturation(image, factor):
  """HSV saturation times `factor` (clipped to [0, 1]), hue and value kept.

  In HSV, each channel is x = v - v * sat * g(hue), so scaling the
  saturation from sat to sat' moves every channel's distance from the
  pixel's maximum by sat' / sat: the closed form of TensorFlow's
  rgb -> hsv -> rgb round trip.
  """
  value = image.max(axis=-1, keepdims=True)
  spread = value - image.min(axis=-1, keepdims=True)
  sat = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
  scaled = jnp.clip(sat * factor, 0.0, 1.0)
  ratio = jnp.where(sat > 0, scaled / jnp.where(sat > 0, sat, 1.0), 1.0)
  return value - ratio * (value - image)


def _flip_and_crop(key, image, pad):
  kf, kx, ky = jax.random.split(key, 3)
  image = jnp.where(jax.random.bernoulli(kf), image[:, ::-1], image)
  h, w, _ = image.shape
  padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
  dy = jax.random.randint(ky, (), 0, 2 * pad + 1)
  dx = jax.random.randint(kx, (), 0, 2 * pad + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))


def augment(key: jax.Array, images: jax.Array, mean: Sequence[float],
            std: Sequence[float], **options) -> jax.Array:
  """One augmented view of a uint8 batch; `key` decides every draw (see
  `augment_each`, which takes one key per image)."""
  return augment_each(jax.random.split(key, images.shape[0]), images, mean,
                      std, **options)


def augment_each(keys: jax.Array, images: jax.Array, mean: Sequence[float],
                 std: Sequence[float], pad: int = 4, color_jitter: bool = True,
                 contrast=(0.8, 1.2), saturation=(0.8, 1.2),
                 brightness: float = 0.2, geometric: bool = True
                 ) -> jax.Array:
  """One augmented view of a uint8 batch, per image: colour jitter,
  normalisation, random horizontal flip, `pad`-pixel reflect pad + random crop
  back to the input size. Pure and jittable; image i's draws come from
  keys[i] alone, so a batch sharded over devices augments as a whole one.
  `geometric=False` skips the flip and crop (views the streaming pipeline
  cropped and flipped on the host)."""

  def one(k, image):
    kj, kc = jax.random.split(k)
    image = image.astype(jnp.float32)
    if color_jitter:
      image = _color_jitter(kj, image, contrast, saturation, brightness)
    image = normalize(image, mean, std)
    return _flip_and_crop(kc, image, pad) if geometric else image

  return jax.vmap(one)(keys, images)
