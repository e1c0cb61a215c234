"""Data that prepares itself and weights that fetch themselves: small CIFAR
archives and a weights file served from 127.0.0.1 (no internet), through the
test-only URL/checksum overrides (ekg_jax/data/download.py)."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing

from conftest import OFFICIAL_RESNET56, REPO, TFDS_DIR, needs_official
import fake_cifar
import fake_tfds
from ekg_jax.files import checkpoint as ckpt_lib
from ekg_jax.files import official
from ekg_jax import config as config_lib
from ekg_jax.data import datasets as data_lib
from ekg_jax.data import download
from ekg_jax.run import preflight
from ekg_jax.data import prepare
from ekg_jax.run import validate

ARCHIVE = 'cifar-10-binary.tar.gz'


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  """A 100/20-image CIFAR-10 archive and a weights file on a local server."""
  folder = tmp_path_factory.mktemp('served')
  splits = fake_cifar.cifar10_archive(str(folder / ARCHIVE))
  weights = folder / 'stand-in.pkl'
  weights.write_bytes(b'stand-in weights ' * 100)
  with fake_cifar.serve(str(folder)) as url:
    yield dict(url=url, folder=folder, splits=splits, weights=weights)


@pytest.fixture
def cifar_url(served, monkeypatch):
  monkeypatch.setenv('EKG_JAX_CIFAR10_URL', f'{served["url"]}/{ARCHIVE}')
  monkeypatch.setenv('EKG_JAX_CIFAR10_SHA256',
                     fake_cifar.sha256(str(served['folder'] / ARCHIVE)))
  return served


def left_behind(data_dir):
  """Every file under data_dir (what a failed preparation left)."""
  return sorted(os.path.relpath(os.path.join(d, f), data_dir)
                for d, _, files in os.walk(data_dir) for f in files)


def one_line(error) -> str:
  text = str(error.value)
  assert '\n' not in text
  return text


def test_prepared_on_first_read_matches_the_archive(cifar_url, tmp_path):
  split = data_lib.load_split('cifar10', 'train', str(tmp_path))
  source = tfds.data_source('cifar10', split='train', data_dir=str(tmp_path))
  ids = [int(source[i]['id'].decode().split('_')[1])
         for i in range(len(source))]
  # TFDS's builder order: records sorted by the md5 of their key, salted
  # with the split's name.
  assert ids == sorted(range(100), key=hashing.Hasher('train').hash_key)
  images, labels = cifar_url['splits']['train']
  np.testing.assert_array_equal(split.images, images[ids])  # PNG: lossless
  np.testing.assert_array_equal(split.labels, labels[ids])
  test = data_lib.load_split('cifar10', 'test', str(tmp_path))
  assert len(test) == 20
  info = source.dataset_info
  assert str(info.version) == '3.0.2' and info.file_format.value == (
      'array_record')
  assert info.features['label'].names == list(fake_cifar.CIFAR10_CLASSES)
  version_dir = tmp_path / 'cifar10' / '3.0.2'
  shared = os.path.join(TFDS_DIR, 'cifar10', '3.0.2')
  if os.path.isdir(shared):  # the same metadata as TFDS's own build
    for name in ('features.json', 'label.labels.txt'):
      assert (version_dir / name).read_text() == open(
          os.path.join(shared, name)).read()
  assert 'tensorflow' not in sys.modules


def test_checksum_mismatch_is_refused_and_removed(cifar_url, tmp_path,
                                                  monkeypatch):
  monkeypatch.setenv('EKG_JAX_CIFAR10_SHA256', '0' * 64)
  with pytest.raises(prepare.PrepareError) as e:
    data_lib.split_size('cifar10', 'train', str(tmp_path))
  assert 'not the published ' + '0' * 64 in one_line(e)
  assert left_behind(tmp_path) == []
  assert not prepare.is_prepared('cifar10', str(tmp_path))


def test_interrupted_download_leaves_nothing(served, tmp_path, monkeypatch):
  folder = tmp_path / 'srv'
  folder.mkdir()
  shutil.copy(served['folder'] / ARCHIVE, folder / ARCHIVE)
  with fake_cifar.serve(str(folder), truncate={ARCHIVE: 5000}) as url:
    monkeypatch.setenv('EKG_JAX_CIFAR10_URL', f'{url}/{ARCHIVE}')
    with pytest.raises(prepare.PrepareError) as e:
      prepare.ensure_dataset('cifar10', str(tmp_path / 'data'),
                             progress=False)
  assert 'interrupted after 5,000 of' in one_line(e)
  assert left_behind(tmp_path / 'data') == []


def test_offline_names_url_and_folder_then_uses_a_manual_copy(
    cifar_url, tmp_path, monkeypatch):
  url = 'http://127.0.0.1:9/' + ARCHIVE  # the discard port: refused
  monkeypatch.setenv('EKG_JAX_CIFAR10_URL', url)
  data_dir = tmp_path / 'data'
  manual = data_dir / 'downloads' / 'manual'
  with pytest.raises(data_lib.DatasetNotFoundError) as e:
    data_lib.split_size('cifar10', 'test', str(data_dir))
  assert f'cannot download {url}' in one_line(e)
  assert f'put it in {manual}/' in one_line(e)
  assert left_behind(data_dir) == []
  manual.mkdir(parents=True)
  shutil.copy(cifar_url['folder'] / ARCHIVE, manual / ARCHIVE)
  assert data_lib.split_size('cifar10', 'test', str(data_dir)) == 20


def test_disk_full_while_writing_leaves_nothing_prepared(cifar_url, tmp_path,
                                                         monkeypatch):
  from tensorflow_datasets.core import writer as writer_lib

  def full(self, path, examples):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

  monkeypatch.setattr(writer_lib.ExampleWriter, 'write', full)
  with pytest.raises(prepare.PrepareError) as e:
    prepare.ensure_dataset('cifar10', str(tmp_path), progress=False)
  assert 'no space left on device' in one_line(e)
  assert not (tmp_path / 'cifar10').exists() or not any(
      (tmp_path / 'cifar10').iterdir())  # no version, no incomplete folder
  assert not prepare.is_prepared('cifar10', str(tmp_path))


def test_tfrecord_folder_is_refused_with_a_command_that_works(cifar_url,
                                                              tmp_path):
  version_dir = fake_tfds.write_dataset(
      str(tmp_path), 'cifar10', {'train': 4, 'test': 4}, num_classes=10,
      file_format='tfrecord')
  with pytest.raises(data_lib.DatasetNotFoundError) as e:
    data_lib.split_size('cifar10', 'train', str(tmp_path))
  command = re.search(r'mv \S+ \S+$', one_line(e)).group()
  assert command == f'mv {version_dir} {version_dir}.tfrecord'
  subprocess.run(command, shell=True, check=True)
  assert data_lib.split_size('cifar10', 'train', str(tmp_path)) == 100


def test_prepare_command(cifar_url, tmp_path):
  env = dict(os.environ, EKG_JAX_CACHE=str(tmp_path / 'cache'),
             EKG_JAX_OFFICIAL_URL='http://127.0.0.1:9/res56_cifar10.pkl')
  result = subprocess.run(
      [sys.executable, '-m', 'ekg_jax.prepare', 'cifar10', 'official',
       f'--data_dir={tmp_path}'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=120)
  assert result.stdout.strip() == f'cifar10: {tmp_path}/cifar10/3.0.2'
  assert result.returncode == 2  # the weights: offline
  last = result.stderr.rstrip('\n').split('\n')[-1]  # after the progress
  assert last.startswith('ekg_jax.prepare: error: ')
  assert 'cannot download http://127.0.0.1:9/res56_cifar10.pkl' in last


def test_registered_archives_and_weights_are_the_published_ones():
  for name, spec in prepare.DATASETS.items():  # TFDS's file agrees
    asset = prepare.archive(name)
    assert asset.sha256 == spec.sha256 and asset.url == spec.url
  if OFFICIAL_RESNET56.is_file():
    assert prepare.WEIGHTS['official'].sha256 == download.sha256_of(
        str(OFFICIAL_RESNET56))


def official_served(served, monkeypatch, path):
  shutil.copy(path, served['folder'] / 'res56_cifar10.pkl')
  monkeypatch.setenv('EKG_JAX_OFFICIAL_URL',
                     f'{served["url"]}/res56_cifar10.pkl')
  monkeypatch.setenv('EKG_JAX_OFFICIAL_SHA256', download.sha256_of(path))


def test_official_weights_fetched_once_and_verified(served, tmp_path,
                                                    monkeypatch):
  official_served(served, monkeypatch, str(served['weights']))
  config = config_lib.default_config()
  config.init_checkpoint = 'official'
  config.cache_dir = str(tmp_path / 'cache')
  config.quiet = True
  validate.validate_config(config)  # 'official' is a valid value
  weights = preflight.check_weights(config, ['evaluate'], str(tmp_path),
                                    'pretrained')
  assert weights.startswith(f'official: {served["url"]}/res56_cifar10.pkl')
  path = tmp_path / 'cache' / 'weights' / 'res56_cifar10.pkl'
  assert path.read_bytes() == served['weights'].read_bytes()
  monkeypatch.setenv('EKG_JAX_OFFICIAL_URL', 'http://127.0.0.1:9/x.pkl')
  assert prepare.init_checkpoint_path(config) == str(path)  # no network
  path.write_bytes(b'damaged')  # or replaced by hand: refused, kept
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    prepare.init_checkpoint_path(config)
  assert f'{path} has sha256 ' in one_line(e)
  assert path.read_bytes() == b'damaged'
  monkeypatch.setenv('EKG_JAX_OFFICIAL_URL',
                     f'{served["url"]}/res56_cifar10.pkl')
  monkeypatch.setenv('EKG_JAX_OFFICIAL_SHA256', 'f' * 64)
  path.unlink()
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    prepare.init_checkpoint_path(config)
  assert 'not the published ' + 'f' * 64 in one_line(e)
  assert os.listdir(path.parent) == []


@needs_official
def test_official_weights_load_through_the_safe_loader(served, tmp_path,
                                                       monkeypatch):
  from ekg_jax.run.phases import common
  official_served(served, monkeypatch, str(OFFICIAL_RESNET56))
  config = config_lib.default_config()
  config.model.name = 'resnet56'
  config.init_checkpoint = 'official'
  config.cache_dir = str(tmp_path / 'cache')
  variables = common.init_variables(config, common.build_model(config),
                                    str(tmp_path))
  reference = official.read_pickled_arrays(str(OFFICIAL_RESNET56))
  np.testing.assert_array_equal(variables['params']['conv']['kernel'],
                                reference['conv/kernel:0'])



# The quickstart cut down to the served archive (10 train images per class):
# compiling every phase's programs still takes ~5 minutes on 2 busy cores.
TINY_QUICKSTART = (
    '--config.data.train_split=train --config.data.test_split=test '
    '--config.data.val_per_class=2 --config.data.warmup_per_class=2 '
    '--config.data.eval_batch_size=20 --config.search.batch_size=20 '
    '--config.search.target_flops_rate=0.9 --config.warmup.batch_size=20 '
    '--config.memory_bank.num_teachers=1 --config.memory_bank.batch_size=20 '
    '--config.pretrain.epochs=1 --config.pretrain.batch_size=20 '
    '--config.finetune.epochs=1 --config.finetune.batch_size=20 '
    '--config.quiet=True')


@pytest.mark.slow
def test_fresh_clone_make_demo_prepares_its_data(cifar_url, tmp_path):
  """`git clone` + `make demo` with no ../shared and an empty TFDS folder:
  no other command. The clone is of the committed HEAD; it uses this
  checkout's virtualenv (-o: never reinstalled from the clone)."""
  clone, data_dir = tmp_path / 'ekg_jax', tmp_path / 'tfds'
  data_dir.mkdir()
  subprocess.run(['git', 'clone', '-q', str(REPO), str(clone)], check=True)
  assert not (tmp_path / 'shared').exists()
  venv = os.path.dirname(os.path.dirname(sys.executable))
  env = dict(os.environ, TFDS_DATA_DIR=str(data_dir))
  result = subprocess.run(
      ['make', '-o', f'{venv}/.installed', 'demo', f'VENV={venv}',
       f'DEMO_ARGS={TINY_QUICKSTART}'], cwd=clone, env=env,
      capture_output=True, text=True, timeout=1200)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(
      (clone / 'workdirs' / 'quickstart' / 'summary.json').read_text())
  assert summary['pretrain']['epochs'] == 1
  assert summary['final']['flops'] == summary['search']['flops']
  assert prepare.is_prepared('cifar10', str(data_dir))
