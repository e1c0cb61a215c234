"""Sphinx configuration: the documentation site (`make docs`).

The source folder is the repository root, not docs/, so that README.md,
experiments/README.md and benchmarks/README.md are pages of the site and
the relative Markdown links between them and docs/*.md resolve the same way
on GitHub and here (Sphinx then checks every link and anchor).
"""

import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
# Document the checkout being built, not whichever copy is installed.
sys.path.insert(0, ROOT)

project = 'ekg_jax'
author = 'ekg_jax authors'
copyright = '2026, ekg_jax authors'  # noqa: A001 (Sphinx's name)

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
]

root_doc = 'docs/index'
# Only these files are pages: the rest of the repository (virtualenvs,
# workdirs, notebooks) is not walked for sources.
include_patterns = ['README.md', 'docs/**', 'experiments/README.md',
                    'benchmarks/README.md']
exclude_patterns = ['.venv*', 'workdirs', '.git', 'docs/_build',
                    'docs/_extra', 'docs/_templates', '**/.pytest_cache']
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}

# Links such as docs/deployment.md#which-jax-loads-modeljax: anchors as
# GitHub makes them, checked by Sphinx.
myst_heading_anchors = 4

# Docstrings write `name` for code, as Markdown does.
default_role = 'code'
# The pages holding autosummary tables, named: with the repository root as
# the source folder, `True` finds none of them.
autosummary_generate = ['docs/api.md']
# Classes with their own documented members, not every inherited Flax
# Module method.
templates_path = [os.path.join(ROOT, 'docs', '_templates')]
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = 'sphinx_book_theme'
html_title = 'ekg_jax'
html_theme_options = {
    'show_toc_level': 2,
}
# index.html at the top of the build, sending readers to docs/index.html.
html_extra_path = ['_extra']
