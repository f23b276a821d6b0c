"""Build ``src/safeneurons/data/burned.json``: the evaluation items the project already scored in the runs
published under ``docs/results``, which the dev/test split (:func:`safeneurons.data.split_of`) keeps on
the dev side forever.

    .venv/bin/python data/build_burned.py            # rewrite burned.json
    .venv/bin/python data/build_burned.py --check    # exit 1 when the committed file is out of date
    .venv/bin/python data/build_burned.py --retire NAME [NAME ...]   # before deleting docs/results/NAME

What counts as scored (each item stored as ``sha256(normalise(key))``, the key :func:`split_of` reads):

* every ``prompt`` of every ``docs/results/**/verdicts.json``: harmful evaluation prompts by their text;
  MultiJail records (id ``multijail-<row>``) by the row id, so all ten languages of a row are burned;
* XSTest prompts of ``docs/results/**/over_refusal/*.json`` by their text: the ids of the ``verdicts`` and
  ``examples`` kept there, and the whole sample the run scored, rebuilt from its manifest (``over_refusal_n``
  and the seed; the rebuilt sample must contain every recorded id, else the script stops);
* capability questions of ``docs/results/**/capability.json`` as ``<task>:<question id>``: the ``ids`` kept
  there, or, for results written before ids were kept, the questions rebuilt from ``n``, ``seed`` and
  ``n_available`` with the scoring code's own :func:`~safeneurons.evaluate.capability.subsample`.

Items stay burned when their run folder leaves ``docs/results``: before removing a folder, run
``data/build_burned.py --retire NAME`` (it adds the folder's item hashes, per group, to
``data/burned_retired.json``), then delete the folder; every build adds the retired hashes back, so
``burned.json`` does not shrink. ``counts`` are distinct hashes per group (published and retired).

The output depends only on docs/results, data/burned_retired.json and the datasets folder (sorted, no
dates), so rebuilding it on an unchanged tree gives the same bytes. Needs ``../shared/datasets`` (or
``$SAFENEURONS_DATA_DIR``)."""

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
RETIRED = ROOT / "data" / "burned_retired.json"
ABOUT = ("Evaluation items scored in the runs published under docs/results (verdicts.json prompts, MultiJail "
         "rows by id, XSTest over-refusal samples, capability question ids). safeneurons.data.split_of puts "
         "every item whose sha256(normalise(key)) is listed here on the dev side, never in test.")


def _manifest_above(path: Path) -> Path | None:
    """The nearest manifest.json above ``path`` (not looking above docs/results), or None."""
    for parent in path.parents:
        if (parent / "manifest.json").is_file():
            return parent / "manifest.json"
        if parent == RESULTS:
            break
    return None


def _run_config(path: Path) -> dict[str, Any]:
    """The config of the run that wrote ``path`` (the nearest manifest.json above it)."""
    manifest = _manifest_above(path)
    if manifest is None:
        raise DataError(f"{path}: no manifest.json above it inside {RESULTS}.")
    return read_json(manifest).get("config") or {}


def scored_on_test(path: Path) -> bool:
    """Whether the run that wrote ``path`` scored the sealed test split (``--split test``): its items are the
    test half, looked at once and logged in test-ledger.jsonl, and must not be moved to dev. A folder without a
    manifest (a copy outside docs/results) did not."""
    manifest = _manifest_above(path)
    cfg = (read_json(manifest).get("config") or {}) if manifest else {}
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    return "test" in (cfg.get("split"), data.get("split"))


def _files(roots: list[Path], pattern: str) -> list[Path]:
    return sorted(f for root in roots for f in root.rglob(pattern) if not scored_on_test(f))


def verdict_keys(roots: list[Path] | None = None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for f in _files(roots or [RESULTS], "verdicts.json"):
        for rec in read_json(f):
            rid = str(rec.get("id", ""))
            if rid.startswith("multijail-"):
                out["multijail"].add(rid)
            else:
                source = rid.rsplit("-", 1)[0] if rid else "harmful"
                out[source].add(rec["prompt"])
    return out


def over_refusal_keys(roots: list[Path] | None = None) -> set[str]:
    xstest = load_prompts("xstest")
    text_of = {p.id: p.text for p in xstest.prompts}
    keys: set[str] = set()
    for f in _files(roots or [RESULTS], "over_refusal/*.json"):
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


def capability_keys(roots: list[Path] | None = None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for f in _files(roots or [RESULTS], "capability.json"):
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


def run_keys(roots: list[Path] | None = None) -> dict[str, set[str]]:
    """``{group: keys}`` of the items scored in the run folders ``roots`` (default: all of docs/results)."""
    groups: dict[str, set[str]] = {}
    for name, keys in verdict_keys(roots).items():
        groups[name] = keys
    groups["xstest"] = over_refusal_keys(roots)
    for task, keys in capability_keys(roots).items():
        groups[f"capability:{task}"] = keys
    return {name: keys for name, keys in groups.items() if keys}


def retired() -> dict[str, Any]:
    if not RETIRED.is_file():
        return {"runs": [], "groups": {}}
    return read_json(RETIRED)


def build() -> dict[str, Any]:
    groups = {name: {burned_hash(k) for k in keys} for name, keys in run_keys().items()}
    for name, hashes in retired()["groups"].items():
        groups.setdefault(name, set()).update(hashes)
    hashes = sorted({h for hs in groups.values() for h in hs})
    return {"about": ABOUT, "made_by": "data/build_burned.py",
            "key": "sha256 hex of safeneurons.data.normalise(key); key = prompt text (harmful, XSTest), "
                   "MultiJail row id (multijail-<row>), or <task>:<question id> (capability)",
            "counts": {name: len(hs) for name, hs in sorted(groups.items())},
            "hashes": hashes}


def retire(names: list[str]) -> int:
    """Add the item hashes of ``docs/results/<name>`` to ``burned_retired.json`` (the folders may then go)."""
    roots = [RESULTS / n for n in names]
    if missing := [str(r) for r in roots if not r.is_dir() or not any(r.rglob("manifest.json"))]:
        raise DataError(f"not a published run folder (no manifest.json): {', '.join(missing)}")
    old = retired()
    groups = {name: set(hs) for name, hs in old["groups"].items()}
    for name, keys in run_keys(roots).items():
        groups.setdefault(name, set()).update(burned_hash(k) for k in keys)
    out = {"about": ("Item hashes (as in src/safeneurons/data/burned.json) scored by run folders since removed "
                     "from docs/results; data/build_burned.py adds them to every build so they stay burned. "
                     "The folders are in git history."),
           "made_by": "data/build_burned.py --retire",
           "runs": sorted(set(old["runs"]) | set(names)),
           "groups": {name: sorted(hs) for name, hs in sorted(groups.items())}}
    write_text_atomic(RETIRED, json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    sys.stderr.write(f"wrote {RETIRED}: {len(names)} run folder(s) retired; delete them now\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing")
    ap.add_argument("--retire", nargs="+", metavar="NAME",
                    help="record the items of docs/results/NAME in burned_retired.json before deleting the folder")
    args = ap.parse_args(argv)
    if args.retire:
        return retire(args.retire)
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
