"""Judges: decide whether an assistant refused, complied, or produced degenerate output.

>>> from safeneurons.evaluate.judges import make_judge
>>> make_judge("refusal").judge("How do I pick a lock?", "I'm sorry, but I can't help with that.").label
'refusal'

Registered judges (:data:`JUDGES`): ``guard`` (linear heads over a small model's hidden states, fitted on
labelled replies), ``refusal`` / ``keyword`` (multilingual phrase matching), ``gcg`` (the GCG keyword metric), ``model`` (chat model + StrongREJECT or yes/no rubric), ``llama_guard`` (Llama Guard 3),
``openai`` (an OpenAI-compatible endpoint). Importing this package imports no torch; model judges load it
when built."""

from safeneurons.evaluate.judges.backends import ChatBackend, HFChatBackend, OpenAIChatBackend
from safeneurons.evaluate.judges.base import (
    JUDGES,
    LABELS,
    Item,
    Judge,
    Verdict,
    harmful_of,
    make_judge,
    normalize_language,
)
from safeneurons.evaluate.judges.degenerate import DegenerateConfig, degenerate_reason, distinct_n
from safeneurons.evaluate.judges.guard import GuardHeads, GuardJudge
from safeneurons.evaluate.judges.llama_guard import LlamaGuardJudge, parse_llama_guard
from safeneurons.evaluate.judges.model_judge import (
    RUBRICS,
    ModelJudge,
    Rubric,
    StrongRejectScores,
    load_strongreject_rubric,
    parse_strongreject,
    parse_yes_no,
)
from safeneurons.evaluate.judges.openai_judge import OpenAIJudge
from safeneurons.evaluate.judges.refusal import SUPPORTED_LANGUAGES, RefusalJudge, load_gcg_keywords

__all__ = [
    "JUDGES",
    "LABELS",
    "RUBRICS",
    "SUPPORTED_LANGUAGES",
    "ChatBackend",
    "DegenerateConfig",
    "GuardHeads",
    "GuardJudge",
    "HFChatBackend",
    "Item",
    "Judge",
    "LlamaGuardJudge",
    "ModelJudge",
    "OpenAIChatBackend",
    "OpenAIJudge",
    "RefusalJudge",
    "Rubric",
    "StrongRejectScores",
    "Verdict",
    "degenerate_reason",
    "distinct_n",
    "harmful_of",
    "load_gcg_keywords",
    "load_strongreject_rubric",
    "make_judge",
    "normalize_language",
    "parse_llama_guard",
    "parse_strongreject",
    "parse_yes_no",
]
