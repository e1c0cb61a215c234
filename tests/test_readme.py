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

