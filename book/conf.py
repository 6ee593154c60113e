"""Sphinx configuration of the book: the committed, executed notebooks rendered as a website.

    make book        # sphinx-build -c book notebooks build/book; open build/book/index.html

The source folder is ``notebooks/`` (its ``index.md`` is the contents page, to which the build adds
the table of contents: every numbered notebook in order); the notebooks are
rendered with their committed outputs by myst-nb, never executed here. Their relative links to the
package's files (``../encnet/...``, ``../README.md``) become downloadable copies of those files. Equations are typeset
by MathJax 3 from the ``sphinx-mathjax-offline`` package, copied into the book, so that the book
renders offline.
"""

from __future__ import annotations

import re
from pathlib import Path

project = "EncNet, step by step"
author = "the encnet authors"
copyright = "2026, " + author
html_title = project

# sphinx-mathjax-offline copies MathJax 3 (the version Sphinx configures) into the book and points Sphinx at it.
extensions = ["myst_nb", "sphinx-mathjax-offline"]
root_doc = "index"
exclude_patterns = ["models", "results", "**/.ipynb_checkpoints", "__pycache__"]
suppress_warnings = ["mystnb.unknown_mime_type"]  # a widget view, if one was ever committed

nb_execution_mode = "off"  # the committed outputs are the results: make reproduce re-runs the notebooks
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_theme_options = {"show_navbar_depth": 1, "home_page_in_toc": True, "use_download_button": True}
html_show_sourcelink = False
html_context = {"default_mode": "light"}


def _add_toctree(app, docname, source):
    """The contents page's table of contents, added here so that ``index.md`` reads well without Sphinx."""
    if docname == root_doc:
        pages = sorted(path.stem for path in Path(app.srcdir).glob("[0-9][0-9]_*.ipynb"))
        source[0] += "\n```{toctree}\n:hidden:\n:maxdepth: 1\n\n" + "\n".join(pages) + "\n```\n"


# A relative link to a Markdown file outside the book (the repository's READMEs): Markdown is a source
# suffix, so MyST would look for a page; the ``path:`` scheme makes it a download of the file instead.
OUTSIDE_MARKDOWN = re.compile(r"\]\((\.\./[^)\s]+\.md)(#[^)\s]*)?\)")


def _outside_markdown_as_downloads(app, docname, source):
    source[0] = OUTSIDE_MARKDOWN.sub(lambda m: f"](path:{m.group(1)})", source[0])


def setup(app):
    app.connect("source-read", _add_toctree)
    app.connect("source-read", _outside_markdown_as_downloads)
