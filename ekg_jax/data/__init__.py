"""Input data (foundation layer): never imports training, the method or the
run.

- `datasets`: prepared TFDS datasets read with `tfds.data_source`, splits and
  class subsets, in memory;
- `location`: where prepared datasets live; `DatasetNotFoundError`;
- `prepare`, `download`: CIFAR-10/100 and the authors' weights fetched and
  prepared without TensorFlow (checksum verified, atomic);
- `streaming`: a grain pipeline for datasets larger than memory, sharded over
  hosts;
- `images`: decoding, crops and flips.
"""
