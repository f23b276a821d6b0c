"""Stages shared by the pipelines: judging completions into ASR tables, and capability checks."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from safeneurons import runformat as rf
from safeneurons.data import PromptSet
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.rundir import RunDir

log = logging.getLogger("safeneurons.pipeline")


class RecordedJudge:
    """A judge loaded on first use (a resumed run whose replies are all judged loads none), whose record
    (:func:`safeneurons.evaluate.validation.judge_record`: name, version, validation line) is written to the run
    file ``rel`` when it loads."""

    def __init__(self, run: RunDir, rel: str, name: str, params: Mapping[str, Any]) -> None:
        self.run, self.rel, self.name, self.params = run, rel, name, dict(params)
        self._judge: Any = None

    def get(self) -> Any:
        if self._judge is None:
            from safeneurons.evaluate.judges import make_judge
            from safeneurons.evaluate.validation import judge_record

            self._judge = make_judge(self.name, **self.params)
            self.run.write_json(self.rel, judge_record(self._judge))
        return self._judge

    def about(self) -> dict[str, Any]:
        """The judge's record (loading the judge only when this run has not written it yet)."""
        from safeneurons.io import read_json

        if not self.run.file(self.rel).exists():
            self.get()
        return read_json(self.run.file(self.rel))


def asr_stage(run: RunDir, judge: Any, evalset: PromptSet, completions: Mapping[str, list[str]],
              conds: Mapping[str, NeuronSet | None], examples: int = 3, prefix: str = "") -> Any:
    """Judge every completion, write ``asr.json`` / ``asr.md`` / ``verdicts.jsonl`` and examples."""
    from safeneurons.evaluate.asr import AsrTable
    from safeneurons.evaluate.validation import judge_record

    records: list[dict[str, Any]] = []
    with run.stage(f"{prefix}judge") as info:
        for cond, texts in completions.items():
            items = [(p.text, t, p.language) for p, t in zip(evalset.prompts, texts)]
            verdicts = judge.judge_many(items)
            for p, t, v in zip(evalset.prompts, texts, verdicts):
                records.append({"condition": cond, "category": p.category or "uncategorised",
                                "language": p.language, "id": p.id, "prompt": p.text, "response": t,
                                "verdict": v.to_dict()})
        table = AsrTable.from_records(records, group_by=("category",))
        run.write_json(prefix + rf.VERDICTS, records)
        summary = {}
        for cond in completions:
            row = table.get(cond)
            ns = conds.get(cond)
            summary[cond] = rf.AsrEntry(k=row.k, n=row.n, asr=row.asr, ci=(row.ci_lo, row.ci_hi),
                                        n_degenerate=row.n_degenerate, n_unjudged=row.n_unjudged,
                                        n_neurons=len(ns) if ns is not None else 0,
                                        fraction_of_neurons=ns.fraction_of_neurons() if ns is not None else 0.0
                                        ).to_dict()
        about = judge_record(judge)
        run.write_json(prefix + rf.ASR, {**about, "summary": summary, "table": table.to_dict()})
        run.write_text(prefix + rf.ASR_MD, _summary_markdown(summary) + "\n\n" + about["judge_note"]
                       + "\n\nPer category:\n\n" + table.to_markdown())
        run.write_json(prefix + rf.EXAMPLES, _examples(records, examples))
        info.update(summary={c: s["asr"] for c, s in summary.items()})
    return table


def _summary_markdown(summary: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| condition | neurons zeroed | % of neurons | ASR k / n | ASR % [95% CI] | degenerate |",
             "|---|---|---|---|---|---|"]
    for cond, s in summary.items():
        lo, hi = s["ci"]
        pct = f"{100 * s['asr']:.1f} [{100 * lo:.1f}–{100 * hi:.1f}]" if s["asr"] is not None else "n/a"
        lines.append(f"| {cond} | {s['n_neurons']} | {100 * s['fraction_of_neurons']:.2f} | {s['k']} / {s['n']} | "
                     f"{pct} | {s['n_degenerate']} |")
    return "\n".join(lines)


def _examples(records: list[dict[str, Any]], k: int) -> dict[str, list[dict[str, Any]]]:
    """Per condition: the first ``k`` completions judged harmful, then others to fill up."""
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        out.setdefault(rec["condition"], [])
    for cond in out:
        mine = [r for r in records if r["condition"] == cond]
        picked = [r for r in mine if r["verdict"]["label"] == "compliance"][:k]
        picked += [r for r in mine if r not in picked][: max(0, k - len(picked))]
        out[cond] = [{"prompt": r["prompt"], "response": r["response"], "label": r["verdict"]["label"],
                      "category": r["category"]} for r in picked]
    return out


CAPABILITY_CACHE = rf.CAPABILITY_CACHE  # one JSON per (model, interventions, task, n, k, seed): see capability_key


def capability_key(lm: Any, ns: NeuronSet | None, task: str, n: int | None, k_shot: int,
                   data_dir: str | None, seed: int = 0, split: str = "all") -> str:
    """Content key of one capability result: the model's weights checksum, what the interventions do, the
    task, its questions (n, seed, data dir, evaluation split) and shots. ``--reuse`` carries these results
    into a new run, so changing one task or adding another re-scores only that one. (``split="all"``, every
    question as before splits, keeps the keys of earlier runs.)"""
    import hashlib
    import json

    from safeneurons.intervene.hooks import fingerprint

    if getattr(lm, "checksum", "unknown") in ("", "unknown", None):
        return ""  # weights of unknown identity: never reuse
    fields = {"v": 1, "model": lm.checksum, "interventions": fingerprint(ns), "task": task, "n": n,
              "k_shot": k_shot, "seed": seed, "data_dir": data_dir}
    if split != "all":
        fields["split"] = split
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def capability_stage(run: RunDir, lm: Any, conds: Mapping[str, NeuronSet | None], cap: Any,
                     data_dir: str | None = None, progress: bool = True, prefix: str = "",
                     split: str = "all") -> dict[str, Any]:
    """Capability (multiple-choice accuracy, GSM8K exact match) and fluency (perplexity on benign text) per
    condition, on the questions of the ``split`` half (``safeneurons.evaluate.capability.split_indices``).
    Each task result is also kept under ``capability_cache/`` by :func:`capability_key`."""
    from safeneurons.evaluate.cache import GenerationCache
    from safeneurons.evaluate.capability import evaluate_capability, perplexity, resolve_k_shot
    from safeneurons.io import read_json, write_json_atomic

    path = prefix + rf.CAPABILITY
    if run.done(f"{prefix}capability") and run.file(path).exists():
        return read_json(run.file(path))
    texts = benign_texts(cap.perplexity_texts, data_dir) if cap.perplexity_texts else []
    results: dict[str, Any] = {}
    with run.stage(f"{prefix}capability") as info:
        reused = []
        gen_cache = GenerationCache(run.file(prefix + rf.GENERATIONS)) if cap.tasks else None  # GSM8K answers
        for cond, ns in conds.items():
            res: dict[str, Any] = {}
            if cap.tasks:
                res["tasks"] = {}
            for task in cap.tasks:
                k, n = resolve_k_shot(task, cap.k_shot), cap.n_of(task)
                key = capability_key(lm, ns, task, n, k, data_dir, split=split)
                cached = run.file(f"{prefix}{CAPABILITY_CACHE}/{key}.json") if key else None
                if cached is not None and cached.exists():
                    res["tasks"][task] = read_json(cached)
                    reused.append(f"{cond}/{task}")
                    continue
                score = evaluate_capability(lm.model, lm.tokenizer, [task], n=n, interventions=ns, k_shot={task: k},
                                            batch_size=cap.batch_size_of(task), share_prefix=64 if cap.share_prefix else None,
                                            progress=progress, data_dir=data_dir, model_key=getattr(lm, "checksum", ""),
                                            split=split,
                                            cache=gen_cache if key else None)[task]  # unknown weights: no cache
                res["tasks"][task] = score.to_dict()
                if cached is not None:
                    write_json_atomic(cached, res["tasks"][task])
            if texts:
                res["perplexity"] = perplexity(lm.model, lm.tokenizer, texts, interventions=ns)
            results[cond] = res
        run.write_json(path, results)
        info.update(conditions=list(results), reused=reused)
    return results


def benign_texts(n: int, data_dir: str | None = None) -> list[str]:
    """Benign reference answers (Self-Instruct instance outputs) for the perplexity figure."""
    from safeneurons.data import read_jsonl_file

    rows = read_jsonl_file("self_instruct/user_oriented_instructions.jsonl", data_dir)
    out = []
    for r in rows:
        for inst in r.get("instances") or []:
            t = (inst.get("output") or "").strip()
            if len(t) > 80:
                out.append(t)
                break
        if len(out) >= n:
            break
    return out
