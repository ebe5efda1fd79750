"""Sphinx configuration of the API reference (``make docs``; built with warnings as errors in .ci/run)."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "bcdi-gapfill"
author = "bcdi-gapfill developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "numpydoc"]
autosummary_generate = False
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "none"            # the numpydoc sections give the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
root_doc = "index"
exclude_patterns = ["_build", "benchmarks.md", "errors.md", "design.md", "user-guide.md", "images"]
html_theme = "alabaster"
suppress_warnings = ["config.cache"]
