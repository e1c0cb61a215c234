"""Command line: python -m ekg_jax.main --config=configs/X.py --workdir=DIR.

Any config value can be overridden, e.g. --config.phases=evaluate or
--config.init_checkpoint=PATH.
"""

import errno

from absl import app, flags
from ml_collections import config_flags

from ekg_jax import pipeline, xla_config

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (a Python file with get_config()).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Folder for results, checkpoints and logs.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  xla_config.set_fast_cpu_flags()  # before anything starts a JAX backend
  if _CONFIG.value.distributed:
    import jax
    jax.distributed.initialize()
  try:
    pipeline.run(_CONFIG.value, _WORKDIR.value)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    # Every checkpoint is written to a temp name and renamed (or committed
    # by orbax), so the last complete one survived the failed write.
    raise SystemExit(
        f'ekg_jax: no space left on device while writing '
        f'{e.filename or "a checkpoint"} in {_WORKDIR.value}. The last '
        'complete checkpoint is intact: free some space and rerun the same '
        'command to resume.') from e


if __name__ == '__main__':
  app.run(main)
