"""Command line: python -m ekg_jax.main --config=configs/X.py --workdir=DIR.

Any config value can be overridden, e.g. --config.phases=evaluate or
--config.init_checkpoint=PATH. A mistake in the command or the config ends
with one line naming it (exit status 2); the traceback goes to
`<workdir>/error.log` (`--debug` shows it instead). Unexpected failures
keep their traceback. Log lines go to `<workdir>/log.txt`; the terminal
shows progress, results and the toolkit's warnings (`--verbose`: all).
"""

import errno
import logging
import os
import signal
import sys
import tempfile
import traceback

from absl import app, flags
from absl import logging as absl_logging
import ml_collections
from ml_collections import config_flags

from ekg_jax import pipeline
from ekg_jax.runtime import xla_config
from ekg_jax.files.checkpoint import CheckpointError
from ekg_jax.config import ConfigError
from ekg_jax.data.datasets import DatasetNotFoundError
from ekg_jax.training.loop import NonFiniteError
from ekg_jax.run.workdir import WorkdirError
from ekg_jax.search import SearchError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (a Python file with get_config()).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Folder for results, checkpoints and logs.')
_DEBUG = flags.DEFINE_bool('debug', False,
                           'Show tracebacks of user errors too.')
_VERBOSE = flags.DEFINE_bool('verbose', False,
                             'Show every library\'s log lines on the '
                             'terminal (they always go to <workdir>/log.txt).')
flags.mark_flags_as_required(['config', 'workdir'])

# What a user can fix from the message alone.
USER_ERRORS = (ConfigError, CheckpointError, DatasetNotFoundError,
               NonFiniteError, SearchError, WorkdirError)


def fail(message: str) -> None:
  """One line on stderr, exit status 2."""
  print(f'ekg_jax: error: {" ".join(message.split())}', file=sys.stderr)
  sys.exit(2)


def _flag_message(error: Exception, argv) -> str:
  """absl / ml_collections errors about the command line, in its terms."""
  text = ' '.join(str(error).split())
  configs = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  config = configs[-1] if configs else None  # absl keeps the last
  if config is None:
    return ('--config is required: python -m ekg_jax.main '
            '--config=configs/X.py --workdir=DIR')
  path = config.split(':')[0]
  if 'must have a value other than None' in text:
    if "'config'" in text or '--config' in text:  # get_config() gave None
      return _not_a_config(config, None)
    return ('--workdir is required: python -m ekg_jax.main '
            '--config=configs/X.py --workdir=DIR')
  if not os.path.exists(path):
    return f'--config={config}: no such config file'
  if 'SyntaxError' in text or 'invalid syntax' in text:
    return (f'--config={config}: the config file has a syntax error '
            f'({text[-160:]})')
  if 'positional argument' in text:
    return (f'--config={config}: its get_config() does not take that '
            f'argument ({text[:160]})')
  if 'get_config' in text:
    return f'--config={config}: the config file has no get_config()'
  plain = text.replace('\\', '')
  for arg in reversed(argv):  # the last override is the one that failed
    if not arg.startswith('--config.'):
      continue
    flag = arg.split('=', 1)[0]
    parts = flag[len('--config.'):].split('.')
    if flag[2:] in plain or any(f"'{p}'" in plain for p in parts):
      hint = text[text.index('Did you mean'):] if 'Did you mean' in text \
          else text[:160]
      return (f'{flag}: no such config key, or a value of the wrong type '
              f'({hint.strip(chr(39) + chr(34))})')
  if 'Unknown command line flag' in text:
    return f'{text}; see --helpfull'
  return text[:300]


def _not_a_config(config: str, value) -> str:
  return (f'--config={config}: get_config() returned '
          f'{type(value).__name__ if value is not None else "None"}; it must '
          'return an ml_collections.ConfigDict (start from '
          'ekg_jax.config.default_config() and change what you need)')


def parse_flags(argv):
  """absl's parser; any failure (a flag, the config file or an override:
  ml_collections raises many kinds) is the command line's, told in one
  line."""
  verbosity = absl_logging.get_verbosity()
  # config_flags warns on stderr about a get_config() without a return; the
  # one line below says it instead.
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    rest = flags.FLAGS(argv)
    # ml_collections reports a config file it could not load only when the
    # config is first used: use it here.
    config = _CONFIG.value
    if not isinstance(config, ml_collections.ConfigDict):
      fail(_not_a_config(flags.FLAGS['config'].config_filename, config))
    config.phases  # pylint: disable=pointless-statement
    return rest
  except Exception as e:  # pylint: disable=broad-except
    if '--debug' in argv:
      raise
    fail(_flag_message(e, argv))
  finally:
    absl_logging.set_verbosity(verbosity)


def _log_traceback(workdir: str) -> str:
  folders = [workdir] if workdir and os.path.isdir(workdir) else []
  for folder in [*folders, tempfile.gettempdir()]:
    path = os.path.join(folder, 'error.log')
    try:
      with open(path, 'a') as f:
        traceback.print_exc(file=f)
      return path
    except OSError:
      continue  # an unwritable workdir: the temp folder then
  return 'nowhere (no writable folder)'



class _TerminalFilter(logging.Filter):
  """The toolkit's warnings reach the terminal; other libraries' only from
  ERROR up (JAX's backend probes, orbax's internals and TFDS notices go to
  the log file alone)."""

  def filter(self, record):
    ours = record.name == 'root' or record.name.startswith('ekg_jax')
    return record.levelno >= (logging.WARNING if ours else logging.ERROR)


def _setup_logging(workdir: str, verbose: bool) -> None:
  """Everything at INFO into <workdir>/log.txt; the terminal gets what
  `_TerminalFilter` lets through (everything with --verbose)."""
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO)
  # Libraries' Python warnings (tqdm's, with the source line they quote)
  # become records of the 'py.warnings' logger: the log file keeps them.
  logging.captureWarnings(True)
  for handler in root.handlers:
    if not verbose:
      handler.addFilter(_TerminalFilter())
  try:
    os.makedirs(workdir, exist_ok=True)
    file_handler = logging.FileHandler(os.path.join(workdir, 'log.txt'))
  except OSError:
    return  # the pipeline names the unusable workdir
  file_handler.setFormatter(logging.Formatter(
      '%(asctime)s %(levelname)s %(name)s: %(message)s'))
  root.addHandler(file_handler)


class _Interrupts:
  """SIGINT raises KeyboardInterrupt as Python's default handler does, and
  is also remembered: a library that swallows the exception (one SIGINT
  during data preparation was lost that way in CI) cannot turn an
  interrupted run into a successful exit."""
  seen = False

  @classmethod
  def handler(cls, signum, frame):
    cls.seen = True
    raise KeyboardInterrupt


def _rerun() -> str:
  # The same command with its redo would remove what this run computed.
  return ('rerun the same command without --config.redo'
          if _CONFIG.value.get('redo') else 'rerun the same command')


def _interrupted() -> None:
  # Checkpoints are atomic: the last complete one is where a rerun resumes.
  print(f'ekg_jax: interrupted; {_rerun()} to resume in '
        f'{_WORKDIR.value}', file=sys.stderr)
  sys.exit(130)


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}: every setting is a flag, e.g. '
         '--config.phases=search')
  xla_config.set_fast_cpu_flags()  # before anything starts a JAX backend
  _setup_logging(_WORKDIR.value, _VERBOSE.value)
  try:
    if _CONFIG.value.distributed:
      _initialize_distributed()
      _leave_logs_to_process_0()
    signal.signal(signal.SIGINT, _Interrupts.handler)
    pipeline.run(_CONFIG.value, _WORKDIR.value)
    if _Interrupts.seen:
      _interrupted()
  except USER_ERRORS as e:
    if _DEBUG.value:
      raise
    log = _log_traceback(_WORKDIR.value)
    fail(f'{e} (traceback in {log})')
  except KeyboardInterrupt:
    _interrupted()
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    # Every checkpoint is written to a temp name and renamed (or committed
    # by orbax), so the last complete one survived the failed write.
    fail(f'no space left on device while writing '
         f'{e.filename or "a checkpoint"} in {_WORKDIR.value}. The last '
         f'complete checkpoint is intact: free some space and {_rerun()} '
         'to resume.')


def _initialize_distributed():
  import jax
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:
    raise ConfigError(
        'config.distributed=True: jax.distributed.initialize() found no '
        'cluster (coordinator address, process count and id come from the '
        'environment: Cloud TPU, SLURM, or JAX_COORDINATOR_ADDRESS ...); '
        f'run without it on one host ({str(e).splitlines()[0][:120]})'
    ) from None


def _leave_logs_to_process_0():
  """Other processes keep errors only, on the terminal: process 0 writes
  log.txt and reports for the whole run."""
  from ekg_jax.runtime import distributed
  if distributed.is_primary():
    return
  root = logging.getLogger()
  for handler in list(root.handlers):
    if isinstance(handler, logging.FileHandler):
      root.removeHandler(handler)
      handler.close()
  root.setLevel(logging.ERROR)
  absl_logging.set_verbosity(absl_logging.ERROR)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
