"""Downloads a published file once, checksum verified, atomically.

A file is fetched to a temporary name beside its final one and renamed only
after its sha256 matched the published one, so an interrupted or corrupt
download never looks like a finished one (the partial file is removed). A
copy put in the manual-download folder by hand (an offline machine, TFDS's
`<data_dir>/downloads/manual/` convention) is used instead of the network,
after the same check. Every failure is one line naming the URL and the
folder to put the file in.

Test-only overrides: `EKG_JAX_<NAME>_URL` and `EKG_JAX_<NAME>_SHA256`
(NAME: CIFAR10, CIFAR100, OFFICIAL) point an asset at another server and
checksum; the tests serve small archives from 127.0.0.1 with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from typing import Optional

CHUNK = 1 << 20


class DownloadError(Exception):
  """One line: what failed, the URL and where a copy can be put by hand."""


@dataclasses.dataclass(frozen=True)
class Asset:
  name: str  # the key of the test-only overrides: EKG_JAX_<name>_URL
  url: str
  sha256: str
  filename: str

  def resolved(self) -> 'Asset':
    """With the test-only environment overrides applied."""
    env = lambda key: os.environ.get(f'EKG_JAX_{self.name}_{key}')
    return dataclasses.replace(self, url=env('URL') or self.url,
                               sha256=(env('SHA256') or self.sha256).lower())


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def fetch(asset: Asset, folder: str, manual_dir: Optional[str] = None,
          progress: bool = True, timeout: float = 60.0) -> str:
  """The path of the verified file: `manual_dir/<filename>` when put there
  by hand, else `folder/<filename>` (downloaded now unless it already is)."""
  asset = asset.resolved()
  manual_dir = manual_dir or folder
  manual = os.path.join(manual_dir, asset.filename)
  if os.path.isfile(manual):
    got = sha256_of(manual)
    if got != asset.sha256:  # the user's file: refused, never deleted
      raise DownloadError(
          f'{manual} has sha256 {got}, not the published {asset.sha256} of '
          f'{asset.url}: replace it with the published file')
    return manual
  path = os.path.join(folder, asset.filename)
  if os.path.isfile(path) and sha256_of(path) == asset.sha256:
    return path
  os.makedirs(folder, exist_ok=True)
  # A temporary name in the same folder: the rename below is atomic, and a
  # killed download leaves only a '.partial' file nothing reads.
  fd, partial = tempfile.mkstemp(dir=folder, prefix=asset.filename + '.',
                                 suffix='.partial')
  try:
    with os.fdopen(fd, 'wb') as out:
      got = _download(asset, out, manual_dir, progress, timeout)
    if got != asset.sha256:
      raise DownloadError(
          f'{asset.url} downloaded with sha256 {got}, not the published '
          f'{asset.sha256}: refused and removed; try again, or put a '
          f'verified copy of {asset.filename} in {manual_dir}/')
    os.chmod(partial, 0o644)  # mkstemp's 0600 is for the partial file only
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return path


def _download(asset: Asset, out, manual_dir: str, progress: bool,
              timeout: float) -> str:
  """Streams the URL into `out`; returns the sha256 of what came."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  where = (f'; on a machine without network, download it elsewhere and put '
           f'it in {manual_dir}/ (it is used from there, checksum verified)')
  digest, done, total = hashlib.sha256(), 0, None
  try:
    with urllib.request.urlopen(asset.url, timeout=timeout) as response:
      total = int(response.headers.get('Content-Length') or 0) or None
      with tqdm(total=total, unit='B', unit_scale=True, disable=not progress,
                desc=asset.filename, leave=False) as bar:
        for chunk in iter(lambda: response.read(CHUNK), b''):
          out.write(chunk)  # OSError (a full disk) propagates as itself
          digest.update(chunk)
          done += len(chunk)
          bar.update(len(chunk))
  except urllib.error.URLError as e:  # no network, DNS, HTTP errors
    reason = getattr(e, 'reason', e)
    raise DownloadError(f'cannot download {asset.url} ({reason})'
                        + where) from None
  except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
    raise DownloadError(
        f'download of {asset.url} interrupted after {done:,} of '
        f'{total or "?"} bytes ({type(e).__name__}); the partial file was '
        'removed: run again' + where) from None
  if total is not None and done != total:
    raise DownloadError(
        f'download of {asset.url} interrupted after {done:,} of {total:,} '
        'bytes; the partial file was removed: run again' + where)
  return digest.hexdigest()
