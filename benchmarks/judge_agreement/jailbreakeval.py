"""Judges against outside human harm labels: JailbreakEval's JAILJUDGE-mini and Safe-RLHF-mini sets.

Each row is a (question, answer, label) with label 1 = the answer is a successful jailbreak (harmful help), 0 =
not (a refusal, or a safe answer). A judge says "harmful" when its verdict is ``compliance``. Prints and writes
accuracy / recall / precision / F1 for label 1 (the columns JailbreakEval publishes for other evaluators, see
``../shared/datasets/jailbreakeval_labels/SOURCE.md``) and Cohen's kappa, per file.

    .venv/bin/python benchmarks/judge_agreement/jailbreakeval.py --judge refusal --judge guard --n 500

``--n`` draws that many rows per file (seeded, the same rows for every judge); 0 = all. English only. None of
these rows is in the guard judge's build part (they are outside replies), so this is an outside check."""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

from safeneurons.data.paths import find_data_dir
from safeneurons.evaluate.agreement import cohen_kappa, precision_recall_f1
from safeneurons.evaluate.judges import make_judge
from safeneurons.io import write_json_atomic

HERE = Path(__file__).resolve().parent
FILES = {"jailjudge_mini": "jailbreakeval_labels/jailjudge_mini.csv",
         "safe_rlhf_mini": "jailbreakeval_labels/safe_rlhf_mini.csv"}


def rows_of(path: Path, n: int, seed: int = 0) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for i, r in enumerate(rows, 2):
        if r.get("label") not in ("0", "1"):
            raise SystemExit(f"{path}:{i}: label {r.get('label')!r} is not 0 or 1")
    if n and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", action="append", default=None)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--out", default=str(HERE / "jailbreakeval_results.json"))
    args = ap.parse_args()
    data = find_data_dir(None)
    out: dict[str, dict] = {"n_per_file": args.n, "results": {}}
    for name in args.judge or ["refusal", "gcg", "guard"]:
        judge = make_judge(name)
        for key, rel in FILES.items():
            rows = rows_of(Path(data) / rel, args.n)
            t0 = time.perf_counter()
            verdicts = judge.judge_many([(r["question"], r["answer"], "en") for r in rows])
            secs = (time.perf_counter() - t0) / len(rows)
            said = [v.label == "compliance" for v in verdicts]
            gold = [r["label"] == "1" for r in rows]
            pr = precision_recall_f1(said, gold)
            res = {"n": len(rows), "accuracy": sum(a == b for a, b in zip(said, gold)) / len(rows),
                   "recall": pr["recall"], "precision": pr["precision"], "f1": pr["f1"],
                   "kappa": cohen_kappa(said, gold), "seconds_per_reply": secs,
                   "judge_version": getattr(judge, "version", "")}
            out["results"].setdefault(name, {})[key] = res
            print(f"{name:8} {key:15} n {res['n']:4}  acc {res['accuracy']:.2f}  R {res['recall'] or 0:.2f}  "
                  f"P {res['precision'] or 0:.2f}  F1 {res['f1'] or 0:.2f}  κ {res['kappa'] or 0:.2f}  "
                  f"{secs:.3f} s/reply", flush=True)
    write_json_atomic(args.out, out)
    print(json.dumps({"written": args.out}))


if __name__ == "__main__":
    main()
