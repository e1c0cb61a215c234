"""Every config key, its default and what it means, as a Markdown table.

`python docs/config_table.py` rewrites the table in docs/configs.md (between
the `config-keys` markers) from `ekg_jax.config.default_config()`; the
descriptions are the source's comments on each key (the comment lines just
above it, else the one at the end of its line). `tests/project/test_docs.py` checks
that the committed table is what this makes, so a key added, removed or
changed in the config shows up as a failing test until the page follows.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import os
import re
import sys
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, 'docs', 'configs.md')
MARKERS = ('<!-- config-keys:start -->', '<!-- config-keys:end -->')


def comments(source: str, pattern: str) -> dict[str, str]:
  """Name -> comment for each line of `source` matching `pattern` (its
  group 1 is the name): the comment lines right above it, else the comment
  ending the line. A comment block above a section (`c.data = ...`) goes to
  the section's name."""
  trailing = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      trailing[tok.start[0]] = tok.string.lstrip('#').strip()
  found, block = {}, []
  for number, line in enumerate(source.splitlines(), 1):
    stripped = line.strip()
    if stripped.startswith('#'):
      block.append(stripped.lstrip('#').strip())
      continue
    match = re.match(pattern, stripped)
    if match:
      text = ' '.join(block) or trailing.get(number, '')
      if block and number in trailing:
        text += ' ' + trailing[number]
      found[match.group(1)] = text
    block = []
  return found


def described() -> dict[str, str]:
  """Full key -> description, in the order the sources set the keys (a
  training section's recipe keys and the search's options where the
  section is created)."""
  from ekg_jax import config as config_lib
  from ekg_jax.search import options
  from ekg_jax.deploy import options as export_options
  from ekg_jax.knowledge import options as bank_options
  from ekg_jax.training import options as training_options
  top = comments(inspect.getsource(config_lib.default_config),
                 r'c\.([\w.]+)\s*=')
  field = r'(\w+)\s*:\s*[\w\[\], |]+='
  recipe = comments(inspect.getsource(training_options.TrainOptions), field)
  recipe = {k: recipe[k] for k in training_options.RECIPE}
  fields = comments(inspect.getsource(options.SearchConfig), field)
  records = {'memory_bank': bank_options.BankOptions,
             'export': export_options.ExportOptions}
  found = {}
  for key, text in top.items():
    found[key] = text
    if key in ('pretrain', 'finetune'):
      found.update({f'{key}.{name}': t for name, t in recipe.items()})
    if key in records:
      found.update({f'{key}.{name}': t for name, t in comments(
          inspect.getsource(records[key]), field).items()})
    if key == 'search':
      found.update({f'search.{f.name}': fields.get(f.name, '')
                    for f in dataclasses.fields(options.SearchConfig)})
  return found


def leaves(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def cell(text: str) -> str:
  return text.replace('|', '\\|')


def config_files() -> list[str]:
  """A row per file in configs/: its docstring's first paragraph."""
  rows = ['| file | what it sets up |', '|---|---|']
  for name in sorted(os.listdir(os.path.join(ROOT, 'configs'))):
    if name.endswith('.py'):
      with open(os.path.join(ROOT, 'configs', name)) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
      first = ' '.join(doc.split('\n\n')[0].split()).rstrip(':')
      rows.append(f'| `configs/{name}` | {cell(first)} |')
  return rows


def table() -> str:
  """The Markdown between the markers: the config files, then a table of
  keys per section."""
  from ekg_jax.config import default_config
  texts = described()
  values = dict(leaves(default_config()))
  for key in values:
    if key not in texts:
      raise SystemExit(f'config.{key}: no line sets it in the sources '
                       'this script reads; teach docs/config_table.py')
  sections: dict[str, list] = {'': []}
  for key in texts:
    if key in values:  # not a section
      section = key.split('.')[0] if '.' in key else ''
      sections.setdefault(section, []).append(key)
  out = ['## The config files', ''] + config_files() + [
      '', '## Every key', '']
  for section, keys in sections.items():
    out.append(f'### `{section}`' if section else '### Top level')
    if texts.get(section):
      out += ['', cell(texts[section])]
    out += ['', '| key | default | what it is |', '|---|---|---|']
    out += [f'| `{key}` | `{values[key]!r}` | {cell(texts[key])} |'
            for key in keys]
    out.append('')
  return '\n'.join(out).rstrip('\n')


def main() -> None:
  with open(PAGE) as f:
    text = f.read()
  start, end = text.index(MARKERS[0]), text.index(MARKERS[1])
  text = (text[:start] + MARKERS[0] + '\n\n' + table() + '\n\n'
          + text[end:])
  with open(PAGE, 'w') as f:
    f.write(text)


if __name__ == '__main__':
  sys.path.insert(0, ROOT)
  main()
