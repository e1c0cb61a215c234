"""Prepares CIFAR-10/100 and fetches the authors' weights, without TensorFlow.

A CIFAR dataset is written as `tfds build cifar10 --file_format=array_record`
writes it: the same archive (TFDS's registered URL and sha256, read from
TFDS's checksums file), the same features, class names, version, record
ids and record order (TFDS's own `Writer` shuffles by its key hash), in the
ArrayRecord layout `tfds.data_source` reads. Only the image encoding is done
here, with Pillow (PNG, lossless, as TFDS's TensorFlow encoder). The archives
are the binary ones: plain bytes, nothing is unpickled.

The version folder is written under TFDS's temporary name
(`incomplete.XXXXXX_3.0.2`, which TFDS never reads) and renamed at the end:
an interrupted or failed preparation leaves nothing that looks prepared.

  python -m ekg_jax.prepare cifar10 cifar100 official [--data_dir=DIR]
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import sys
import tarfile
from typing import Optional

import numpy as np

from ekg_jax.files import cache as cache_lib
from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.data import location
from ekg_jax.data import download

IMAGE_BYTES = 32 * 32 * 3


class PrepareError(location.DatasetNotFoundError):
  """One line: the dataset could not be prepared; nothing was kept."""


class WeightsError(ckpt_lib.CheckpointError):
  """One line: the weights could not be fetched."""


@dataclasses.dataclass(frozen=True)
class Cifar:
  """Where TFDS's cifar builder finds each part in the binary archive."""
  url: str
  sha256: str  # used when TFDS's checksums file cannot be read
  prefix: str
  splits: dict  # split -> the .bin files it is read from, in order
  label_files: tuple  # one class-names file per label key
  label_keys: tuple  # the label bytes in front of each image, in order


DATASETS = {
    'cifar10': Cifar(
        'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz',
        'c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd',
        'cifar-10-batches-bin/',
        {'train': tuple(f'data_batch_{i}.bin' for i in range(1, 6)),
         'test': ('test_batch.bin',)},
        ('batches.meta.txt',), ('label',)),
    'cifar100': Cifar(
        'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz',
        '58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec',
        'cifar-100-binary/', {'train': ('train.bin',), 'test': ('test.bin',)},
        ('coarse_label_names.txt', 'fine_label_names.txt'),
        ('coarse_label', 'label')),
}

# The authors' pretrained ResNet-56 on CIFAR-10 (github sseung0703/EKG, its
# default branch is master); `init_checkpoint=official` names it.
WEIGHTS = {
    'official': download.Asset(
        'OFFICIAL',
        'https://github.com/sseung0703/EKG/raw/master/pretrained/'
        'res56_cifar10.pkl',
        '90dea7edbdd2192b39a55cdccb28361d4033ed18b71ed3263c13ca87f9446c02',
        'res56_cifar10.pkl'),
}


def archive(name: str) -> download.Asset:
  """The archive TFDS's builder downloads, with TFDS's registered sha256."""
  spec = DATASETS[name]
  sha256 = spec.sha256
  try:  # TFDS's own record, when this TFDS has it where 4.9 keeps it
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import checksums
    path = os.path.join(os.path.dirname(tfds.__file__), 'url_checksums',
                        'cifar10.txt')
    sha256 = checksums.load_url_infos(path)[spec.url].checksum
  except Exception:  # moved or renamed in another TFDS: the pinned value
    pass
  return download.Asset(name.upper(), spec.url, sha256,
                        spec.url.rsplit('/', 1)[1])


def default_data_dir(data_dir: Optional[str]) -> str:
  resolved = location.resolve_data_dir(data_dir)
  if resolved:
    return os.path.abspath(os.path.expanduser(resolved))
  import tensorflow_datasets as tfds
  return os.fspath(tfds.core.constants.DATA_DIR)


def _builder(name: str, data_dir: str):
  import tensorflow_datasets as tfds
  return tfds.builder(name, data_dir=data_dir, file_format='array_record')


def is_prepared(name: str, data_dir: Optional[str]) -> bool:
  """Whether the registered version's folder holds its metadata (the last
  thing written, so an interrupted preparation is not prepared)."""
  builder = _builder(name, default_data_dir(data_dir))
  return os.path.isfile(os.path.join(builder.data_dir, 'dataset_info.json'))


def ensure_dataset(name: str, data_dir: Optional[str],
                   progress: bool = True) -> str:
  """Prepares `name` (a key of DATASETS) in `data_dir` unless it already is;
  returns its version folder. Raises PrepareError (one line)."""
  data_dir = default_data_dir(data_dir)
  builder = _builder(name, data_dir)
  if is_prepared(name, data_dir):
    return builder.data_dir
  downloads = os.path.join(data_dir, 'downloads')
  manual = os.path.join(downloads, 'manual')
  try:
    path = download.fetch(archive(name), downloads, manual,
                          progress=progress)
    _write(builder, DATASETS[name], path, progress)
  except download.DownloadError as e:
    raise PrepareError(
        f'dataset {name!r} ({builder.version}) is not prepared in {data_dir} '
        f'(data.data_dir, else TFDS_DATA_DIR) and cannot be: {e}') from None
  except OSError as e:
    if is_prepared(name, data_dir):  # another process renamed its copy first
      return builder.data_dir
    what = ('no space left on device' if e.errno == errno.ENOSPC
            else e.strerror or str(e))
    raise PrepareError(
        f'preparing {name} in {data_dir} failed: {what} '
        f'({e.filename or data_dir}); nothing was kept (about 0.3 GB is '
        'needed): fix that and run again') from None
  return builder.data_dir


def _read_archive(path: str, spec: Cifar) -> dict[str, bytes]:
  """The members the builder reads, as bytes (a tar of plain files)."""
  wanted = {spec.prefix + f for f in spec.label_files}
  for files in spec.splits.values():
    wanted.update(spec.prefix + f for f in files)
  found = {}
  try:
    with tarfile.open(path, 'r:gz') as tar:
      for member in tar:
        if member.name in wanted and member.isfile():
          found[member.name] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError) as e:
    if isinstance(e, OSError) and e.errno is not None:
      raise
    raise download.DownloadError(f'{path} is not a readable CIFAR archive '
                                 f'({e}): delete it and run again') from None
  missing = sorted(wanted - set(found))
  if missing:
    raise download.DownloadError(f'{path} lacks {", ".join(missing)}: not '
                                 'the CIFAR binary archive')
  return found


def _records(data: bytes, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
  """labels [N, n_labels] and images [N, 32, 32, 3] from a binary batch:
  per image, its label bytes, then 1024 red, 1024 green, 1024 blue bytes."""
  width = n_labels + IMAGE_BYTES
  if len(data) % width:
    raise download.DownloadError(f'a CIFAR batch of {len(data)} bytes is '
                                 f'not whole records of {width} bytes')
  rows = np.frombuffer(data, np.uint8).reshape(-1, width)
  images = rows[:, n_labels:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return rows[:, :n_labels], images


def _png(image: np.ndarray) -> bytes:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'PNG')
  return buf.getvalue()


def _write(builder, spec: Cifar, path: str, progress: bool) -> None:
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import example_serializer
  from tensorflow_datasets.core import file_adapters
  from tensorflow_datasets.core import writer as writer_lib
  from tensorflow_datasets.core.utils import file_utils
  from tqdm import tqdm

  members = _read_archive(path, spec)
  info = builder.info
  for key, label_file in zip(spec.label_keys, spec.label_files):
    names = members[spec.prefix + label_file].decode().split('\n')
    info.features[key].names = [n for n in names if n.strip()]
  serializer = example_serializer.ExampleSerializer(
      info.features.get_serialized_info())
  os.makedirs(os.path.dirname(builder.data_dir), exist_ok=True)
  with file_utils.incomplete_dir(builder.data_dir) as tmp:
    split_infos = []
    for split, files in spec.splits.items():
      template = tfds.core.ShardedFileTemplate(
          data_dir=tmp, dataset_name=builder.name, split=split,
          filetype_suffix=file_adapters.FileFormat.ARRAY_RECORD.value)
      writer = writer_lib.Writer(
          serializer=serializer, filename_template=template,
          hash_salt=split, disable_shuffling=False,
          example_writer=writer_lib.ExampleWriter(
              file_adapters.FileFormat.ARRAY_RECORD))
      labels, images = zip(*(_records(members[spec.prefix + f],
                                      len(spec.label_keys)) for f in files))
      labels, images = np.concatenate(labels), np.concatenate(images)
      for i in tqdm(range(len(images)), desc=f'{builder.name} {split}',
                    unit=' images', disable=not progress, leave=False):
        example = {'id': f'{split}_{i:05d}', 'image': _png(images[i])}
        example.update(zip(spec.label_keys, (int(v) for v in labels[i])))
        writer.write(i, example)  # the key TFDS's builder yields: its index
      shard_lengths, size = writer.finalize()
      split_infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=shard_lengths, num_bytes=size,
          filename_template=template))
    info.set_splits(tfds.core.SplitDict(split_infos))
    info.download_size = os.path.getsize(path)
    info.write_to_directory(tmp)
    logging.info('prepared %s in %s', builder.name, builder.data_dir)


# ---------------------------------------------------------------------------
# Weights.


def weights_folder(cache_dir: str) -> str:
  """<cache>/weights; with the cache off (''), the default cache folder:
  a download is not a speed cache."""
  return os.path.join(cache_lib.resolve(cache_dir or 'auto'), 'weights')


def ensure_weights(name: str, cache_dir: str, progress: bool = True) -> str:
  """The verified local copy of WEIGHTS[name] (fetched on first use; a copy
  put in <cache>/weights/ by hand is used). Raises WeightsError."""
  try:
    return download.fetch(WEIGHTS[name], weights_folder(cache_dir),
                          progress=progress)
  except download.DownloadError as e:
    raise WeightsError(f'init_checkpoint={name!r}: {e}') from None
  except OSError as e:
    raise WeightsError(f'init_checkpoint={name!r}: cannot write '
                       f'{e.filename or weights_folder(cache_dir)} '
                       f'({e.strerror}); fix that and run again') from None


def init_checkpoint_path(config) -> str:
  """config.init_checkpoint, with a WEIGHTS name replaced by its local
  copy (fetched when missing)."""
  value = config.init_checkpoint
  if value in WEIGHTS:
    return ensure_weights(value, config.cache_dir,
                          progress=not config.get('quiet', False))
  return value


def main(argv=None) -> int:
  import argparse
  parser = argparse.ArgumentParser(
      prog='python -m ekg_jax.prepare',
      description='Prepare datasets (TFDS ArrayRecord, no TensorFlow) and '
                  'fetch weights ahead of a run.')
  parser.add_argument('names', nargs='+',
                      choices=sorted(DATASETS) + sorted(WEIGHTS))
  parser.add_argument('--data_dir', default=None,
                      help='TFDS data folder (default: $TFDS_DATA_DIR, '
                           "else TFDS's default)")
  parser.add_argument('--cache_dir', default='auto',
                      help="weights go to <cache_dir>/weights ('auto': "
                           '$EKG_JAX_CACHE or ~/.cache/ekg_jax)')
  args = parser.parse_args(argv)
  for name in args.names:
    try:
      path = (ensure_dataset(name, args.data_dir) if name in DATASETS
              else ensure_weights(name, args.cache_dir))
    except (PrepareError, WeightsError) as e:
      print(f'ekg_jax.prepare: error: {" ".join(str(e).split())}',
            file=sys.stderr)
      return 2
    print(f'{name}: {path}', flush=True)
  return 0
