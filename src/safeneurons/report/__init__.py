"""Reports people read: a self-contained ``report.html`` per run directory and ``compare.html`` across runs.

>>> from safeneurons.report import build_report, compare_runs   # doctest: +SKIP
>>> build_report("runs/demo")                                   # runs/demo/report.html + figures/*.png
>>> compare_runs(["runs/demo", "runs/headline"], "runs/compare") # runs/compare/compare.html

Built from the files of a run directory only (see :mod:`safeneurons.report.load` for the shapes read):
no torch, no model code. Missing or broken files mark their sections instead of failing the build."""

from safeneurons.report.html import build_report, compare_runs
from safeneurons.report.load import Missing, RunData, load_run

__all__ = ["Missing", "RunData", "build_report", "compare_runs", "load_run"]
