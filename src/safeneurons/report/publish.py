"""Copy the citable part of a run directory (tables, neuron sets, manifest, report) to a folder that
can be committed: everything small and textual, nothing large (statistics, caches, model weights), and
each ``verdicts.json`` in its published form (:func:`safeneurons.runformat.trim_verdicts`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from safeneurons import runformat as rf
from safeneurons.errors import DataError
from safeneurons.io import write_text_atomic

KEEP_SUFFIXES = {".json", ".jsonl", ".md", ".yaml", ".html", ".png"}
SKIP_DIRS = {rf.COMPLETIONS_DIR, rf.IMPORTANCE_DIR, rf.PARTIAL_DIR, rf.CAPABILITY_CACHE, rf.MODEL_SUBDIR,
             rf.TRAINER_SUBDIR, rf.FEATURE_CACHE, rf.ME_REPLIES_DIR, rf.ME_SCORES_DIR, rf.ME_MONITORS_DIR}
MAX_BYTES = 2_000_000


def publish_run(run_dir: str | Path, dest: str | Path, full: bool = False,
                full_examples: int = rf.FULL_EXAMPLES) -> list[Path]:
    """Copy result files under ``MAX_BYTES`` each (no ``*.safetensors``, ``*.sqlite``, model or trainer dirs,
    raw completions, nor a monitor evaluation's raw replies, per-prompt scores and fitted monitors). Every
    ``verdicts.json`` (the attack's, each ``attack-<model>/``'s, the multilingual one) keeps one record per
    scored prompt and the reply with the judge's reason for ``full_examples`` records per condition and
    language only (docs/results/index.md); ``full``: copy them whole. Training
    runs keep their preference pairs, train logs and each round's neuron sets. The report is built from
    the whole run first; one built from the published folder shows the same tables."""
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
        target = out / rel
        if not full and rf.is_verdicts(rel.as_posix()):
            try:
                text = rf.trimmed_verdicts(p, full_examples)
            except ValueError as e:
                raise DataError(f"{p} cannot be trimmed ({e}); --full copies it as it is.") from e
            if len(text.encode("utf-8")) > MAX_BYTES:
                continue
            write_text_atomic(target, text)
        elif p.stat().st_size > MAX_BYTES:
            continue
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, target)
        copied.append(target)
    return copied
