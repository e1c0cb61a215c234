"""Per-phase metrics: `metrics.jsonl` and TensorBoard scalars."""

from __future__ import annotations

import json
import os
from typing import Sequence

from ekg_jax.runtime import distributed


class MetricsWriter:
  """Writes `folder/metrics.jsonl` (rewritten atomically from the whole
  history, so a resumed run never duplicates a line) and TensorBoard scalars
  `prefix/<name>` of the newest entry (`folder/tensorboard`). In a run of
  several processes, process 0 writes; the others' writers do nothing."""

  def __init__(self, folder: str, prefix: str, step_key: str):
    from tensorboardX import SummaryWriter
    self.path = os.path.join(folder, 'metrics.jsonl')
    self.prefix = prefix
    self.step_key = step_key
    self.tensorboard = None
    if distributed.is_primary():
      os.makedirs(folder, exist_ok=True)
      self.tensorboard = SummaryWriter(os.path.join(folder, 'tensorboard'))

  def write(self, history: Sequence[dict]) -> None:
    if self.tensorboard is None:  # not process 0
      return
    tmp = f'{self.path}.tmp'
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(e) + '\n' for e in history)
    os.replace(tmp, self.path)
    if history:
      entry = history[-1]
      for k, v in entry.items():
        if (k != self.step_key and isinstance(v, (int, float))
            and not isinstance(v, bool)):
          self.tensorboard.add_scalar(f'{self.prefix}/{k}', v,
                                      entry[self.step_key])
      self.tensorboard.flush()

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
