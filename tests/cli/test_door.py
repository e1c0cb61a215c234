"""Inputs checked at the door (issue 26, item 7). The library: a model and
variables that do not belong together, labels the model cannot have, a
non-model and a non-finite objective are refused naming what is wrong. The
command line: a config file that returns no ConfigDict, caches turned off,
a checkpoint that is not a regular file, an unreadable summary.json or
config.json, a damaged result of a finished phase, each one line with the
way out."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ekg_jax
import ekg_jax.search
from conftest import needs_cifar10

SHAPE = (32, 32, 3)


@pytest.fixture(scope='module')
def resnet20():
  model = ekg_jax.create_model('resnet20', num_classes=10)
  return model, model.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))


def batches(labels=None):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 8) if labels is None else np.asarray(labels)
  return ekg_jax.Batches(
      images=(jnp.asarray(rng.normal(size=(len(labels), *SHAPE)),
                          jnp.float32),),
      labels=(jnp.asarray(labels),))


def test_another_depths_variables_are_refused_naming_the_first_extra(
    resnet20):
  model, _ = resnet20
  deeper = ekg_jax.create_model('resnet32', num_classes=10)
  variables = deeper.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match=r'variables: params/\S+ is not a '
                     r'variable of this model \(CifarResNet\); were they '
                     r'made for another model\?'):
    ekg_jax.prune(model, variables, batches(), 0.8, evaluation='loop')


def test_missing_and_misshaped_variables_are_named(resnet20):
  model, variables = resnet20
  params = dict(variables['params'])
  del params['fc']
  with pytest.raises(ValueError, match=r"the model's params/fc/\w+ "
                     r'\([\d, ]+\) is missing'):
    ekg_jax.prune(model, {**variables, 'params': params}, batches(), 0.8)
  wide = ekg_jax.create_model('resnet20', num_classes=100)
  other = wide.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match=r'params/fc/\w+ has shape '
                     r"\(([\d, ]+)?100,?\); this model's is "
                     r'\(([\d, ]+)?10,?\)'):
    ekg_jax.prune(model, other, batches(), 0.8)


def test_labels_outside_the_models_classes_are_refused(resnet20):
  model, variables = resnet20
  with pytest.raises(ValueError, match=r'batches: label 10 \(batch 0\) is '
                     r'outside \[0, 10\): the model has 10 classes'):
    ekg_jax.prune(model, variables, batches([0, 1, 10, 3]), 0.8)
  with pytest.raises(ValueError, match=r'label -1'):
    ekg_jax.prune(model, variables, batches([-1, 1, 2, 3]), 0.8)


def test_a_plain_function_gets_the_model_contract():
  with pytest.raises(TypeError, match=r'model is a function; it must be a '
                     r'Flax module .* returns logits'):
    ekg_jax.prune(lambda v, x: x, {'params': {}}, batches(), 0.8)


def test_slim_refuses_variables_of_another_model(resnet20):
  model, variables = resnet20
  table = ekg_jax.layer_table(model, SHAPE)
  masks = {'stage0': jnp.ones(16).at[0].set(0)}
  deeper = ekg_jax.create_model('resnet32', num_classes=10)
  other = deeper.init(jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match='is not a variable of this model'):
    ekg_jax.slim(model, other, masks, table, input_shape=SHAPE)
  # Without the input shape, the gated layers' variables are still checked.
  narrow = ekg_jax.create_model('resnet20', num_classes=100).init(
      jax.random.key(0), jnp.zeros((1, *SHAPE)))
  with pytest.raises(ValueError, match=r"params/fc/\w+ has shape"):
    ekg_jax.slim(model, narrow, masks, table)
  with pytest.raises(TypeError, match='it must be a Flax module'):
    ekg_jax.slim(object(), variables, masks, table)
  # And the model's own variables pass both ways.
  small, small_vars = ekg_jax.slim(model, variables, masks, table,
                                   input_shape=SHAPE)
  assert small.apply(small_vars, jnp.zeros((2, *SHAPE))).shape == (2, 10)


def test_a_non_finite_objective_stops_the_search_naming_the_step(resnet20):
  model, variables = resnet20
  nan = lambda logits, labels, teacher: jnp.full(labels.shape, jnp.nan)
  with pytest.raises(ekg_jax.search.SearchError, match=r'search step 1: the '
                     r'objective is nan for candidate \S+ \(\d+ of \d+ '
                     r'candidates\)'):
    ekg_jax.prune(model, variables, batches(), 0.8, objective=nan,
                  evaluation='loop')


def test_no_file_names_a_module_the_package_no_longer_has():
  """Code in strings (subprocess scripts, notebooks, docs) escapes the
  import checks: every `from ekg_jax... import ...` and dotted
  `ekg_jax.<module>.<name>` in the repository's files resolves."""
  import importlib
  import re
  import subprocess
  from conftest import REPO
  files = subprocess.run(['git', 'ls-files'], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
  imports = re.compile(r'from (ekg_jax(?:\.[\w.]+)?) import \(?([\w ,]+)')
  dotted = re.compile(r'(?<![\w/])(ekg_jax(?:\.\w+)+)')
  missing = set()

  def resolves(parts):
    for i in range(len(parts), 0, -1):
      try:
        obj = importlib.import_module('.'.join(parts[:i]))
      except ImportError:
        continue
      for name in parts[i:]:
        try:
          obj = getattr(obj, name)
        except AttributeError:
          try:  # a submodule not imported by its package
            obj = importlib.import_module(f'{obj.__name__}.{name}')
          except (ImportError, AttributeError):
            return False
      return True
    return False

  for name in files:
    if name.startswith(('experiments/results/', 'benchmarks/results/')) or \
        not name.endswith(('.py', '.ipynb', '.md', '.sh', '.cfg')):
      continue
    text = (REPO / name).read_text(errors='replace')
    for m in imports.finditer(text):
      for item in m.group(2).split(','):
        item = item.split(' as ')[0].strip()
        if item and not resolves([*m.group(1).split('.'), item]):
          missing.add(f'{name}: {m.group(1)}.{item}')
    for m in dotted.finditer(text):
      if not resolves(m.group(1).split('.')):
        missing.add(f'{name}: {m.group(1)}')
  assert not missing, sorted(missing)


# ---------------------------------------------------------------------------
# The command line's door.

def test_caches_off_and_a_fifo_checkpoint(tmp_path):
  from ekg_jax.config import default_config
  from ekg_jax.run import validate
  config = default_config()
  config.cache_dir = ''  # documented as: no caches
  validate.validate_config(config)
  fifo = tmp_path / 'weights.pkl'
  os.mkfifo(fifo)
  config.init_checkpoint = str(fifo)
  with pytest.raises(validate.ConfigError,
                     match=r'config.init_checkpoint=.*weights.pkl.: is not '
                           r'a regular file or a directory'):
    validate.validate_config(config)


def test_unreadable_summary_or_config_names_the_file_and_the_way_out(
    tmp_path):
  from ekg_jax.config import default_config
  from ekg_jax.run import workdir
  from ekg_jax.run.phases import PHASES
  (tmp_path / workdir.SUMMARY).write_text('{"search": {"flo')
  with pytest.raises(workdir.WorkdirError,
                     match=r'summary.json is unreadable \(JSONDecodeError: .*'
                           r'\); delete it and rerun: every phase resumes'):
    workdir.load_summary(str(tmp_path))
  (tmp_path / workdir.CONFIG).write_bytes(b'\xff\xfe')
  with pytest.raises(workdir.WorkdirError,
                     match=r'config.json is unreadable .*; restore it, or '
                           r'delete it if you rerun with the config'):
    workdir.check_config(default_config(), str(tmp_path),
                         produced=[PHASES['search']])


@pytest.mark.parametrize('returned', ['{"phases": "evaluate"}', 'None'])
def test_a_config_file_returning_no_config_dict_is_one_line(tmp_path,
                                                            returned):
  import subprocess
  import sys
  from conftest import REPO
  config = tmp_path / 'mine.py'
  config.write_text(f'def get_config():\n  return {returned}\n')
  run = subprocess.run(
      [sys.executable, '-m', 'ekg_jax.main', f'--config={config}',
       f'--workdir={tmp_path / "w"}'], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert run.returncode == 2
  lines = [l for l in run.stderr.splitlines() if l.strip()]
  kind = 'dict' if returned.startswith('{') else 'None'
  assert lines == [f'ekg_jax: error: --config={config}: get_config() '
                   f'returned {kind}; it must return an '
                   'ml_collections.ConfigDict (start from '
                   'ekg_jax.config.default_config() and change what you '
                   'need)'], run.stderr


def test_checks_of_a_phase_apply_only_when_it_will_run():
  from ekg_jax.config import default_config
  from ekg_jax.run import validate
  config = default_config()
  config.pretrain.batch_size = 128  # does not divide over 3 devices
  config.finetune.batch_size = 126
  validate.validate_devices(config, 3, todo=['search', 'finetune'])
  with pytest.raises(validate.ConfigError, match=r'config.pretrain.batch_'
                     r'size=128: does not divide over the 3 devices'):
    validate.validate_devices(config, 3, todo=['pretrain', 'finetune'])
  # allocation=uniform leaves one network that may teach.
  config.search.allocation = 'uniform'
  with pytest.raises(validate.ConfigError, match=r'config.memory_bank.num_'
                     r'teachers=5: search.allocation=uniform takes one step, '
                     r'so one network may teach; use 1'):
    validate.validate_config(config)
  config.memory_bank.num_teachers = 1
  validate.validate_config(config)
  config.memory_bank.num_teachers = 5
  config.phases = 'search'  # no memory bank: nothing to refuse
  validate.validate_config(config)


def test_round_to_is_checked_against_the_widths_and_in_the_floor(caplog):
  from ekg_jax.config import default_config
  from ekg_jax.run import validate
  model = ekg_jax.create_model('resnet20')  # gates of 16, 32 and 64
  table = ekg_jax.layer_table(model, SHAPE)
  config = default_config()
  config.model.name = 'resnet20'
  config.search.round_to = 64
  with pytest.raises(validate.ConfigError, match=r'config.search.round_to='
                     r'64: every gate of resnet20 has at most 64 channels'):
    validate.validate_against_model(config, table)
  # round_to=32: the 16- and 32-wide gates stay whole, which raises the
  # floor above what one channel per gate would give.
  config.search.round_to = 32
  config.search.target_flops_rate = 0.3
  with pytest.raises(validate.ConfigError, match=r'cannot get below a FLOPs '
                     r'rate of 0\.\d+ even with every gate at its minimum '
                     r'\(round_to=32\)'):
    validate.validate_against_model(config, table)
  config.search.round_to = 1
  validate.validate_against_model(config, table)
  assert 'is met only with every gate at its minimum' not in caplog.text
  # A target only the all-minimum network meets passes, with a warning.
  floor = ekg_jax.flops_rate(table, {g: 1 for g in ekg_jax.gate_specs(table)},
                             include_bn=True)
  config.search.target_flops_rate = floor * 1.0001
  validate.validate_against_model(config, table)
  assert 'is met only with every gate at its minimum' in caplog.text


@needs_cifar10
def test_a_damaged_finished_phase_is_one_line_and_its_redo_works(tmp_path):
  """A finished pretrain whose orbax files are truncated: the run that
  reads them ends in one line naming the folder and --config.redo (no
  asyncio noise after it); that rerun computes the phase again."""
  import json
  import subprocess
  import sys
  from conftest import REPO, TFDS_DIR, random_variables
  from ekg_jax.files import checkpoint
  from ekg_jax.run import workdir
  model = ekg_jax.create_model('resnet20', num_classes=10)
  final = tmp_path / workdir.PRETRAINED
  checkpoint.save_model(str(final), 'resnet20', {}, random_variables(
      model, jnp.zeros((1, *SHAPE))))
  workdir.record(str(tmp_path), {'pretrain': {'epochs': 0}})
  for path in (final / 'variables').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(path.read_bytes()[:10])
  command = [sys.executable, '-m', 'ekg_jax.main',
             '--config=configs/resnet20_cifar.py', f'--workdir={tmp_path}',
             '--config.quiet=True', '--config.phases=evaluate',
             '--config.data.train_split=train[:256]',
             '--config.data.test_split=test[:100]',
             '--config.pretrain.epochs=0',
             f'--config.data.data_dir={TFDS_DIR}']
  run = lambda *extra: subprocess.run(
      [*command, *extra], cwd=REPO, capture_output=True, text=True,
      timeout=600)
  damaged = run()
  assert damaged.returncode == 2, damaged.stderr[-3000:]
  lines = [l for l in damaged.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, damaged.stderr[-3000:]
  assert lines[0].startswith(f'ekg_jax: error: {final} holds no readable '
                             'variables'), lines[0]
  assert ("it is a result of phase 'pretrain': rerun with "
          '--config.redo=pretrain') in lines[0]
  redo = run('--config.redo=pretrain')
  assert redo.returncode == 0, redo.stderr[-3000:]
  summary = json.loads((tmp_path / workdir.SUMMARY).read_text())
  assert summary['pretrain']['epochs'] == 0 and 'breakdown' in (
      summary['pretrain'])  # computed again, not the entry made above
  assert summary['base']['test_images'] == 100
