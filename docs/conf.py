"""Sphinx configuration of the graft_select documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors).
The API pages are generated from the numpydoc docstrings by autosummary, the
gallery in ``auto_examples/`` by executing ``examples/plot_*.py`` with
sphinx-gallery, and the benchmark page includes ``benchmarks/RESULTS.md``.
"""

import os
import re
import sys
from pathlib import Path

# The gallery runs small problems (a few thousand rows): one BLAS/OpenMP thread per
# library is faster for them than a pool, and it keeps the build time stable on a
# busy 2-core machine, where idle pool threads spin against other processes (5x
# slower here). Set before numpy, scipy or torch are imported; override by exporting
# the variables.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, installed or not

import graft_select  # noqa: E402

# -- Project ----------------------------------------------------------------------

project = "graft_select"
author = "graft_select developers"
copyright = "2025, graft_select developers"
release = graft_select.__version__
version = ".".join(release.split(".")[:2])

# -- General ----------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store"]
default_role = "literal"
pygments_style = "sphinx"

# -- autodoc / autosummary / numpydoc ---------------------------------------------

autosummary_generate = True
autodoc_default_options = {"member-order": "groupwise"}
autodoc_typehints = "none"  # the types are in the numpydoc sections
# The methods are listed by autodoc's :members: in the class template; numpydoc's own
# "Methods" table would need one more stub page per method.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
numpydoc_attributes_as_param_list = True
# Checked on every documented object: it has a docstring (GL08), every parameter is
# documented and every documented parameter exists (PR01, PR02, PR03), a function
# that returns a value has a Returns section (RT01), no stray blank lines (GL06/07,
# PR10). Named returns ("U : array of ...", RT02) are the house style, and the
# summary rules (SS03, SS05) misfire on "Indices of ..." and on namedtuple fields.
numpydoc_validation_checks = {"GL06", "GL07", "GL08", "PR01", "PR02", "PR03", "PR10", "RT01"}
numpydoc_validation_exclude = {
    r"\.__init__$",
    # A frozen dataclass: its fields are documented as Attributes, not Parameters.
    r"^graft_select\.sampler\.RefitReport$",
    # transformers.Trainer's own methods, inherited: Hugging Face's docstring style.
    r"^graft_select\.transformers\.GraftTrainer\.(?!training_step$)",
    # A mixin: its parameters are GraftTrainer's, documented there.
    r"^graft_select\.transformers\.GraftTrainerMixin$",
}

# -- sphinx-gallery ---------------------------------------------------------------

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "backreferences_dir": "gen_modules/backreferences",
    "doc_module": ("graft_select",),
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 1,
}

# Examples run with a non-interactive backend.
os.environ.setdefault("MPLBACKEND", "Agg")

# -- matplotlib plot directive (the user guide's pipeline figure) -----------------

plot_include_source = False
plot_html_show_source_link = True
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.autolayout": False}

# -- MyST (benchmarks/RESULTS.md) -------------------------------------------------

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# -- HTML -------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"graft_select {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
html_show_sourcelink = True

# -- benchmarks page: benchmarks/RESULTS.md --------------------------------------

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
_MARKDOWN_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")  # not images


def _results_fallback(app, docname, source):
    """Replace the RESULTS.md include by a note when the file is absent."""
    if docname != "benchmarks" or RESULTS.exists():
        return
    begin = source[0].find("```{include}")
    end = source[0].find("```", begin + 3)
    if begin == -1:
        return
    note = ("```{note}\n`benchmarks/RESULTS.md` has not been written yet in this "
            "checkout.\n```")
    source[0] = source[0][:begin] + note + source[0][end + 3:]


def _results_links(app, relative_path, parent_docname, content):
    """Make RESULTS.md's links to repository files work from docs/benchmarks.md.

    Images are handled by the include's ``:relative-images:``. A link to a file of
    the checkout (a benchmark script, a CSV) becomes a download link; a relative
    link to nothing in the checkout keeps its text and loses the link (it would be
    a broken reference, an error under -W).
    """
    if Path(relative_path).name != RESULTS.name:
        return

    def rewrite(match):
        text, target = match.groups()
        if target.startswith("#") or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target):
            return match.group(0)  # an anchor or a URL
        path = (RESULTS.parent / target.split("#")[0]).resolve()
        if path.is_file() and path.is_relative_to(ROOT):
            return f"[{text}](path:{os.path.relpath(path, DOCS)})"
        return text

    content[0] = _MARKDOWN_LINK.sub(rewrite, content[0])


def setup(app):
    app.connect("source-read", _results_fallback)
    app.connect("include-read", _results_links)
    # Before numpydoc (priority 500) so it sees the escaped names.

