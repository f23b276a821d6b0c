"""Draw the judge-validation items from the project's own published runs (docs/results).

Run from the repository root: ``python data/judge_validation/sample.py``. Deterministic (seeded), so the
committed ``items.jsonl`` can be rebuilt and checked. Each item keeps where it came from (run, condition,
model) for analysis; the labelling batches (``batches/*.jsonl``) carry only id, language, prompt and response,
so labels are blind to condition and to every judge verdict.

Strata (target counts): English responses to harmful prompts, English responses to benign XSTest prompts,
and responses to MultiJail prompts in nine other languages. Within a stratum, items are drawn round-robin
over (run, condition) groups so pruned, random-control, trained and original models all appear; exact
(prompt, response) duplicates are kept once."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
OUT = Path(__file__).resolve().parent
SEED = 20261207

TARGETS = {("en", "harmful"): 230, ("en", "benign"): 80}
TARGETS.update({(lang, "harmful"): 70 for lang in ("zh", "it", "vi", "ar", "ko")})
TARGETS.update({(lang, "harmful"): 30 for lang in ("th", "bn", "sw", "jv")})


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


def candidates() -> dict[tuple[str, str], dict[tuple[str, str, str], list[dict]]]:
    pools: dict = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    for f in sorted(RESULTS.glob("**/verdicts.json")):
        rel = f.relative_to(RESULTS)
        run, stage = rel.parts[0], rel.parts[1] if len(rel.parts) > 2 else ""
        for r in json.loads(f.read_text()):
            iid = item_id(r["prompt"], r["response"])
            if iid in seen:
                continue
            seen.add(iid)
            it = {"id": iid, "language": r["language"], "prompt_kind": "harmful", "prompt": r["prompt"],
                  "response": r["response"], "prompt_id": r.get("id"), "run": run, "stage": stage,
                  "condition": r["condition"], "model": model_of(run),
                  "model_kind": kind_of(run, stage, r["condition"])}
            pools[(r["language"], "harmful")][(run, stage, r["condition"])].append(it)
    for f in sorted(RESULTS.glob("**/over_refusal/*.json")):
        rel = f.relative_to(RESULTS)
        run, who = rel.parts[0], f.stem
        d = json.loads(f.read_text())
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


def main() -> None:
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
    with open(OUT / "items.jsonl", "w", encoding="utf-8") as fh:
        for it in chosen:
            fh.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(len(chosen), "items")


if __name__ == "__main__":
    main()
