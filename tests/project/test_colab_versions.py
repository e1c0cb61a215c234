"""The Colab notebook on the Colab TPU image's versions (issue 24), the
runtime it is written for; it replaces the notebook's run in the main
environment (the pipeline on the newest JAX is what the other tests run).
Cut down, on CPU, in .venv-colab (jax/jaxlib 0.7.2, flax 0.11.2,
orbax-checkpoint 0.12.4, grain 0.2.18, tensorflow-datasets 4.9.10, no
TensorFlow; `make colab-venv`), through the same install cell a Colab user
runs, pointed at this checkout; then the command line's start-up (XLA
flags) on that XLA."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10

COLAB_PYTHON = REPO / '.venv-colab' / 'bin' / 'python'
REQUIREMENTS = REPO / 'tests' / 'requirements-colab.txt'
# Executes the notebook in the colab virtualenv's own kernel: argv = the
# notebook, SOURCE, WORKDIR, the folder it starts in (Colab: /content), the
# executed notebook's path.
RUNNER = r'''
import sys, nbclient, nbformat
notebook = nbformat.read(sys.argv[1], as_version=4)
for cell in notebook.cells:
  cell.source = (cell.source.replace("SOURCE = ''", f'SOURCE = {sys.argv[2]!r}')
                 .replace("'workdirs/notebook'", repr(sys.argv[3])))
try:
  nbclient.NotebookClient(notebook, timeout=2400, kernel_name='python3',
                          resources={'metadata': {'path': sys.argv[4]}}
                          ).execute()
finally:
  nbformat.write(notebook, sys.argv[5])
'''


def _pinned(name: str) -> str:
  found = re.search(rf'^{name}==(\S+)$', REQUIREMENTS.read_text(), re.M)
  return found.group(1)


def _colab_python():
  if not COLAB_PYTHON.exists():
    if os.environ.get('CI'):
      pytest.fail('CI builds the Colab virtualenv first (make colab-venv)')
    pytest.skip('no .venv-colab (make colab-venv)')
  return str(COLAB_PYTHON)


def _versions(python: str) -> dict:
  out = subprocess.run(
      [python, '-c', 'import importlib.metadata as m, json; print(json.dumps('
       '{n: m.version(n) for n in ("jax", "jaxlib", "flax")}))'],
      capture_output=True, text=True, check=True).stdout
  return json.loads(out)


def _env(tmp_path: pathlib.Path) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'XLA_FLAGS', 'JAX_PLATFORMS')}
  env['EKG_JAX_CACHE'] = str(tmp_path / 'cache')
  return env


def _text(cell) -> str:
  return ''.join(o.get('text', '') + ''.join(o.get('data', {}).get(
      'text/plain', '')) for o in cell.get('outputs', []))


@pytest.mark.slow
@needs_cifar10
def test_notebook_runs_on_the_colab_versions_and_keeps_their_jax(tmp_path):
  python = _colab_python()
  jax_version = _pinned('jax')
  assert _versions(python)['jax'] == jax_version  # the venv as built
  # A fresh install each time: the install cell must really run.
  subprocess.run([python, '-m', 'pip', 'uninstall', '-q', '-y', 'ekg_jax'],
                 capture_output=True, check=False)
  content = tmp_path / 'content'  # where a Colab notebook starts
  content.mkdir()
  env = _env(tmp_path)
  env.update(EKG_NOTEBOOK_SMOKE='1', TFDS_DATA_DIR=TFDS_DIR,
             JAX_PLATFORMS='cpu')
  executed = tmp_path / 'executed.ipynb'
  run = subprocess.run(
      [python, '-c', RUNNER, str(REPO / 'experiments' / 'colab_tpu.ipynb'),
       str(REPO), str(tmp_path / 'run'), str(content), str(executed)],
      env=env, cwd=content, capture_output=True, text=True, timeout=3000)
  assert run.returncode == 0, run.stderr[-3000:]
  import nbformat  # pylint: disable=g-import-not-at-top
  cells = [c for c in nbformat.read(executed, as_version=4).cells
           if c.cell_type == 'code']
  assert not [o for c in cells for o in c.get('outputs', [])
              if o.get('output_type') == 'error']
  install = _text(cells[1])
  assert f'installed ekg_jax from {REPO}' in install, install
  assert f'jax=={jax_version}' in install and 'jaxlib==' in install
  assert f'jax {jax_version} (this runtime\'s, unchanged)' in install
  after = _versions(python)
  assert (after['jax'], after['jaxlib']) == (jax_version, _pinned('jaxlib'))
  assert after['flax'] == _pinned('flax')
  assert f'jax {jax_version}' in _text(cells[2])  # the kernel was this venv
  # The export, made and loaded with the runtime's JAX.
  network = json.loads((tmp_path / 'run' / 'export' / 'network.json')
                       .read_text())
  assert network['jax_version'] == jax_version
  assert network['platforms'] == ['cpu', 'cuda', 'tpu']
  deploy = _text(cells[-1])
  assert f'runs here (jax {jax_version}): logits (8, 10)' in deploy, deploy
  assert (tmp_path / 'run' / 'report.md').exists()
  assert any('image/png' in o.get('data', {}) for c in cells
             for o in c.get('outputs', []))  # the report's plots
  # The command line's start-up on this XLA, which aborts the process on
  # the flag ekg_jax sets for newer ones: the flag is left out there.
  code = ('import json, os; from ekg_jax.runtime import xla_config; '
          'applied = xla_config.set_fast_cpu_flags(); import jax; '
          'print(json.dumps([applied, os.environ.get("XLA_FLAGS"), '
          'jax.devices()[0].platform]))')
  run = subprocess.run([python, '-c', code], cwd=content, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert json.loads(run.stdout) == [False, None, 'cpu']


def test_notebook_without_a_source_stops_with_one_line(tmp_path):
  """Outside a checkout with SOURCE unset: one line saying what to set,
  before anything is cloned or installed."""
  nbformat = pytest.importorskip('nbformat')
  notebook = nbformat.read(REPO / 'experiments' / 'colab_tpu.ipynb',
                           as_version=4)
  code = [c.source for c in notebook.cells if c.cell_type == 'code']
  script = tmp_path / 'cells.py'
  script.write_text('\n'.join(code[:2]))  # the settings and install cells
  run = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  assert run.stderr.strip() == (
      'ekg_jax setup: set SOURCE in the Settings cell to a git URL of '
      'ekg_jax or the path of a checkout, then run again')
  assert not (tmp_path / 'ekg_jax').exists()
