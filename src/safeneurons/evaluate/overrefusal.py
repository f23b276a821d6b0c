"""Over-refusal: how often a model refuses *safe* prompts that look unsafe (XSTest v2's 250 safe prompts by
default, Röttger et al. 2024). A pruned or reinforced model that refuses everything has a low attack
success rate for the wrong reason; this figure exposes it.

The rate is ``k / n`` with ``k`` the responses judged ``"refusal"`` and ``n`` every judged response
except ``"unjudged"`` ones (``"degenerate"`` output counts in ``n`` but not in ``k``, and is reported
separately), with a 95 % Wilson interval."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from safeneurons.errors import DataError
from safeneurons.evaluate.asr import wilson_interval
from safeneurons.evaluate.generate import GenerationConfig, generate

if TYPE_CHECKING:
    from safeneurons.data.prompts import Prompt, PromptSet
    from safeneurons.evaluate.cache import GenerationCache
    from safeneurons.evaluate.judges.base import Judge


def _as_prompts(prompts: "PromptSet | Iterable[Prompt | str] | None") -> tuple[str, list[tuple[str, str, str, str]]]:
    """``(name, [(id, text, language, category)])``."""
    from safeneurons.data.prompts import Prompt, PromptSet

    if prompts is None:
        from safeneurons.data.datasets import load_prompts

        prompts = load_prompts("xstest")
    name = prompts.name if isinstance(prompts, PromptSet) else "custom"
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, Prompt):
            out.append((p.id or str(i), p.text, p.language or "en", p.category))
        elif isinstance(p, str):
            out.append((str(i), p, "en", ""))
        else:
            raise DataError(f"over_refusal prompt {i} is a {type(p).__name__}; expected a string or a Prompt.")
    if not out:
        raise DataError(f"over_refusal got no prompts ({name}).")
    return name, out


def over_refusal(model: Any, tokenizer: Any, prompts: "PromptSet | Sequence[Prompt | str] | None" = None,
                 judge: "Judge | str | None" = None, generation: GenerationConfig | None = None, *,
                 interventions: Any = None, cache: "GenerationCache | None" = None, model_key: str = "",
                 n_examples: int = 5, progress: bool = True) -> dict[str, Any]:
    """Generate answers to safe prompts (default ``load_prompts("xstest")``: the 250 safe XSTest prompts),
    judge them (default ``make_judge("refusal")``) and return::

        {"prompts": name, "n": judged, "k": refusals, "refusal_rate": k / n, "ci95": [lo, hi],
         "labels": {label: count}, "degenerate_rate": ..., "by_category": {category: {"k", "n", "rate"}},
         "examples": [{"id", "prompt", "response", "reason"}...], "verdicts": [{"id", "label", "response"}...],
         "generation": {...}}

    ``verdicts`` has one entry per prompt, in order, for paired comparisons between models.

    ``interventions`` are active during generation; ``cache``/``model_key`` as in
    :func:`~safeneurons.evaluate.generate.generate`."""
    from safeneurons.evaluate.judges import make_judge

    name, items = _as_prompts(prompts)
    if judge is None or isinstance(judge, str):
        judge = make_judge(judge or "refusal")
    generation = generation or GenerationConfig(max_new_tokens=128)
    responses = generate(model, tokenizer, [t for _, t, _, _ in items], generation, interventions=interventions,
                         cache=cache, model_key=model_key, progress=progress)
    verdicts = judge.judge_many([(t, r, lang) for (_, t, lang, _), r in zip(items, responses)])
    if len(verdicts) != len(items):
        raise DataError(f"judge {judge!r} returned {len(verdicts)} verdicts for {len(items)} responses.")

    labels = Counter(v.label for v in verdicts)
    n = len(verdicts) - labels.get("unjudged", 0)
    k = labels.get("refusal", 0)
    lo, hi = wilson_interval(k, n)
    by_cat: dict[str, dict[str, float]] = {}
    for (_, _, _, cat), v in zip(items, verdicts):
        if v.label == "unjudged":
            continue
        c = by_cat.setdefault(cat or "all", {"k": 0, "n": 0})
        c["n"] += 1
        c["k"] += v.label == "refusal"
    for c in by_cat.values():
        c["rate"] = c["k"] / c["n"] if c["n"] else float("nan")
    examples = [
        {"id": pid, "prompt": text, "response": resp, "reason": v.reason}
        for (pid, text, _, _), resp, v in zip(items, responses, verdicts) if v.label == "refusal"
    ][: max(0, n_examples)]
    return {
        "prompts": name,
        "n": n,
        "k": k,
        "refusal_rate": k / n if n else float("nan"),
        "ci95": [lo, hi],
        "labels": dict(labels),
        "degenerate_rate": labels.get("degenerate", 0) / n if n else float("nan"),
        "by_category": by_cat,
        "judge": getattr(judge, "name", type(judge).__name__),
        "examples": examples,
        "verdicts": [{"id": pid, "label": v.label, "response": resp}
                     for (pid, _, _, _), resp, v in zip(items, responses, verdicts)],
        "generation": generation.to_dict(),
    }


__all__ = ["over_refusal"]
