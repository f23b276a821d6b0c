"""Agreement of the phrase judges with the developer-labelled set in ``labelled.jsonl``.

Runs the ``refusal`` judge (and the ``gcg`` keyword baseline when the local datasets are present), compares each
with the gold labels on the dev half, the held-out half and both, per language and per item type, and writes
``results.json`` next to this script (atomically). Prints a summary table.

    .venv/bin/python benchmarks/judge_agreement/run.py [--out results.json] [--judge refusal --judge gcg]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from safeneurons.errors import JudgeError
from safeneurons.evaluate.agreement import compare_to_gold
from safeneurons.evaluate.asr import AsrTable
from safeneurons.evaluate.judges import make_judge
from safeneurons.io import package_version, sha256_file, write_json_atomic

HERE = Path(__file__).resolve().parent
DATA = HERE / "labelled.jsonl"


def load(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"id", "split", "language", "type", "prompt", "response", "label"} - set(row)
        if missing:
            raise SystemExit(f"{path} line {i}: missing fields {sorted(missing)}")
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"all": compare_to_gold(preds, [r["label"] for r in rows])}
    for split in ("dev", "heldout"):
        idx = [i for i, r in enumerate(rows) if r["split"] == split]
        out[split] = compare_to_gold([preds[i] for i in idx], [rows[i]["label"] for i in idx])
    per_lang: dict[str, Any] = {}
    for lang in dict.fromkeys(r["language"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["language"] == lang]
        m = compare_to_gold([preds[i] for i in idx], [rows[i]["label"] for i in idx])
        per_lang[lang] = {k: m[k] for k in ("n", "accuracy", "kappa_labels", "kappa_harmful")} | {
            "refusal_recall": m["refusal"]["recall"],
            "refusal_precision": m["refusal"]["precision"],
            "harmful_precision": m["harmful"]["precision"],
            "harmful_recall": m["harmful"]["recall"],
        }
    out["per_language"] = per_lang
    records = [{"condition": "gold", "label": r["label"]} for r in rows]
    records += [{"condition": "judge", "label": p} for p in preds]
    table = AsrTable.from_records(records)
    out["asr_if_all_prompts_were_harmful"] = {
        c: {"k": table.get(c).k, "n": table.get(c).n, "asr": table.get(c).asr, "cell": table.get(c).cell}
        for c in ("gold", "judge")
    }
    by_type: dict[str, dict[str, int]] = defaultdict(lambda: {"n": 0, "correct": 0})
    for r, p in zip(rows, preds):
        by_type[r["type"]]["n"] += 1
        by_type[r["type"]]["correct"] += int(p == r["label"])
    out["per_type"] = dict(sorted(by_type.items()))
    out["errors"] = [
        {"id": r["id"], "split": r["split"], "type": r["type"], "gold": r["label"], "predicted": p}
        for r, p in zip(rows, preds)
        if p != r["label"]
    ]
    return out


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--judge", action="append", default=None, help="judge names (default: refusal, gcg)")
    args = ap.parse_args(argv)

    rows = load(args.data)
    items = [(r["prompt"], r["response"], r["language"]) for r in rows]
    results: dict[str, Any] = {
        "dataset": {
            "path": args.data.name,
            "sha256": sha256_file(args.data),
            "n": len(rows),
            "n_dev": sum(r["split"] == "dev" for r in rows),
            "n_heldout": sum(r["split"] == "heldout" for r in rows),
            "gold_counts": {
                lab: sum(r["label"] == lab for r in rows) for lab in ("refusal", "compliance", "degenerate")
            },
        },
        "safeneurons": package_version(),
        "judges": {},
        "skipped": {},
    }
    for name in args.judge or ["refusal", "gcg"]:
        try:
            judge = make_judge(name)
        except JudgeError as exc:
            results["skipped"][name] = str(exc)
            print(f"skipping judge {name!r}: {exc}", file=sys.stderr)
            continue
        preds = [v.label for v in judge.judge_many(items)]
        results["judges"][name] = summarise(rows, preds)

    write_json_atomic(args.out, results)

    header = (
        f"{'judge':<8} {'split':<8} {'n':>4} {'acc%':>6} {'kappa(lab)':>10} {'kappa(harm)':>11} "
        f"{'refP':>6} {'refR':>6} {'refF1':>6} {'harmP':>6} {'harmR':>6} {'harmF1':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, res in results["judges"].items():
        for split in ("dev", "heldout", "all"):
            m = res[split]
            print(
                f"{name:<8} {split:<8} {m['n']:>4} {fmt(m['accuracy'], True):>6} {fmt(m['kappa_labels']):>10} "
                f"{fmt(m['kappa_harmful']):>11} {fmt(m['refusal']['precision']):>6} {fmt(m['refusal']['recall']):>6} "
                f"{fmt(m['refusal']['f1']):>6} {fmt(m['harmful']['precision']):>6} {fmt(m['harmful']['recall']):>6} "
                f"{fmt(m['harmful']['f1']):>6}"
            )
    for name, res in results["judges"].items():
        print(f"\n{name}: per language (all items)")
        for lang, m in res["per_language"].items():
            print(
                f"  {lang:<3} n={m['n']:>3} acc={fmt(m['accuracy'], True):>5}% refusal recall={fmt(m['refusal_recall'])} "
                f"harmful precision={fmt(m['harmful_precision'])}"
            )
    for name, res in results["judges"].items():
        a = res["asr_if_all_prompts_were_harmful"]
        print(f"\n{name}: ASR by gold labels {a['gold']['cell']}, by the judge {a['judge']['cell']}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
