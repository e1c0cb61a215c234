"""The accelerator check's smoke run (CPU, `--quick`): every section runs
in its own process and lands in the JSON and the Markdown table."""

import json
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_device_check_quick_runs_every_section(tmp_path):
  proc = subprocess.run(
      ['bash', 'benchmarks/device_check.sh', '--quick',
       f'--out-dir={tmp_path}'], cwd=REPO, capture_output=True, text=True,
      timeout=900, env={'PYTHON': sys.executable, 'PATH': '/usr/bin:/bin'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  [path] = tmp_path.glob('device-*.json')
  results = json.loads(path.read_text())
  sections = results['sections']
  assert set(sections) == {'finetune', 'search', 'search_e2e', 'memory_bank',
                           'inference'}
  assert sections['search_e2e']['compiles_after_step_1'] == 0
  assert not [s for s in sections.values() if 'error' in s]
  assert sections['finetune']['bfloat16']['images_per_s']['median'] > 0
  assert set(sections['search']['seconds']) == {
      'importance', 'prefix', 'loop', 'vmap_chunk_2'}
  inference = sections['inference']
  assert inference['macs']['slimmed'] < inference['macs']['dense']
  table = path.with_suffix('.md').read_text()
  assert table.count('| search |') == 4 and 'failed' not in table
