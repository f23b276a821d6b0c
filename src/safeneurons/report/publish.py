"""Copy the citable part of a run directory (tables, neuron sets, manifest, report) to a folder that
can be committed: everything small and textual, nothing large (statistics, caches, model weights)."""

from __future__ import annotations

import shutil
from pathlib import Path

from safeneurons import runformat as rf
from safeneurons.errors import DataError

KEEP_SUFFIXES = {".json", ".jsonl", ".md", ".yaml", ".html", ".png"}
SKIP_DIRS = {rf.COMPLETIONS_DIR, rf.IMPORTANCE_DIR, rf.PARTIAL_DIR, rf.CAPABILITY_CACHE, rf.MODEL_SUBDIR,
             rf.TRAINER_SUBDIR}
MAX_BYTES = 2_000_000


def publish_run(run_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy result files under ``MAX_BYTES`` each (no ``*.safetensors``, ``*.sqlite``, model or trainer dirs,
    raw completions: ``verdicts.json`` already holds every prompt, response and verdict). Training runs
    keep their preference pairs, train logs and each round's neuron sets."""
    from safeneurons.report import build_report

    src, out = Path(run_dir), Path(dest)
    if not (src / rf.MANIFEST).is_file():
        raise DataError(f"{src} is not a run directory (no {rf.MANIFEST}).")
    build_report(src)
    copied = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if not p.is_file() or p.suffix not in KEEP_SUFFIXES or set(rel.parts[:-1]) & SKIP_DIRS:
            continue
        if p.stat().st_size > MAX_BYTES:
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
        copied.append(target)
    return copied
