"""Run by tests/data/test_streaming.py in a subprocess with 4 fake CPU devices:
the stream's batches land on the data mesh with the batch sharding (device
d holds rows [d*B/4, (d+1)*B/4)), with the memory bank's rows of the same
records. Argument: a folder holding the tiny imagenet2012 dataset."""

import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ekg_jax import config as config_lib  # noqa: E402
from ekg_jax.training import feeds, input_pipeline, steps
from ekg_jax.training.options import InputOptions, TrainOptions  # noqa: E402
from ekg_jax.data import streaming  # noqa: E402


def main(data_dir):
  assert jax.device_count() == 4
  c = config_lib.default_config()
  c.data.name, c.data.pipeline, c.data.data_dir = ('imagenet2012', 'grain',
                                                   data_dir)
  c.finetune.batch_size = 8
  records = input_pipeline.of(c).train(c)
  bank = np.random.default_rng(0).normal(
      size=(len(records), 3, 10)).astype(np.float32)
  feed = feeds.StreamFeed(records, bank, None, steps.data_mesh(),
                          TrainOptions.from_config(c.finetune, c.seed),
                          InputOptions.from_config(c), 'finetune')
  images, labels, rows = feed._next()
  expected = next(iter(streaming.train_dataset(feed.spec)))
  for array, host in ((images, expected['image']),
                      (labels, expected['label']),
                      (rows, bank[expected['index']])):
    assert array.shape == host.shape, (array.shape, host.shape)
    shards = sorted(array.addressable_shards, key=lambda s: s.device.id)
    assert len(shards) == 4
    for d, shard in enumerate(shards):
      np.testing.assert_array_equal(np.asarray(shard.data),
                                    host[2 * d:2 * d + 2])
  assert images.shape == (8, 2, 32, 32, 3)
  feed.close()
  print('stream sharding ok')


if __name__ == '__main__':
  main(sys.argv[1])
