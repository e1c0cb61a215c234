"""A tiny prepared TFDS dataset written by the tests: ArrayRecord files and
metadata in a temporary folder, through TFDS's own feature serialisation (no
TensorFlow, no download). Images are JPEGs of varied sizes, so every decode,
crop and resize path runs; chosen records can be made undecodable."""

from __future__ import annotations

import io
import os

import numpy as np


def write_dataset(data_dir: str, name: str = 'imagenet2012',
                  splits: dict | None = None, num_classes: int = 4,
                  corrupt: dict | None = None, seed: int = 0,
                  file_format: str = 'array_record') -> str:
  """Writes `splits` ({split: records}) of the registered TFDS dataset
  `name` into `data_dir`; records i of split s in `corrupt[s]` hold bytes
  that are not an image. Labels cycle over `num_classes`. Returns the
  dataset's version folder."""
  import tensorflow_datasets as tfds
  from array_record.python import array_record_module
  from PIL import Image

  splits = splits or {'train': 24, 'validation': 8}
  corrupt = corrupt or {}
  # file_format only changes the metadata (the records are ArrayRecord):
  # 'tfrecord' stands for a dataset prepared by `tfds build`'s default.
  builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
  os.makedirs(builder.data_dir, exist_ok=True)
  rng = np.random.default_rng(seed)
  infos = []
  for split, n in splits.items():
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=name, split=split,
        filetype_suffix='array_record',
        template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}')
    writer = array_record_module.ArrayRecordWriter(
        os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)),
        'group_size:1')
    for i in range(n):
      h, w = rng.integers(40, 100, 2)
      label = i % num_classes
      # A per-class colour plus noise: a network can learn something.
      base = np.array([60 * label % 256, 255 - 50 * label, 120], np.float32)
      pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255)
      buf = io.BytesIO()
      Image.fromarray(pixels.astype(np.uint8)).save(buf, 'JPEG')
      data = b'not an image' if i in corrupt.get(split, ()) else buf.getvalue()
      example = {}
      for key, feature in builder.info.features.items():
        if isinstance(feature, tfds.features.Image):
          example[key] = data
        elif isinstance(feature, tfds.features.ClassLabel):
          example[key] = label
        else:  # file names
          example[key] = f'{split}_{i}.JPEG'
      writer.write(builder.info.features.serialize_example(example))
    writer.close()
    infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[n],
                                     num_bytes=0, filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(infos))
  builder.info.write_to_directory(builder.data_dir)
  return builder.data_dir
