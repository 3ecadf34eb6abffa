"""Sphinx configuration of the tutorial book (Sphinx + MyST-NB + sphinx-book-theme: the stack of
Jupyter Book 1, used directly). ``book/build.py`` stages the sources and runs Sphinx with this
folder as its configuration directory; see that file for what goes into the book.

Offline by construction: nothing is executed (the notebooks arrive executed), MathJax is served
from the book's own ``_static/mathjax`` (the MathJax 3 files the PyPI package
``sphinx-mathjax-offline`` ships; only the single-file SVG build and the TeX extensions are
copied, 2.6 MB instead of 24), and no widget JavaScript is loaded from a CDN.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

#: written by book/build.py next to the staged sources (profile, banner, ...)
CONTEXT = (
    json.loads(Path(os.environ.get("ICM_BOOK_CONTEXT", "")).read_text())
    if os.environ.get("ICM_BOOK_CONTEXT")
    else {}
)

project = "icm-tutorial: image coding for machines"
author = "the icm-tutorial authors"
copyright = "the icm-tutorial authors, BSD-3-Clause"
extensions = ["myst_nb", "sphinx.ext.mathjax"]
exclude_patterns = ["_build", "**.ipynb_checkpoints", "book-context.json"]
root_doc = "index"

# ------------------------------------------------------------------ MyST and notebooks
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "html_image"]
myst_heading_anchors = 4  # GitHub-style slugs: the README's #section links keep working
nb_execution_mode = "off"  # the notebooks were executed by `make tutorial`; never here
nb_output_stderr = "remove"  # warnings and progress redraws stay in the terminal
nb_merge_streams = True
nb_ipywidgets_js = {}  # a static page has no kernel: no widget manager from a CDN
nb_mime_priority_overrides = [
    ("html", "application/vnd.jupyter.widget-view+json", None),
    ("html", "application/vnd.jupyter.widget-state+json", None),
]
suppress_warnings = ["myst.header"]  # notebooks start at "# NN ·", sections may skip a level

# ------------------------------------------------------------------ HTML
html_theme = "sphinx_book_theme"
html_title = "icm-tutorial"
html_static_path = ["static"]  # book.css (relative to this folder)
html_css_files = ["book.css"]
html_copy_source = False  # the executed notebooks would double the book's size
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
if CONTEXT.get("banner_html"):
    html_theme_options["announcement"] = CONTEXT["banner_html"]

#: MathJax 3, served locally (relative to _static)
mathjax_path = "mathjax/tex-svg.js"
MATHJAX_FILES = ["tex-svg.js", "input/tex/extensions"]


def _mathjax_source() -> Path:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the book serves MathJax itself: pip install sphinx-mathjax-offline "
            '(it is in icm_lib\'s "dev" extra: pip install -e ".[dev]")'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"


def _copy_mathjax(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    source, target = _mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for name in MATHJAX_FILES:
        src, dst = source / name, target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)


def setup(app):
    _mathjax_source()  # fail before building, with the install command
    app.connect("build-finished", _copy_mathjax)
