"""Bring every run folder under a path onto the current run format and re-render its report.

    python scripts/migrate_results.py docs/results            # migrate and re-render, in place
    python scripts/migrate_results.py docs/results --dry-run  # only say what would change

A run folder is a folder holding ``manifest.json`` (its ``attack-<model>/`` runs are handled with it).
For each one: :func:`safeneurons.runformat.migrate` (older file names and shapes onto the current ones, the
format stamped into ``manifest.json``), then :func:`safeneurons.report.build_report` (report.html and
figures/, the sub-runs' reports too). Prints what changed and how many "Not in this run" boxes each report
showed before and after."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ABSENT_BOX = 'class="missing absent"'


def run_folders(path: Path) -> list[Path]:
    """Folders under ``path`` (itself included) holding a manifest.json, not descending into them."""
    from safeneurons.runformat import MANIFEST

    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        if MANIFEST in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames.sort()
    return sorted(found)


def absent_boxes(run: Path) -> int | None:
    """"Not in this run" boxes in ``run``'s report.html as it is on disk now (None: no report)."""
    from safeneurons.report.html import REPORT_FILE

    page = run / REPORT_FILE
    return page.read_text(encoding="utf-8", errors="replace").count(ABSENT_BOX) if page.is_file() else None


def subrun_boxes(run: Path) -> str:
    """"Not in this run" boxes of each sub-run's report (a train run's attack-<model>/), for the log."""
    from safeneurons.runformat import attack_dir, subruns

    counts = {attack_dir(name): absent_boxes(sub) for name, sub in subruns(run).items()}
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a run folder, or a folder of run folders (e.g. docs/results)")
    parser.add_argument("--dry-run", action="store_true", help="list the run folders and change nothing")
    args = parser.parse_args(argv)
    from safeneurons.report import build_report
    from safeneurons.runformat import migrate

    if not args.path.is_dir():
        print(f"{args.path}: not a folder", file=sys.stderr)
        return 2
    folders = run_folders(args.path)
    t0 = time.perf_counter()
    before_total = after_total = 0
    for run in folders:
        t1 = time.perf_counter()
        before = absent_boxes(run)
        before_total += before or 0
        if args.dry_run:
            print(f"{run}: report.html has {before if before is not None else 'no'} 'Not in this run' boxes")
            continue
        changes = migrate(run)
        build_report(run)
        after = absent_boxes(run) or 0
        after_total += after
        subs = subrun_boxes(run)
        print(f"{run}: {len(changes)} changes{': ' + '; '.join(changes) if changes else ''}; report.html "
              f"'Not in this run' boxes {before if before is not None else '(no report)'} -> {after}"
              + (f"; model reports: {subs}" if subs else "") + f" ({time.perf_counter() - t1:.1f} s)")
    summary = f"{len(folders)} run folders, 'Not in this run' boxes in their report.html {before_total}"
    print(summary + ("" if args.dry_run else f" -> {after_total}") + f", {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
