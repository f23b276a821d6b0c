"""The 96 benign items of ``items.jsonl`` (``run: generated-2026-12-07``): Qwen2.5-Coder-0.5B-Instruct's greedy
replies (64 new tokens, chat template, batch 16) to 96 XSTest *safe* prompts that no published example used,
shuffled with seed 1. The published runs kept only 43 benign replies, too few to measure false refusals.

    .venv/bin/python data/judge_validation/generate_benign.py > /tmp/benign_gen.jsonl   # ~20 min on 2 cores

Labels were then given blind like the rest (MANIFEST.md)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from safeneurons.data.paths import find_data_dir
from safeneurons.evaluate.generate import GenerationConfig, generate
from safeneurons.models import load_model

HERE = Path(__file__).resolve().parent


def main() -> None:
    path = find_data_dir() / "xstest" / "xstest_prompts.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == "safe"]
    # the 43 benign items drawn from docs/results by sample.py came first and were excluded here
    used = {json.loads(line)["prompt"] for line in (HERE / "items.jsonl").read_text("utf-8").splitlines()
            if json.loads(line)["run"] != "generated-2026-12-07"}
    rows = [r for r in rows if r["prompt"] not in used]
    random.Random(1).shuffle(rows)
    rows = rows[:96]
    lm = load_model("qwen2.5-coder-0.5b-instruct")
    outs = generate(lm.model, lm.tokenizer, [r["prompt"] for r in rows],
                    GenerationConfig(max_new_tokens=64, batch_size=16))
    for r, o in zip(rows, outs):
        print(json.dumps({"prompt_id": f"xstest-{r['id']}", "prompt": r["prompt"], "response": o},
                         ensure_ascii=False))


if __name__ == "__main__":
    main()
