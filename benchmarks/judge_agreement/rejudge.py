"""Re-judge a published run's stored replies with another judge: does a claim survive the judge?

Reads ``verdicts.json`` files of a published run (every reply the run generated, with the verdict of the judge
it used), judges the same replies again with ``--judge``, and prints both ASR tables side by side (k / n and
Wilson 95 % intervals per condition), plus how many verdicts changed and in which direction. No generation: the
replies are the run's own. Writes ``rejudged-<judge>.json`` into ``--out``.

    .venv/bin/python benchmarks/judge_agreement/rejudge.py docs/results/headline --judge guard

The published folders keep full replies only for a few examples per condition (docs/results/index.md); the
full ``verdicts.json`` files are in git history (commit 6072a43):

    mkdir -p /tmp/full && git archive 6072a43 docs/results/headline | tar -x -C /tmp/full
    .venv/bin/python benchmarks/judge_agreement/rejudge.py /tmp/full/docs/results/headline --judge guard \
        --out docs/results/headline

Caveat printed with the table: the labelled set the guard was fitted on was drawn from these same published
replies (its build part), so a few of the replies scored here were seen in fitting; the judge's agreement is
measured on the report part only."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from safeneurons.evaluate.asr import AsrTable
from safeneurons.evaluate.judges import make_judge
from safeneurons.evaluate.validation import judge_footer
from safeneurons.io import write_json_atomic


def rejudge(path: Path, judge: object) -> dict:
    records = json.loads(path.read_text("utf-8"))
    if trimmed := sum("response" not in r for r in records):
        raise SystemExit(f"{path}: {trimmed} of {len(records)} records keep no reply (trimmed when "
                         "published); re-judge the full file from git history (see this script's docstring).")
    verdicts = judge.judge_many([(r["prompt"], r["response"], r.get("language", "en")) for r in records])
    new = [{**r, "verdict": v.to_dict()} for r, v in zip(records, verdicts)]
    group = ("language",) if len({r.get("language", "en") for r in records}) > 1 else ()
    before, after = AsrTable.from_records(records, group_by=group), AsrTable.from_records(new, group_by=group)
    changes = Counter(f"{r['verdict']['label']}->{n['verdict']['label']}" for r, n in zip(records, new)
                      if r["verdict"]["label"] != n["verdict"]["label"])
    rows = []
    for row in after.rows:
        old = before.get(row.condition, **({g: getattr(row, g) for g in group}))
        rows.append({"condition": row.condition, **{g: getattr(row, g) for g in group},
                     "old": {"k": old.k, "n": old.n, "asr": old.asr, "ci": [old.ci_lo, old.ci_hi]},
                     "new": {"k": row.k, "n": row.n, "asr": row.asr, "ci": [row.ci_lo, row.ci_hi],
                             "n_degenerate": row.n_degenerate}})
    return {"file": str(path), "old_judge": records[0]["verdict"].get("judge") if records else None,
            "rows": rows, "changes": dict(changes), "records": new}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="published run folder (docs/results/NAME)")
    ap.add_argument("--judge", default="guard")
    ap.add_argument("--out", type=Path, default=None, help="folder for rejudged-<judge>.json (default: run)")
    args = ap.parse_args()
    judge = make_judge(args.judge)
    result = {"run": str(args.run), "judge": args.judge, "judge_version": getattr(judge, "version", ""),
              "judge_note": judge_footer(judge), "files": []}
    for path in sorted(args.run.glob("**/verdicts.json")):
        res = rejudge(path, judge)
        print(f"\n{path.relative_to(args.run)} (was judged by {res['old_judge']}); changed: {res['changes']}")
        print("| condition | group | old ASR k / n (%) | new ASR k / n (%) [95% CI] | new degenerate |")
        print("|---|---|---|---|---|")
        for r in res["rows"]:
            o, n = r["old"], r["new"]
            grp = r.get("language", "all")
            pct = (lambda c: "n/a" if c["asr"] is None else f"{100 * c['asr']:.1f}")
            print(f"| {r['condition']} | {grp} | {o['k']} / {o['n']} ({pct(o)}) | {n['k']} / {n['n']} ({pct(n)}) "
                  f"[{100 * (n['ci'][0] or 0):.1f}–{100 * (n['ci'][1] or 0):.1f}] | {n['n_degenerate']} |")
        result["files"].append({k: v for k, v in res.items() if k != "records"})
    print("\n" + result["judge_note"])
    out = (args.out or args.run) / f"rejudged-{args.judge}.json"
    write_json_atomic(out, result)
    print(f"written {out}")


if __name__ == "__main__":
    main()
