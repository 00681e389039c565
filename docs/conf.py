"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html`` (run by .ci/run)."""

from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
# Importing the trainer's modules imports TensorFlow: keep its start-up messages out of the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gnreg_docs  # noqa: E402

import gnreg  # noqa: E402

project = "gnreg"
copyright = "the gnreg authors; Apache License 2.0"
release = version = gnreg.__version__

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",  # The API pages, one per public module (docs/api.rst).
  "sphinx.ext.napoleon",  # Google-style Args/Returns/Raises sections, as the docstrings use.
  "sphinx.ext.mathjax",  # The docstrings' maths (.. math:: and :math:) in the browser,
  "sphinx-mathjax-offline",  # from a copy of MathJax in the site, so it renders offline too.
  "sphinx.ext.viewcode",
  "myst_parser",  # Pages in Markdown, the README's sections among them.
  "gnreg_docs",  # Generates the config-field, README and command-help pages at every build.
]
templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_generated/commands_help.md"]  # Included by commands.md.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# Each page shows its module's __all__ (autosummary's default); the template also needs to know
# which modules the reference leaves out and which names a package above documents.
autosummary_generate = True
autosummary_ignore_module_all = False
autosummary_context = gnreg_docs.api_context()

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# "Attributes:" sections as fields of the class, since autodoc lists the attributes themselves too.
napoleon_use_ivar = True

html_theme = "alabaster"
html_title = f"gnreg {release}"
html_theme_options = {
  "description": "Gradient-norm regulation for JAX",
  "fixed_sidebar": True,
  "page_width": "1200px",  # Room for 100-column code.
}
