"""Where prepared datasets live, and the error when one is not there."""

from __future__ import annotations

import os
from typing import Optional


class DatasetNotFoundError(FileNotFoundError):
  pass


def resolve_data_dir(data_dir: Optional[str]) -> Optional[str]:
  """Config value first, then $TFDS_DATA_DIR, else TFDS's default."""
  return data_dir or os.environ.get('TFDS_DATA_DIR') or None
