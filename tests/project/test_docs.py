"""The README and the documentation pages (docs/) say what is true: their
Python blocks run, their links and anchors resolve, the result files they
name exist, and the tables copied from scripts are the committed results.
Building the site (`make docs`, warnings as errors) is CI's, not this
suite's: it takes too long here."""

import importlib.util
import re

import pytest

from conftest import REPO

README = REPO / 'README.md'
DOCS = REPO / 'docs'
# The line before a ```python fence that marks it as not run (contributing).
SKETCH = '<!-- sketch -->'


def pages():
  """README.md and every Markdown page under docs/ (not the build)."""
  found = sorted(p for p in DOCS.rglob('*.md') if '_build' not in p.parts)
  return [README] + found


def name(path):
  return str(path.relative_to(REPO))


def python_blocks(text):
  """The ```python blocks of a page, dedented to their fence, without the
  sketches: (first line number, code)."""
  lines, blocks, i = text.split('\n'), [], 0
  while i < len(lines):
    line = lines[i]
    if line.strip() == '```python':
      indent = len(line) - len(line.lstrip())
      previous = next((l.strip() for l in reversed(lines[:i]) if l.strip()),
                      '')
      end = next(j for j in range(i + 1, len(lines))
                 if lines[j].strip() == '```')
      if previous != SKETCH:
        blocks.append((i + 2, '\n'.join(l[indent:]
                                        for l in lines[i + 1:end])))
      i = end
    i += 1
  return blocks


def prose(text):
  """The page without its fenced blocks and inline code, where links are
  Markdown and not examples."""
  text = re.sub(r'^\s*```.*?^\s*```', '', text, flags=re.S | re.M)
  return re.sub(r'`[^`\n]*`', '', text)


def slug(heading):
  """GitHub's anchor for a heading (myst_heading_anchors makes the same)."""
  heading = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)
  heading = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return heading.replace(' ', '-')


def anchors(path):
  text = re.sub(r'^\s*```.*?^\s*```', '', path.read_text(),
                flags=re.S | re.M)
  seen, found = {}, set()
  for heading in re.findall(r'^#{1,6} +(.+?) *#*$', text, flags=re.M):
    base = slug(heading)
    n = seen.get(base, 0)
    seen[base] = n + 1
    found.add(base if n == 0 else f'{base}-{n}')
  return found


def _library_guide(out: list[str]) -> bool:
  """Each example's FLOPs rate (the line before its slimmed network's
  logits' shape) is within its 0.8 target; the bank holds 256 images' logits
  of 3 teachers, of which 1 to 3 are kept."""
  shapes = [i for i, line in enumerate(out) if line == '(64, 10)']
  bank = out.index('(256, 3, 10)')
  return (len(shapes) == 2
          and all(0 < float(out[i - 1]) <= 0.8 for i in shapes)
          and 1 <= float(out[bank + 1].split()[0]) <= 3)


# What a page's blocks print where the page promises it.
PRINTED = {'docs/library.md': _library_guide}


@pytest.mark.parametrize('page', [name(p) for p in pages()
                                  if python_blocks(p.read_text())])
def test_python_blocks_run(page, capsys):
  """A page's blocks run in order in one namespace, as a reader would."""
  namespace = {}
  for line, code in python_blocks((REPO / page).read_text()):
    exec(compile('\n' * (line - 1) + code, page, 'exec'), namespace)  # noqa: S102
  check = PRINTED.get(page)
  if check:
    assert check(capsys.readouterr().out.splitlines())


def test_the_library_guide_has_a_checked_example():
  assert python_blocks((DOCS / 'library.md').read_text())
  assert set(PRINTED) <= {name(p) for p in pages()}


def test_sketch_marker():
  text = ('a\n\n<!-- sketch -->\n```python\nraise\n```\n\n  ```python\n'
          '  x = 1\n  ```\n')
  assert python_blocks(text) == [(9, 'x = 1')]


def test_relative_links_and_anchors_resolve():
  broken = []
  for page in pages():
    for target in re.findall(r'!?\[[^\]]*\]\(([^)\s]+)\)',
                             prose(page.read_text())):
      if re.match(r'[a-z]+:', target):
        continue  # http(s), mailto
      path, _, anchor = target.partition('#')
      file = (page.parent / path).resolve() if path else page
      if not file.exists():
        broken.append(f'{name(page)}: {target} (no such file)')
      elif anchor and file.suffix == '.md' and anchor not in anchors(file):
        broken.append(f'{name(page)}: {target} (no such heading)')
  assert not broken, '\n'.join(broken)


def test_named_result_files_exist():
  """Every measurement's result file, as the pages name it (globs and
  {a,b} alternatives allowed; <placeholders> skipped)."""
  missing = []
  for page in pages():
    for path in re.findall(r'`((?:experiments|benchmarks)/results/[^`\s]*)`',
                           page.read_text()):
      if '<' in path:
        continue
      alternatives = re.match(r'(.*)\{(.*)\}(.*)', path)
      paths = ([alternatives[1] + a + alternatives[3]
                for a in alternatives[2].split(',')]
               if alternatives else [path])
      for p in paths:
        if not list(REPO.glob(p.rstrip('/'))):
          missing.append(f'{name(page)}: {p}')
  assert not missing, '\n'.join(missing)


def test_api_page_documents_every_exported_name():
  import ekg_jax
  text = (DOCS / 'api.md').read_text()
  block = text[text.index('.. autosummary::'):]
  listed = re.findall(r'^   (\w+)$', block, flags=re.M)
  assert sorted(listed) == sorted(ekg_jax.__all__)


def test_configs_page_is_what_the_generator_makes():
  spec = importlib.util.spec_from_file_location(
      'config_table', DOCS / 'config_table.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  text = (DOCS / 'configs.md').read_text()
  start, end = (text.index(m) for m in module.MARKERS)
  assert text[start + len(module.MARKERS[0]):end].strip() == module.table(), (
      'run: python docs/config_table.py')


def test_readme_is_a_map():
  assert len(README.read_text().splitlines()) <= 250


def test_performance_tables_are_the_committed_results():
  """The Performance page shows benchmarks/results/cpu-2cores.md as the
  benchmark wrote it (after its 'Made by' line)."""
  page = (DOCS / 'performance.md').read_text()
  results = (REPO / 'benchmarks' / 'results' / 'cpu-2cores.md').read_text()
  assert results.split('\n', 2)[2].strip() in page


def test_every_committed_device_table_is_shown():
  """Each accelerator table device_check.sh wrote is on the Performance
  page as written (its rows after the title and the run's line)."""
  page = (DOCS / 'performance.md').read_text()
  section = page[page.index('## On a GPU'):]
  tables = sorted((REPO / 'benchmarks' / 'results').glob('device-*.md'))
  assert tables
  for path in tables:
    assert path.read_text().split('\n', 2)[2].strip() in section, path


def test_deployment_shows_the_committed_speedup_table():
  """The Deployment page shows benchmarks/results/speedup-cpu-2cores.md as
  speedup.py wrote it."""
  page = (DOCS / 'deployment.md').read_text()
  table = (REPO / 'benchmarks' / 'results' /
           'speedup-cpu-2cores.md').read_text().strip()
  assert table in page
