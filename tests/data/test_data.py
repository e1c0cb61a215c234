import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TFDS_DIR, needs_cifar10
from ekg_jax.data import datasets


def test_class_subset_indices_follow_reference_recipe():
  labels = np.array([0, 1, 0, 1, 2, 2, 0, 1, 2, 0])
  idx = datasets.class_subset_indices(labels, per_class=2, from_end=True)
  # Last two of each class, walking backwards, then the legacy shuffle.
  expected = np.array([9, 6, 7, 3, 8, 5])
  np.random.seed(1)
  np.random.shuffle(expected)
  np.testing.assert_array_equal(idx, expected)
  first = datasets.class_subset_indices(labels, per_class=2, from_end=False)
  assert sorted(first.tolist()) == [0, 1, 2, 3, 4, 5]


def test_class_subset_leaves_global_numpy_state_alone():
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  datasets.class_subset_indices(np.arange(20) % 2, 3, from_end=True)
  np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_class_subset_too_few_images():
  with pytest.raises(ValueError, match='class 1 has 1 images'):
    datasets.class_subset_indices(np.array([0, 0, 1]), 2, from_end=True)


def test_augment_is_deterministic_per_key_and_varies_per_image():
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (8, 32, 32, 3), dtype=np.uint8))
  f = jax.jit(lambda k, x: datasets.augment(k, x, (120.,) * 3, (60.,) * 3))
  a = f(jax.random.key(0), images)
  assert a.shape == (8, 32, 32, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(a, f(jax.random.key(0), images))
  assert not np.allclose(a, f(jax.random.key(1), images))


def test_augment_without_jitter_is_a_flipped_crop():
  image = jnp.arange(4 * 4 * 3, dtype=jnp.uint8).reshape(1, 4, 4, 3)
  out = datasets.augment(jax.random.key(3), image, (0.,) * 3, (1.,) * 3, pad=1,
                         color_jitter=False)
  padded = np.pad(np.asarray(image[0], np.float32), ((1, 1), (1, 1), (0, 0)),
                  mode='reflect')
  crops = [c for dy in range(3) for dx in range(3)
           for c in (padded[dy:dy + 4, dx:dx + 4],)]
  # Flip happens before the crop: a crop of the padded (flipped) image.
  flipped = np.pad(np.asarray(image[0, :, ::-1], np.float32),
                   ((1, 1), (1, 1), (0, 0)), mode='reflect')
  crops += [flipped[dy:dy + 4, dx:dx + 4] for dy in range(3)
            for dx in range(3)]
  assert any(np.array_equal(out[0], c) for c in crops)


def test_normalize_uses_config_statistics():
  x = jnp.full((1, 2, 2, 3), 100, jnp.uint8)
  out = datasets.normalize(x, (100., 50., 0.), (1., 2., 4.))
  np.testing.assert_allclose(out[0, 0, 0], [0., 25., 25.])


@needs_cifar10
def test_load_split_with_slicing():
  split = datasets.load_split('cifar10', 'test[:100]', TFDS_DIR)
  assert split.images.shape == (100, 32, 32, 3)
  assert split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32 and split.labels.max() <= 9


def test_missing_dataset_names_dataset_and_directory(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  with pytest.raises(datasets.DatasetNotFoundError) as e:
    datasets.load_split('cifar10', 'test', None)
  message = str(e.value)
  assert "'cifar10'" in message and str(tmp_path) in message
  assert 'TFDS_DATA_DIR' in message


def test_mock_dataset_cifar100(tmp_path):
  """CIFAR-100 has no local copy: read TFDS's mock data through the same
  path the real data takes."""
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    split = datasets.load_split('cifar100', 'train', str(tmp_path))
  assert split.images.shape == (12, 32, 32, 3)
  assert split.labels.max() < 100


@needs_cifar10
def test_a_decoded_split_is_cached_and_redecoded_when_the_data_changes(
    tmp_path, monkeypatch):
  first = datasets.load_split('cifar10', 'test[:50]', TFDS_DIR,
                              cache_dir=str(tmp_path))
  [entry] = (tmp_path / 'decoded' / 'cifar10').glob('*.npz')
  decoded = []
  real = datasets._read
  monkeypatch.setattr(datasets, '_read',
                      lambda *a: decoded.append(1) or real(*a))
  again = datasets.load_split('cifar10', 'test[:50]', TFDS_DIR,
                              cache_dir=str(tmp_path))
  assert not decoded  # read back, not decoded
  np.testing.assert_array_equal(again.images, first.images)
  np.testing.assert_array_equal(again.labels, first.labels)
  # Another split is another entry; a damaged entry is decoded again.
  datasets.load_split('cifar10', 'test[:20]', TFDS_DIR, cache_dir=str(tmp_path))
  assert len(list((tmp_path / 'decoded' / 'cifar10').glob('*.npz'))) == 2
  entry.write_bytes(b'damaged')
  third = datasets.load_split('cifar10', 'test[:50]', TFDS_DIR,
                              cache_dir=str(tmp_path))
  assert decoded and np.array_equal(third.images, first.images)


@needs_cifar10
def test_labels_are_kept_between_runs_in_the_cache(tmp_path, monkeypatch):
  first = datasets.load_labels('cifar10', 'test[:300]', TFDS_DIR,
                               cache_dir=str(tmp_path))
  [entry] = (tmp_path / 'labels' / 'cifar10').glob('*.npz')
  read = []
  real = datasets._read
  monkeypatch.setattr(datasets, '_read', lambda *a: read.append(1) or real(*a))
  datasets._labels.cache_clear()  # a new process
  again = datasets.load_labels('cifar10', 'test[:300]', TFDS_DIR,
                               cache_dir=str(tmp_path))
  assert not read and not again.flags.writeable
  np.testing.assert_array_equal(again, first)
  np.testing.assert_array_equal(
      first, datasets.load_split('cifar10', 'test[:300]', TFDS_DIR).labels)
  entry.write_bytes(b'damaged')  # only a cache miss
  datasets._labels.cache_clear()
  np.testing.assert_array_equal(
      datasets.load_labels('cifar10', 'test[:300]', TFDS_DIR,
                           cache_dir=str(tmp_path)), first)
  assert read


def test_the_cache_key_follows_the_dataset_files(tmp_path):
  from ekg_jax.files import cache
  files = tmp_path / 'files'
  files.mkdir()
  (files / 'cifar10-test.array_record-00000-of-00001').write_bytes(b'a' * 10)
  key = cache.decoded_path(str(tmp_path), str(files), 'cifar10', 'test')
  assert key == cache.decoded_path(str(tmp_path), str(files), 'cifar10',
                                   'test')
  assert key != cache.decoded_path(str(tmp_path), str(files), 'cifar10',
                                   'test[:10]')
  (files / 'cifar10-test.array_record-00000-of-00001').write_bytes(b'b' * 11)
  assert key != cache.decoded_path(str(tmp_path), str(files), 'cifar10',
                                   'test')
  assert cache.resolve('') is None
  assert cache.decoded_path(str(tmp_path), str(tmp_path / 'none'), 'x',
                            'y') is None  # nothing to key on: no caching


_COMPILE_TWICE = '''
import sys, jax, jax.numpy as jnp
from ekg_jax.files import cache
cache.enable_compilation_cache(sys.argv[1])
hits = []
jax.monitoring.register_event_listener(
    lambda e, **_: hits.append(e) if e.endswith('cache_hits') else None)
seconds = []
jax.monitoring.register_event_duration_secs_listener(
    lambda e, s, **_: seconds.append(s) if e.endswith('backend_compile_duration')
    else None)
def g(x):  # about 0.4 s of XLA compile here: over 0.1 s, under JAX's 1 s
  for i in range(300):
    x = jnp.sin(x) * (i + 0.25)
  return x
jax.jit(g)(jnp.arange(17.0)).block_until_ready()
print(len(hits), max(seconds))
'''


def test_the_compilation_cache_keeps_programs_under_a_second(tmp_path):
  # The search's per-segment programs compile in about 0.3 s each: JAX's
  # 1-s threshold kept them out, and a warm start-up compiled them again.
  env = {k: v for k, v in os.environ.items()
         if k != 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'}
  runs = [subprocess.run([sys.executable, '-c', _COMPILE_TWICE,
                          str(tmp_path)], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
          for _ in range(2)]
  (cold_hits, cold_seconds), (warm_hits, _) = runs
  assert int(cold_hits) == 0 and float(cold_seconds) > 0.1, runs
  assert int(warm_hits) >= 1, runs
