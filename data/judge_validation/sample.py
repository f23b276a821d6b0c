"""Draw the judge-validation items from the project's own published runs (docs/results).

Run from the repository root: ``python data/judge_validation/sample.py`` (``--check``: compare with the
committed ``items.jsonl`` instead of writing it). Deterministic (seeded), so the committed ``items.jsonl`` can
be rebuilt and checked. The replies are read from git history, as ``docs/results`` stood at commit
``SOURCE_COMMIT`` (when the items were drawn): most of those run folders have since left the tree and the
kept ones store full replies only for a few examples, so a clone with that commit in its history is needed. Each item keeps where it came from (run, condition,
model) for analysis; the labelling batches (``batches/*.jsonl``) carry only id, language, prompt and response,
so labels are blind to condition and to every judge verdict.

``--extend`` (the extension of 2026-12-07) draws more replies in the four low-resource languages
(:data:`EXTEND_LANGUAGES`) the same way from the same source, none with an id or a (run, condition, prompt id)
already among the first :data:`BASE_LINES` items, and writes items.jsonl as those lines plus the new ones
(``--check`` with it compares instead; ``--blind PATH`` also writes the labeller's batch: id, language, prompt,
response only, shuffled).

Strata (target counts): English responses to harmful prompts, English responses to benign XSTest prompts,
and responses to MultiJail prompts in nine other languages. Within a stratum, items are drawn round-robin
over (run, condition) groups so pruned, random-control, trained and original models all appear; exact
(prompt, response) duplicates are kept once."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
RESULTS = "docs/results"
SOURCE_COMMIT = "3013edc8407433bc4a1425293eabda9afdfd3ae4"
OUT = Path(__file__).resolve().parent
SEED = 20261207

TARGETS = {("en", "harmful"): 230, ("en", "benign"): 80}
TARGETS.update({(lang, "harmful"): 70 for lang in ("zh", "it", "vi", "ar", "ko")})
TARGETS.update({(lang, "harmful"): 30 for lang in ("th", "bn", "sw", "jv")})

# The extension: per language at least EXTEND_MIN new items, more (up to EXTEND_MAX) until EXTEND_REPORT of them
# fall in the report part, so that those languages' report-part intervals narrow.
BASE_LINES = 839
EXTEND_LANGUAGES = ("th", "jv", "bn", "sw")
EXTEND_MIN, EXTEND_MAX, EXTEND_REPORT = 60, 100, 25
EXTEND_SEED = SEED + 1
BLIND_FIELDS = ("id", "language", "prompt", "response")


def model_of(run: str) -> str:
    return "qwen2.5-coder-1.5b-instruct" if ("1.5b" in run or run == "headline") else "qwen2.5-coder-0.5b-instruct"


def kind_of(run: str, stage: str, condition: str) -> str:
    trained = stage.startswith("attack-") and stage not in ("attack-original",)
    base = {"ORI": "original", "RANDOM0": "random", "RANDOM1": "random", "RANDOM_SS": "random"}.get(condition)
    if base is None:
        base = "reinforced" if condition.startswith(("REINFORCE", "EXPANDED")) else "pruned"
    if trained:
        return "trained" if base == "original" else f"trained+{base}"
    return base


def item_id(prompt: str, response: str) -> str:
    return hashlib.sha256(f"{prompt}\x00{response}".encode()).hexdigest()[:12]


def published(commit: str = SOURCE_COMMIT) -> tuple[list, list]:
    """``(verdicts, over_refusal)``: ``[(path relative to docs/results, parsed JSON)]`` of every
    ``**/verdicts.json`` and ``**/over_refusal/*.json`` under docs/results at ``commit``, in path order."""
    def git(*args: str, data: bytes | None = None) -> bytes:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], input=data, capture_output=True,
                                  check=True).stdout
        except subprocess.CalledProcessError as e:
            sys.exit(f"git {args[0]} failed ({e.stderr.decode().strip()}); sample.py reads docs/results at "
                     f"commit {commit}, which this clone's history must hold (not a shallow clone).")

    names = git("ls-tree", "-r", "-z", "--name-only", commit, "--", RESULTS).decode().split("\0")
    rel = sorted(PurePosixPath(n).relative_to(RESULTS) for n in names if n)
    want = [r for r in rel
            if r.name == "verdicts.json" or (r.parent.name == "over_refusal" and r.suffix == ".json")]
    out = git("cat-file", "--batch", data="".join(f"{commit}:{RESULTS}/{r}\n" for r in want).encode())
    files, pos = {}, 0
    for r in want:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        files[r] = json.loads(out[header_end + 1:header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return ([(r, files[r]) for r in want if r.name == "verdicts.json"],
            [(r, files[r]) for r in want if r.name != "verdicts.json"])


def candidates() -> dict[tuple[str, str], dict[tuple[str, str, str], list[dict]]]:
    pools: dict = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    verdict_files, over_refusal_files = published()
    for rel, records in verdict_files:
        run, stage = rel.parts[0], rel.parts[1] if len(rel.parts) > 2 else ""
        for r in records:
            iid = item_id(r["prompt"], r["response"])
            if iid in seen:
                continue
            seen.add(iid)
            it = {"id": iid, "language": r["language"], "prompt_kind": "harmful", "prompt": r["prompt"],
                  "response": r["response"], "prompt_id": r.get("id"), "run": run, "stage": stage,
                  "condition": r["condition"], "model": model_of(run),
                  "model_kind": kind_of(run, stage, r["condition"])}
            pools[(r["language"], "harmful")][(run, stage, r["condition"])].append(it)
    for rel, d in over_refusal_files:
        run, who = rel.parts[0], rel.stem
        for r in d.get("examples", []):
            iid = item_id(r["prompt"], r["response"])
            if iid in seen:
                continue
            seen.add(iid)
            it = {"id": iid, "language": "en", "prompt_kind": "benign", "prompt": r["prompt"],
                  "response": r["response"], "prompt_id": r.get("id"), "run": run, "stage": "over_refusal",
                  "condition": who, "model": model_of(run),
                  "model_kind": "original" if who == "original" else "trained"}
            pools[("en", "benign")][(run, "over_refusal", who)].append(it)
    return pools


def round_robin(groups: dict, rng: random.Random, limit: int, keep=lambda it: True) -> list[dict]:
    """Up to ``limit`` items, round-robin over the shuffled groups (each shuffled), skipping what ``keep`` refuses."""
    queues = {k: rng.sample(v, len(v)) for k, v in sorted(groups.items())}
    keys = sorted(queues)
    rng.shuffle(keys)
    picked: list[dict] = []
    while len(picked) < limit and any(queues.values()):
        for k in keys:
            while queues[k] and len(picked) < limit:
                it = queues[k].pop()
                if keep(it):
                    picked.append(it)
                    break
    return picked


def extension(base: list[dict], pools: dict) -> list[dict]:
    """The extension's new items (see the module docstring), in a seeded shuffled order."""
    from safeneurons.evaluate.validation import part_of

    rng = random.Random(EXTEND_SEED)
    ids = {it["id"] for it in base}
    taken = {(it["run"], it["condition"], it["prompt_id"]) for it in base}
    new: list[dict] = []
    for lang in EXTEND_LANGUAGES:
        groups = pools.get((lang, "harmful"), {})
        order = round_robin(groups, rng, EXTEND_MAX,
                            lambda it: it["id"] not in ids and (it["run"], it["condition"], it["prompt_id"]) not in taken)
        n = min(EXTEND_MIN, len(order))
        while n < len(order) and sum(part_of(it["id"]) == "report" for it in order[:n]) < EXTEND_REPORT:
            n += 1
        picked = order[:n]
        report = sum(part_of(it["id"]) == "report" for it in picked)
        for it in picked:
            ids.add(it["id"])
            taken.add((it["run"], it["condition"], it["prompt_id"]))
        print(f"extension {lang}: {len(picked)} new items ({report} in the report part, {len(picked) - report} in "
              f"build) from {sum(len(v) for v in groups.values())} candidates, {len(groups)} groups, "
              f"{len({(it['run'], it['stage'], it['condition']) for it in picked})} groups used")
        new.extend(picked)
    rng.shuffle(new)
    return new


def extend(args: argparse.Namespace) -> int:
    with open(OUT / "items.jsonl", encoding="utf-8") as fh:
        lines = fh.readlines()
    if len(lines) < BASE_LINES:
        sys.exit(f"items.jsonl has {len(lines)} lines, fewer than the {BASE_LINES} the extension follows.")
    base = [json.loads(line) for line in lines[:BASE_LINES]]
    new = extension(base, candidates())
    added = [json.dumps(it, ensure_ascii=False) + "\n" for it in new]
    print(f"{len(new)} new items in all")
    if args.check:
        same = lines[BASE_LINES:] == added
        print(f"{len(added)} extension items drawn: {'same as' if same else 'DIFFERENT from'} items.jsonl lines "
              f"{BASE_LINES + 1}-")
        return 0 if same else 1
    with open(OUT / "items.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(lines[:BASE_LINES] + added)
    print(f"items.jsonl: {BASE_LINES} + {len(added)} lines")
    if args.blind is not None:
        blind = [{k: it[k] for k in BLIND_FIELDS} for it in new]
        random.Random(EXTEND_SEED + 1).shuffle(blind)
        with open(args.blind, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(b, ensure_ascii=False) + "\n" for b in blind)
        print(f"{args.blind}: {len(blind)} lines (fields {', '.join(BLIND_FIELDS)}; shuffled)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true",
                    help="compare the drawn items with the first lines of the committed items.jsonl; write nothing")
    ap.add_argument("--extend", action="store_true",
                    help=f"draw the extension ({', '.join(EXTEND_LANGUAGES)}) and write items.jsonl as its first "
                         f"{BASE_LINES} lines plus those items (with --check: compare them with the lines after)")
    ap.add_argument("--blind", type=Path, default=None,
                    help="with --extend: also write the new items' labelling batch here (id, language, prompt, "
                         "response; shuffled)")
    args = ap.parse_args()
    if args.blind is not None and not args.extend:
        ap.error("--blind needs --extend")
    if args.extend:
        return extend(args)
    rng = random.Random(SEED)
    pools = candidates()
    chosen: list[dict] = []
    for stratum, target in TARGETS.items():
        groups = pools.get(stratum, {})
        queues = {k: rng.sample(v, len(v)) for k, v in sorted(groups.items())}
        keys = sorted(queues)
        rng.shuffle(keys)
        picked: list[dict] = []
        while len(picked) < target and any(queues.values()):
            for k in keys:
                if queues[k] and len(picked) < target:
                    picked.append(queues[k].pop())
        print(f"{stratum}: {len(picked)} of {sum(len(v) for v in groups.values())} candidates, {len(groups)} groups")
        chosen.extend(picked)
    rng.shuffle(chosen)
    lines = [json.dumps(it, ensure_ascii=False) + "\n" for it in chosen]
    if args.check:
        with open(OUT / "items.jsonl", encoding="utf-8") as fh:
            committed = fh.readlines()[:len(lines)]
        same = committed == lines
        print(f"{len(lines)} items drawn: {'same as' if same else 'DIFFERENT from'} the first lines of items.jsonl")
        return 0 if same else 1
    with open(OUT / "items.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    print(len(chosen), "items")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
