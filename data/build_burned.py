"""Build ``src/safeneurons/data/burned.json``: the evaluation items the project already scored in the runs
published under ``docs/results``, which the dev/test split (:func:`safeneurons.data.split_of`) keeps on
the dev side forever.

    .venv/bin/python data/build_burned.py            # rewrite burned.json
    .venv/bin/python data/build_burned.py --check    # exit 1 when the committed file is out of date

What counts as scored (each item stored as ``sha256(normalise(key))``, the key :func:`split_of` reads):

* every ``prompt`` of every ``docs/results/**/verdicts.json``: harmful evaluation prompts by their text;
  MultiJail records (id ``multijail-<row>``) by the row id, so all ten languages of a row are burned;
* XSTest prompts of ``docs/results/**/over_refusal/*.json`` by their text: the ids of the ``verdicts`` and
  ``examples`` kept there, and the whole sample the run scored, rebuilt from its manifest (``over_refusal_n``
  and the seed; the rebuilt sample must contain every recorded id, else the script stops);
* capability questions of ``docs/results/**/capability.json`` as ``<task>:<question id>``: the ``ids`` kept
  there, or, for results written before ids were kept, the questions rebuilt from ``n``, ``seed`` and
  ``n_available`` with the scoring code's own :func:`~safeneurons.evaluate.capability.subsample`.

The output depends only on docs/results and the datasets folder (sorted, no dates), so rebuilding it on an
unchanged tree gives the same bytes. Needs ``../shared/datasets`` (or ``$SAFENEURONS_DATA_DIR``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from safeneurons.data import load_prompts
from safeneurons.data.prompts import BURNED_FILE, burned_hash
from safeneurons.errors import DataError
from safeneurons.evaluate.capability import scored_keys
from safeneurons.io import read_json, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
ABOUT = ("Evaluation items scored in the runs published under docs/results (verdicts.json prompts, MultiJail "
         "rows by id, XSTest over-refusal samples, capability question ids). safeneurons.data.split_of puts "
         "every item whose sha256(normalise(key)) is listed here on the dev side, never in test.")


def _run_config(path: Path) -> dict[str, Any]:
    """The config of the run that wrote ``path`` (the nearest manifest.json above it)."""
    for parent in path.parents:
        if (parent / "manifest.json").is_file():
            return read_json(parent / "manifest.json").get("config") or {}
        if parent == RESULTS:
            break
    raise DataError(f"{path}: no manifest.json above it inside {RESULTS}.")


def verdict_keys() -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for f in sorted(RESULTS.rglob("verdicts.json")):
        for rec in read_json(f):
            rid = str(rec.get("id", ""))
            if rid.startswith("multijail-"):
                out["multijail"].add(rid)
            else:
                source = rid.rsplit("-", 1)[0] if rid else "harmful"
                out[source].add(rec["prompt"])
    return out


def over_refusal_keys() -> set[str]:
    xstest = load_prompts("xstest")
    text_of = {p.id: p.text for p in xstest.prompts}
    keys: set[str] = set()
    for f in sorted(RESULTS.rglob("over_refusal/*.json")):
        res = read_json(f)
        recorded = {r["id"] for r in (res.get("verdicts") or []) + (res.get("examples") or [])}
        cfg = _run_config(f)
        multilingual = "expansion" in cfg and "languages" in cfg
        n = cfg["expansion"]["over_refusal_n"] if multilingual else cfg.get("over_refusal_n")
        seed = cfg.get("seed", 0) if multilingual else (cfg.get("data") or {}).get("seed", 0)
        sample = {p.id for p in load_prompts("xstest", limit=n, seed=seed).prompts}
        if not recorded <= sample or len(sample) != res.get("n", len(sample)):
            raise DataError(f"{f}: the rebuilt XSTest sample (n={n}, seed={seed}) does not hold the recorded "
                            f"ids {sorted(recorded - sample)[:5]}; the sampling changed since the run.")
        keys |= {text_of[i] for i in sample | recorded}
    return keys


def capability_keys() -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for f in sorted(RESULTS.rglob("capability.json")):
        for cond in read_json(f).values():
            for task, res in (cond.get("tasks") or {}).items():
                meta = res.get("meta") or {}
                n, seed, total = int(res["n"]), int(meta.get("seed", 0)), int(meta["n_available"])
                _, rebuilt = scored_keys(task, n if n < total else None, seed, "all")
                recorded = [f"{task}:{i}" for i in res.get("ids") or []]
                if recorded and set(recorded) != set(rebuilt):
                    raise DataError(f"{f}: {task}: the rebuilt questions (n={n}, seed={seed}) differ from "
                                    "the recorded ids; the sampling changed since the run.")
                out[task] |= set(recorded or rebuilt)
    return out


def build() -> dict[str, Any]:
    groups: dict[str, set[str]] = {}
    for name, keys in verdict_keys().items():
        groups[name] = keys
    groups["xstest"] = over_refusal_keys()
    for task, keys in capability_keys().items():
        groups[f"capability:{task}"] = keys
    hashes = sorted({burned_hash(k) for keys in groups.values() for k in keys})
    return {"about": ABOUT, "made_by": "data/build_burned.py",
            "key": "sha256 hex of safeneurons.data.normalise(key); key = prompt text (harmful, XSTest), "
                   "MultiJail row id (multijail-<row>), or <task>:<question id> (capability)",
            "counts": {name: len(keys) for name, keys in sorted(groups.items())},
            "hashes": hashes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    args = ap.parse_args(argv)
    text = json.dumps(build(), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        same = BURNED_FILE.is_file() and BURNED_FILE.read_text(encoding="utf-8") == text
        sys.stderr.write(f"{BURNED_FILE}: {'up to date' if same else 'out of date; rebuild it'}\n")
        return 0 if same else 1
    write_text_atomic(BURNED_FILE, text)
    sys.stderr.write(f"wrote {BURNED_FILE}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
