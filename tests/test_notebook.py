"""The Colab notebook runs top to bottom (cut down, on CPU)."""

import pytest

from conftest import REPO, TFDS_DIR, needs_cifar10


@pytest.mark.slow
@needs_cifar10
def test_notebook_executes(tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  monkeypatch.setenv('EKG_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('TFDS_DATA_DIR', TFDS_DIR)
  notebook = nbformat.read(REPO / 'experiments' / 'colab_tpu.ipynb',
                           as_version=4)
  # Results go to a temporary workdir, not the repository's.
  for cell in notebook.cells:
    cell.source = cell.source.replace("'workdirs/notebook'",
                                      repr(str(tmp_path / 'run')))
  nbclient.NotebookClient(notebook, timeout=600, kernel_name='python3',
                          resources={'metadata': {'path': str(REPO)}}
                          ).execute()
  assert (tmp_path / 'run' / 'report.md').exists()
  outputs = [o for c in notebook.cells if c.cell_type == 'code'
             for o in c.get('outputs', [])]
  assert any('image/png' in o.get('data', {}) for o in outputs)
  assert not any(o.get('output_type') == 'error' for o in outputs)
