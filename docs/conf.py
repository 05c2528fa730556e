"""Sphinx configuration of the sb-meta documentation site (``make docs``).

Pages are Markdown (MyST); the API reference is generated from the numpy-style
docstrings (autodoc + autosummary + napoleon), as SpeechBrain's documentation is.
The build is offline and treats warnings as errors (``-W --keep-going``).
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sb_meta import __version__  # noqa: E402

project = "sb-meta"
author = "The sb-meta contributors"
copyright = "the sb-meta contributors, Apache-2.0"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autosummary_generate = True
autosummary_imported_members = False
# each object once, where it is defined (a package's __all__ re-exports are not repeated)
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_inherit_docstrings = False  # SpeechBrain's docstrings are its own documentation's
autodoc_member_order = "bysource"
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_rtd_theme"
html_title = f"sb-meta {release}"
html_show_sourcelink = False
html_theme_options = {"navigation_depth": 3, "collapse_navigation": False}
html_static_path = ["_static"]
html_css_files = ["sbmeta.css"]
