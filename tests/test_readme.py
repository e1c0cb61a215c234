"""The README's library example runs as written."""

import re

from conftest import REPO


def test_readme_library_example_runs(capsys):
  readme = (REPO / 'README.md').read_text()
  section = readme[readme.index('## Library API'):]
  code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
  exec(compile(code, 'README.md', 'exec'), {})  # noqa: S102
  printed = capsys.readouterr().out.splitlines()
  assert printed[-1] == '(64, 10)'
  assert 0 < float(printed[-2]) <= 0.8



def test_readme_performance_tables_are_the_committed_results():
  """The Performance section shows benchmarks/results/cpu-2cores.md as the
  benchmark wrote it (after its 'Made by' line)."""
  readme = (REPO / 'README.md').read_text()
  results = (REPO / 'benchmarks' / 'results' / 'cpu-2cores.md').read_text()
  tables = results.split('\n', 2)[2].strip()
  section = readme[readme.index('## Performance'):readme.index(
      '## Reliability')]
  assert tables in section


def test_readme_shows_every_committed_device_table():
  """Each accelerator table device_check.sh wrote is in the README as
  written (its rows after the title and the run's line)."""
  readme = (REPO / 'README.md').read_text()
  section = readme[readme.index('### On a GPU'):readme.index(
      '## Reliability')]
  tables = sorted((REPO / 'benchmarks' / 'results').glob('device-*.md'))
  assert tables
  for path in tables:
    assert path.read_text().split('\n', 2)[2].strip() in section, path


def test_readme_shows_the_committed_speedup_table():
  """The Deployment section shows benchmarks/results/speedup-cpu-2cores.md
  as speedup.py wrote it."""
  readme = (REPO / 'README.md').read_text()
  section = readme[readme.index('## Deployment'):readme.index('## Layout')]
  table = (REPO / 'benchmarks' / 'results' /
           'speedup-cpu-2cores.md').read_text().strip()
  assert table in section
