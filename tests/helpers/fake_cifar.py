"""Small archives in the CIFAR binary format and a local HTTP server for
them: the tests prepare datasets and fetch weights without the internet."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import tarfile
import threading

import numpy as np

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')


def cifar10_archive(path: str, train_per_batch: int = 20, test: int = 20,
                    seed: int = 0) -> dict:
  """Writes a cifar-10-binary.tar.gz of 5 train batches and a test batch;
  returns {'train': (images, labels), 'test': ...} in archive order.
  Images carry a per-class colour plus noise, so a network learns some."""
  rng = np.random.default_rng(seed)
  splits, members = {}, {}
  for split, files, n in (
      ('train', [f'data_batch_{i}.bin' for i in range(1, 6)],
       train_per_batch), ('test', ['test_batch.bin'], test)):
    all_images, all_labels = [], []
    for f in files:
      labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
      c = labels.astype(np.float32)
      base = np.stack([(40 * c) % 256, 255 - 25 * c, np.full_like(c, 120)],
                      -1)
      images = np.clip(base[:, None, None, :] +
                       rng.normal(0, 40, (n, 32, 32, 3)), 0, 255
                       ).astype(np.uint8)
      rows = np.concatenate([labels[:, None],
                             images.transpose(0, 3, 1, 2).reshape(n, -1)], 1)
      members[f] = rows.tobytes()
      all_images.append(images)
      all_labels.append(labels)
    splits[split] = (np.concatenate(all_images), np.concatenate(all_labels))
  members['batches.meta.txt'] = ('\n'.join(CIFAR10_CLASSES) + '\n\n').encode()
  with tarfile.open(path, 'w:gz') as tar:
    for name, data in members.items():
      info = tarfile.TarInfo('cifar-10-batches-bin/' + name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return splits


def sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
  truncate = {}  # file name -> bytes sent before the connection is dropped

  def do_GET(self):  # pylint: disable=invalid-name
    name = os.path.basename(self.path)
    cut = self.truncate.get(name)
    if cut is None:
      return super().do_GET()
    data = open(os.path.join(self.directory, name), 'rb').read()
    self.send_response(200)
    self.send_header('Content-Length', str(len(data)))
    self.end_headers()
    self.wfile.write(data[:cut])  # then close: the download is interrupted

  def log_message(self, *args):
    pass


@contextlib.contextmanager
def serve(folder: str, truncate: dict | None = None):
  """Serves `folder` on 127.0.0.1; yields the base URL. Files named in
  `truncate` are cut after that many bytes (a dropped connection)."""
  handler = type('Handler', (_Handler,), {'truncate': truncate or {}})
  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0),
      lambda *a, **k: handler(*a, directory=folder, **k))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f'http://127.0.0.1:{server.server_address[1]}'
  finally:
    server.shutdown()
    server.server_close()
