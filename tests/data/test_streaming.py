"""The streaming (Grain) input pipeline on a tiny prepared dataset the tests
write (tests/helpers/fake_tfds.py): batch shapes, augmentation, per-process
sharding, exact resume of the iterator, undecodable records, evaluation
crops, and the error for a dataset that is not prepared."""

import json

import numpy as np
import pytest
from PIL import Image

import fake_tfds
from ekg_jax.data import datasets as data_lib
from ekg_jax.data import images as images_lib
from ekg_jax.data import streaming

TRAIN = 24


@pytest.fixture(scope='module')
def clean_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds_clean')
  fake_tfds.write_dataset(str(path), splits={'train': TRAIN, 'validation': 8})
  return str(path)


@pytest.fixture(scope='module')
def corrupt_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds_corrupt')
  fake_tfds.write_dataset(str(path), splits={'train': TRAIN, 'validation': 8},
                          corrupt={'train': [5], 'validation': [2]})
  return str(path)


def spec(data_dir, **kw):
  args = dict(source=streaming.SourceSpec('imagenet2012', 'train', data_dir),
              num_records=TRAIN, global_batch=8, image_size=32, views=2,
              seed=3, epochs=2)
  args.update(kw)
  return streaming.StreamSpec(**args)


def take(dataset_or_iter, n):
  it = iter(dataset_or_iter)
  return [next(it) for _ in range(n)]


def test_batches_are_shaped_and_sharded_over_processes(clean_dir):
  steps = TRAIN // 8
  parts = [take(streaming.train_dataset(spec(clean_dir, process_index=p,
                                             process_count=2)), steps)
           for p in range(2)]
  whole = take(streaming.train_dataset(spec(clean_dir)), steps)
  order = np.random.default_rng([3, 0]).permutation(TRAIN)
  for b in range(steps):
    for p in range(2):
      batch = parts[p][b]
      assert batch['image'].shape == (4, 2, 32, 32, 3)
      assert batch['image'].dtype == np.uint8
      # Process p reads its quarter of global batch b of the epoch's order.
      np.testing.assert_array_equal(batch['index'],
                                    order[b * 8 + 4 * p:b * 8 + 4 * p + 4])
      np.testing.assert_array_equal(batch['label'], batch['index'] % 4)
    # The same images whatever the process count: augmentation draws
    # depend on (seed, epoch, position) only.
    np.testing.assert_array_equal(
        np.concatenate([parts[0][b]['image'], parts[1][b]['image']]),
        whole[b]['image'])
  # Epoch 2 visits every record again, in another order.
  second = take(streaming.train_dataset(spec(clean_dir)), 2 * steps)[steps:]
  indices = np.concatenate([b['index'] for b in second])
  assert sorted(indices) == list(range(TRAIN))
  assert not np.array_equal(indices, order)


def test_views_are_augmented_independently(clean_dir):
  batch = take(streaming.train_dataset(spec(clean_dir)), 1)[0]
  views = batch['image'].astype(int)
  # Two views of one image differ (own crop and flip), and they are not the
  # evaluation crop.
  assert all(np.abs(views[i, 0] - views[i, 1]).mean() > 1 for i in range(8))
  split = streaming.lazy_split(spec(clean_dir).source, 32,
                               data_lib.load_labels('imagenet2012', 'train',
                                                    clean_dir))
  centre = split.images[batch['index']].astype(int)
  assert all(np.abs(views[i, 0] - centre[i]).mean() > 1 for i in range(8))


def test_crop_and_flip_keep_the_image_at_full_scale():
  pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
  image = Image.fromarray(pixels)
  rng = np.random.default_rng(1)
  seen = set()
  for _ in range(20):
    view = images_lib.train_views(image, rng, 16, 1, (1.0, 1.0),
                                  (1.0, 1.0))[0]
    flipped = np.array_equal(view, pixels[:, ::-1])
    assert flipped or np.array_equal(view, pixels)
    seen.add(flipped)
  assert seen == {True, False}


def test_evaluation_crop_is_the_centre():
  # 40 wide, 20 high: the shorter side goes to round(16 * 256/224) = 18,
  # the longer to 36; the centre 16x16 is columns 10..26, rows 1..17.
  pixels = np.zeros((20, 40, 3), np.uint8)
  pixels[:, 20:] = 255
  out = images_lib.center_crop(Image.fromarray(pixels), 16)
  assert out.shape == (16, 16, 3)
  assert out[:, :6].max() < 30 and out[:, -6:].min() > 225


def test_iterator_resumes_exactly(clean_dir):
  dataset = streaming.train_dataset(spec(clean_dir))
  it = iter(dataset)
  take(it, 2)
  saved = json.loads(json.dumps(streaming.state_to_json(it.get_state())))
  expected = take(it, 4)  # crosses into epoch 2
  resumed = iter(streaming.train_dataset(spec(clean_dir)))
  resumed.set_state(streaming.state_from_json(saved))
  for a, b in zip(expected, take(resumed, 4)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_worker_processes_give_the_same_stream_and_resume(clean_dir):
  serial = take(streaming.train_dataset(spec(clean_dir)), 4)
  dataset = streaming.train_dataset(spec(clean_dir, workers=2))
  it = iter(dataset)
  first = take(it, 2)
  saved = streaming.state_to_json(it.get_state())
  rest = take(it, 2)
  it.close()
  resumed = iter(streaming.train_dataset(spec(clean_dir, workers=2)))
  resumed.set_state(streaming.state_from_json(saved))
  again = take(resumed, 2)
  resumed.close()
  for a, b in zip(serial, first + rest):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(rest, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['index'], b['index'])


def test_undecodable_records_are_skipped_and_counted(corrupt_dir):
  batches = take(streaming.train_dataset(spec(corrupt_dir)), 2 * TRAIN // 8)
  indices = np.concatenate([b['index'] for b in batches])
  assert 5 not in indices
  assert len(set(indices.tolist())) == TRAIN - 1
  counts = np.concatenate([b['skipped'] for b in batches])
  assert counts[0] == 0 and counts[-1] == 2  # once per epoch
  assert np.all(np.diff(counts) >= 0)
  # Evaluation: a black image, counted, never a crash.
  split = streaming.lazy_split(
      streaming.SourceSpec('imagenet2012', 'validation', corrupt_dir), 32,
      data_lib.load_labels('imagenet2012', 'validation', corrupt_dir))
  images = split.images[0:8]
  assert images.shape == (8, 32, 32, 3)
  assert images[2].max() == 0 and images[1].max() > 0
  assert split.images.corrupt == {2}


def test_lazy_split_reads_records_in_order(clean_dir):
  labels = data_lib.load_labels('imagenet2012', 'validation', clean_dir)
  source = streaming.SourceSpec('imagenet2012', 'validation', clean_dir)
  split = streaming.lazy_split(source, 24, labels)
  subset = streaming.lazy_split(source, 24, labels, indices=[6, 1, 3])
  assert len(split) == 8 and split.images.shape == (8, 24, 24, 3)
  np.testing.assert_array_equal(subset.images[0:3], split.images[[6, 1, 3]])
  np.testing.assert_array_equal(subset.labels, labels[[6, 1, 3]])
  np.testing.assert_array_equal(split.subset([6, 1]).images[:],
                                split.images[[6, 1]])


def test_imagenet_not_prepared_names_the_folder_and_the_download(tmp_path):
  with pytest.raises(data_lib.DatasetNotFoundError) as e:
    data_lib.split_size('imagenet2012', 'train', str(tmp_path))
  message = str(e.value)
  assert str(tmp_path) in message
  assert f'{tmp_path}/downloads/manual/' in message
  assert 'ILSVRC2012_img_train.tar' in message
  assert 'tfds build imagenet2012' in message
  assert '\n' not in message


def test_a_global_batch_that_does_not_split_over_processes_is_refused(
    clean_dir, monkeypatch):
  from ekg_jax import config as config_lib
  from ekg_jax.training import feeds, input_pipeline
  from ekg_jax.training.options import InputOptions, TrainOptions
  config = config_lib.default_config()
  config.data.name, config.data.pipeline = 'imagenet2012', 'grain'
  config.data.data_dir = clean_dir
  config.finetune.batch_size = 8
  train = input_pipeline.of(config).train(config)
  monkeypatch.setattr(feeds.jax, 'process_count', lambda: 3)
  with pytest.raises(config_lib.ConfigError,
                     match='finetune.batch_size=8: does not divide over the 3 processes'):
    feeds.stream_spec(train, TrainOptions.from_config(config.finetune),
                      InputOptions.from_config(config), 'finetune')


def test_streaming_resizes_so_any_image_size_validates():
  from ekg_jax import config as config_lib
  from ekg_jax.run import validate
  config = config_lib.default_config()
  config.data.name, config.data.image_size = 'imagenet2012', 64
  with pytest.raises(validate.ConfigError, match='or data.pipeline=grain'):
    validate.validate_config(config)
  config.data.pipeline = 'grain'
  validate.validate_config(config)


def test_another_tfds_dataset_streams_with_its_own_classes(tmp_path):
  from ekg_jax import config as config_lib
  from ekg_jax.run import validate
  from ekg_jax.run.phases import build_model
  fake_tfds.write_dataset(str(tmp_path), name='imagenette',
                          splits={'train': 16, 'validation': 4})
  config = config_lib.default_config()
  config.data.name, config.data.data_dir = 'imagenette', str(tmp_path)
  config.data.image_size, config.data.test_split = 48, 'validation'
  config.model.name = 'resnet18'
  with pytest.raises(validate.ConfigError,
                     match="data.name='imagenette': allowed: .*pipeline=grain"):
    validate.validate_config(config)
  config.data.pipeline = 'grain'
  validate.validate_config(config)
  assert data_lib.num_classes('imagenette', str(tmp_path)) == 10
  assert build_model(config).num_classes == 10
  source = streaming.SourceSpec('imagenette', 'train', str(tmp_path))
  batch = take(streaming.train_dataset(spec(
      str(tmp_path), source=source, num_records=16, image_size=48)), 1)[0]
  assert batch['image'].shape == (8, 2, 48, 48, 3)
  # Its class count (metadata) bounds a top-k memory bank before compute.
  from ekg_jax.run import preflight
  config.memory_bank.top_k = 11
  with pytest.raises(validate.ConfigError,
                     match=r'memory_bank.top_k=11: imagenette has 10 classes'):
    preflight.check_data(config, ['memory_bank'])


def test_a_dataset_prepared_as_tfrecord_is_named_with_the_fix(tmp_path):
  fake_tfds.write_dataset(str(tmp_path), splits={'train': 4},
                          file_format='tfrecord')
  with pytest.raises(data_lib.DatasetNotFoundError,
                     match='prepared as TFRecord files.*'
                     '--file_format=array_record'):
    data_lib.split_size('imagenet2012', 'train', str(tmp_path))


def test_batches_land_on_the_devices_with_the_batch_sharding(clean_dir):
  import os
  import subprocess
  import sys
  from conftest import HELPERS, REPO
  result = subprocess.run(
      [sys.executable, str(HELPERS / 'stream_sharding_check.py'),
       clean_dir], capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'stream sharding ok' in result.stdout
