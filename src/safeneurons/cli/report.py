"""``safeneurons report RUN_DIR`` and ``safeneurons compare RUN_A RUN_B ... --out DIR``.

The lead's ``cli/main.py`` adds both with ``register(app)``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from safeneurons.cli.common import QuietOpt, echo, friendly_errors, setup_logging

RunDirArg = Annotated[Path, typer.Argument(
    help="Run directory written by a safeneurons command (holds manifest.json).")]


@friendly_errors
def report_cmd(run_dir: RunDirArg,
               out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for report.html and figures/ "
                                                         "(default: the run directory).")] = None,
               quiet: QuietOpt = False) -> None:
    """Write a self-contained report.html (figures embedded, PNGs in figures/) for a run directory."""
    from safeneurons.report import build_report

    setup_logging(quiet)
    echo(f"report: {build_report(run_dir, out)}")


@friendly_errors
def compare_cmd(run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
                out: Annotated[Path, typer.Option("--out", "-o", help="Folder for compare.html and figures/.")],
                quiet: QuietOpt = False) -> None:
    """Compare runs side by side: tables per condition, set and task, and overlaid plots (compare.html)."""
    from safeneurons.report import compare_runs

    setup_logging(quiet)
    echo(f"comparison: {compare_runs(run_dirs, out)}")


@friendly_errors
def publish_cmd(run_dir: RunDirArg,
                dest: Annotated[Path, typer.Argument(help="Folder to copy the citable results into (e.g. docs/results/x).")],
                full: Annotated[bool, typer.Option("--full", help="Copy every verdicts.json whole (every reply and "
                                                   "judge reason) instead of one record per prompt with 3 full "
                                                   "replies per condition and language.")] = False,
                quiet: QuietOpt = False) -> None:
    """Copy a run's tables, neuron sets, manifest and report (no weights, stats or caches) to commit them;
    verdicts.json files keep one record per prompt and a few full replies (docs/results/index.md)."""
    from safeneurons.report.publish import publish_run

    setup_logging(quiet)
    files = publish_run(run_dir, dest, full=full)
    echo(f"{len(files)} files copied to {dest}")


def register(app: typer.Typer) -> None:
    """Add the ``report``, ``compare`` and ``publish`` commands to ``app``."""
    app.command("publish")(publish_cmd)
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
