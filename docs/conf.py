"""Sphinx configuration of the sb3-trpo documentation (``make doc``).

The same toolchain and theme as Stable-Baselines3's own documentation. The build needs no network:
there is no intersphinx, so types from SB3, PyTorch and Gymnasium appear as plain names.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the checkout, also when it is not installed

# -- Project information -----------------------------------------------------

__version__ = (ROOT / "sb3_trpo" / "version.txt").read_text(encoding="utf-8").strip()

project = "sb3-trpo"
copyright = "sb3-trpo contributors"
author = "sb3-trpo contributors"
version = __version__
release = __version__

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx_autodoc_typehints",
    "sphinx.ext.mathjax",
    # MathJax copied into the built site (_static/mathjax) instead of loaded from a CDN: equations render offline.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    # Markdown, for the files kept at the top of the repository (CHANGELOG.md, benchmark tables).
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext"}  # the pages are reST; Markdown only comes in by include
root_doc = "index"
# _generated/ holds snippets written below at build time: included by pages, never pages themselves.
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []

pygments_style = "sphinx"
nitpicky = False

# -- autodoc -----------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "description"  # sphinx_autodoc_typehints puts the types beside each :param:
typehints_defaults = "comma"
always_document_param_types = False
autodoc_default_options = {"show-inheritance": True}
# SB3's type aliases GymEnv and MaybeCallback name VecEnv and BaseCallback as strings that SB3 only
# imports under TYPE_CHECKING: tell the type-hint resolver what they stand for.
autodoc_type_aliases = {
    "VecEnv": "VecEnv",
    "BaseCallback": "BaseCallback",
}

# -- HTML output ---------------------------------------------------------------

html_theme = "sphinx_rtd_theme"
html_static_path = ["_static"]
html_css_files = ["css/baselines_theme.css"]
html_title = f"sb3-trpo {release} documentation"
html_show_sourcelink = False
htmlhelp_basename = "sb3trpodoc"

# -- Benchmark results ---------------------------------------------------------
# The scripts in benchmarks/ write Markdown reports and PNG plots into benchmarks/results/.
# guide/benchmarks.rst includes _generated/benchmark_results.rst, written here at every build: for
# each report, the report itself (with its plots) when it exists, a note that the benchmark has not
# been run yet otherwise. Nothing fails when benchmarks/results/ is missing or incomplete.

RESULTS = ROOT / "benchmarks" / "results"
GENERATED = DOCS / "_generated"
# report file -> (title, plots, the command that writes them)
BENCHMARK_REPORTS = {
    "learning.md": ("Learning benchmark", "learning_*.png", "make benchmark-learning"),
    "mujoco.md": ("MuJoCo at 1M steps", "mujoco_*.png", "python benchmarks/learning.py --campaign mujoco"),
    "ant_v4.md": (
        "Ant: -v4 against -v5",
        "ant_v4_*.png",
        "python benchmarks/learning.py --campaign ant_v4",
    ),
    "speed.md": ("Speed benchmark", None, "make benchmark-speed"),
    "penalty.md": ("Penalty vs constraint", "penalty_*.png", "python benchmarks/learning.py --campaign penalty"),
    "recurrent.md": ("Recurrent TRPO", "recurrent_*.png", "python benchmarks/learning.py --campaign recurrent"),
    "equivalence.md": ("Same rollouts, same updates", None, "python benchmarks/equivalence.py"),
    "sources_mujoco.md": ("Sources of the MuJoCo runs", None, "python benchmarks/sources.py --campaign mujoco"),
    "sources_ant_v4.md": ("Sources of the Ant -v4 runs", None, "python benchmarks/sources.py --campaign ant_v4"),
    "reliability.md": ("Reliability: faults and bad input", None, "python benchmarks/reliability.py"),
}


def _write_if_changed(path: Path, content: str | bytes) -> None:
    # Rewriting an unchanged file would make Sphinx rebuild the page on every run.
    data = content.encode("utf-8") if isinstance(content, str) else content
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def _benchmark_report(name: str, title: str, plots: str | None, command: str) -> str:
    """The Markdown shown for one report: the report and its plots, or a note that it is missing."""
    source = RESULTS / name
    script = command.split()[1] if command.startswith("python ") else f"benchmarks/{Path(name).stem}.py"
    if not source.is_file():
        return (
            f"# {title}\n\n```{{note}}\nThis benchmark has not been run yet: `benchmarks/results/{name}` "
            f"does not exist. Run `{command}` (`{script}`), then rebuild the documentation.\n```\n"
        )
    report = source.read_text(encoding="utf-8").strip() + "\n"
    if not report.startswith("# "):
        report = f"# {title}\n\nGenerated by `{script}`.\n\n{report}"
    for plot in sorted(RESULTS.glob(plots)) if plots else []:
        # Sphinx reads images from inside the documentation's source folder: copy the plot next to the report.
        _write_if_changed(GENERATED / plot.name, plot.read_bytes())
        report += f"\n![{plot.stem}](/_generated/{plot.name})\n"
    return report


def _generate_benchmark_results() -> None:
    GENERATED.mkdir(exist_ok=True)
    includes = []
    for name, (title, plots, command) in BENCHMARK_REPORTS.items():
        _write_if_changed(GENERATED / name, _benchmark_report(name, title, plots, command))
        includes.append(f".. include:: /_generated/{name}\n   :parser: myst_parser.sphinx_\n")
    _write_if_changed(GENERATED / "benchmark_results.rst", "\n".join(includes))


_generate_benchmark_results()
