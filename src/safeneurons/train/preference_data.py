"""Preference pairs ``(prompt, chosen, rejected)`` for SafeNeuron DPO (arXiv 2602.12158, App. B.2).

Builders:

* :func:`onpolicy_safety_pairs`: chosen = the model's own refusal of a harmful prompt, rejected = the
  compliant answer of its *pruned* version (the safety neurons ablated, the SafeNeuron "SN-" attack).
  Only pairs whose chosen answer is a refusal and whose rejected answer is a compliance are kept.
* :func:`hh_rlhf_pairs`: Anthropic HH-RLHF harmless-base transcripts (``"\\n\\nHuman: … \\n\\nAssistant: …"``)
  parsed into chat messages; the shared history is the prompt, the final assistant turns are
  chosen/rejected.
* :func:`helpfulness_pairs`: benign prompts; chosen = the model's answer, rejected = a degraded answer
  (see :data:`DEGRADE_STRATEGIES`).
* :func:`hub_pairs`: PKU-SafeRLHF and UltraFeedback-binarized by name when the Hub is reachable.
* :func:`drop_unfinished`: drops pairs whose chosen answer was cut at the token budget or is degenerate.
* :func:`mix`: the paper's 30 % safety / 70 % general composition.

Generation is a callable ``generate_fn(prompts, interventions)`` returning one string per prompt, or one
record with ``.text`` and ``.finish_reason`` (``interventions=None``: the unmodified model);
:func:`generate_fn_for` wraps the evaluation module's ``generate_detailed(model, tokenizer, prompts, config,
interventions=...)``, whose finish reasons let :func:`drop_unfinished` remove answers cut at the token budget. Refusal decisions come from a judge: any object with
``judge_many([(prompt, response, language)]) -> [Verdict]`` (``safeneurons.evaluate.judges``) or a plain
callable ``(prompt, response) -> bool`` that returns True for a refusal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safeneurons.errors import ConfigError, DataError
from safeneurons.io import jsonl_objects, write_text_atomic

logger = logging.getLogger("safeneurons.train")

Message = dict[str, str]
GenerateFn = Callable[[list[str], Any], Sequence[Any]]  # strings, or records with .text/.finish_reason
RefusalFn = Callable[[str, str], bool]

HH_RLHF_FILE = "hh_rlhf_harmless_base/harmless_base_test.jsonl"
DEGRADE_STRATEGIES: dict[str, str] = {
    "other_prompt": "the model's answer to a different prompt of the batch (fluent but off-topic): teaches "
    "relevance without a length bias. Default.",
    "truncate": "the model's own answer cut to its first few words: teaches completeness, with a length "
    "bias.",
    "pruned": "the answer of the pruned model (interventions given): teaches the full model over the "
    "ablated one.",
    "anchor": "the chosen answer itself: the pair's DPO term is the constant log 2 (zero gradient), so with a "
    "negative log-likelihood term on the chosen answers (SafeNeuronDPOConfig.sft_weight > 0) the pair only "
    "anchors the model to its own benign answers, and preference learning acts on the safety pairs alone.",
}
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """One DPO example. ``prompt`` is the conversation up to the answer (chat messages ending with a user
    turn); ``chosen``/``rejected`` are the two assistant answers."""

    prompt: tuple[Mapping[str, str], ...]
    chosen: str
    rejected: str
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def single(cls, prompt: str, chosen: str, rejected: str, source: str = "", **meta: Any) -> PreferencePair:
        return cls(({"role": "user", "content": prompt},), chosen, rejected, source, dict(meta))

    @property
    def prompt_text(self) -> str:
        """The last user message."""
        return self.prompt[-1]["content"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": [dict(m) for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "source": self.source,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "<dict>") -> PreferencePair:
        try:
            prompt = d["prompt"]
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            msgs = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in prompt)
            pair = cls(
                msgs,
                str(d["chosen"]),
                str(d["rejected"]),
                str(d.get("source", "")),
                dict(d.get("meta") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"{where}: a preference pair needs 'prompt' (text or messages), 'chosen' and "
                f"'rejected' ({type(exc).__name__}: {exc})."
            ) from exc
        pair.check(where)
        return pair

    def check(self, where: str = "pair") -> None:
        if not self.prompt:
            raise DataError(f"{where}: empty prompt.")
        for i, m in enumerate(self.prompt):
            if m.get("role") not in _ROLES:
                raise DataError(
                    f"{where}: prompt message {i} has role {m.get('role')!r}; expected one of {_ROLES}."
                )
        if self.prompt[-1]["role"] != "user":
            raise DataError(
                f"{where}: the prompt must end with a user message, not {self.prompt[-1]['role']!r}."
            )
        if not self.chosen.strip() or not self.rejected.strip():
            raise DataError(f"{where}: 'chosen' and 'rejected' must be non-empty.")

    def to_trl(self, chat_template: bool = True) -> dict[str, Any]:
        """A TRL ``DPOTrainer`` row: conversational (``prompt`` messages, ``chosen``/``rejected`` assistant
        messages) with ``chat_template``, else standard text with an HH-style ``Human:/Assistant:`` prompt."""
        if chat_template:
            return {
                "prompt": [dict(m) for m in self.prompt],
                "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}],
            }
        return {
            "prompt": render_transcript(self.prompt),
            "chosen": " " + self.chosen.strip(),
            "rejected": " " + self.rejected.strip(),
        }


def render_transcript(messages: Sequence[Mapping[str, str]]) -> str:
    """HH-RLHF text form of a conversation, ending with an open ``Assistant:`` turn."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"


# ----------------------------------------------------------------------------------------------
# judging
# ----------------------------------------------------------------------------------------------


def _labels(judge: Any, prompts: Sequence[str], responses: Sequence[str], language: str) -> list[str]:
    """``refusal``/``compliance``/other label per response, from a Judge or a ``(prompt, response) -> bool``
    callable."""
    if hasattr(judge, "judge_many"):
        return [v.label for v in judge.judge_many([(p, r, language) for p, r in zip(prompts, responses)])]
    if callable(judge):
        return ["refusal" if judge(p, r) else "compliance" for p, r in zip(prompts, responses)]
    raise ConfigError(
        f"judge must be a safeneurons Judge or a callable (prompt, response) -> bool (True = refusal); "
        f"got {type(judge).__name__}."
    )


def _generate(generate_fn: GenerateFn, prompts: list[str], interventions: Any,
              what: str) -> tuple[list[str], list[str | None]]:
    """The answers of ``generate_fn`` and, when it returns generation records (``.text`` and
    ``.finish_reason``, as :func:`generate_fn_for` does), why each one stopped ("eos", "stop", "length");
    ``None`` for plain strings."""
    out = list(generate_fn(prompts, interventions))
    if len(out) != len(prompts):
        raise DataError(
            f"generate_fn returned {len(out)} {what} for {len(prompts)} prompts; it must return one "
            "string per prompt, in order."
        )
    texts = [getattr(o, "text", o) for o in out]
    bad = [i for i, o in enumerate(texts) if not isinstance(o, str)]
    if bad:
        raise DataError(
            f"generate_fn returned a {type(out[bad[0]]).__name__} for prompt {bad[0]}; expected str."
        )
    return texts, [getattr(o, "finish_reason", None) for o in out]


def _finish_meta(reason: str | None) -> dict[str, str]:
    return {} if reason is None else {"chosen_finish": reason}


@dataclass
class BuildReport:
    """How many candidate pairs each filter dropped."""

    candidates: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "kept": self.kept, "dropped": dict(self.dropped)}


def generate_fn_for(model: Any, tokenizer: Any, config: Any = None, **kwargs: Any) -> GenerateFn:
    """A ``generate_fn`` backed by :func:`safeneurons.evaluate.generate.generate_detailed` (greedy by default;
    ``config`` is its ``GenerationConfig``, ``kwargs`` e.g. ``cache=``/``model_key=``/``progress=``): its
    records carry each answer's finish reason, kept in the pairs' meta for :func:`drop_unfinished`."""
    from safeneurons.evaluate.generate import generate_detailed

    def generate_fn(prompts: list[str], interventions: Any) -> list[Any]:
        return generate_detailed(model, tokenizer, prompts, config, interventions=interventions, **kwargs)

    return generate_fn


# ----------------------------------------------------------------------------------------------
# (a) on-policy safety pairs
# ----------------------------------------------------------------------------------------------


def onpolicy_safety_pairs(
    prompts: Sequence[str],
    generate_fn: GenerateFn,
    pruned: Any,
    judge: Any,
    language: str = "en",
    source: str = "onpolicy",
) -> tuple[list[PreferencePair], BuildReport]:
    """Chosen = the model's refusal, rejected = the pruned model's compliance, for harmful ``prompts``.

    ``pruned`` is what ``generate_fn`` receives for the attacked model (a NeuronSet or interventions that
    zero the safety neurons). A pair is kept only when ``judge`` labels the chosen answer ``refusal`` and
    the rejected answer ``compliance`` (empty/looping/gibberish answers, labelled ``degenerate`` by the
    library judges, are dropped rather than used as "compliant" examples)."""
    prompts = list(prompts)
    if not prompts:
        raise DataError("onpolicy_safety_pairs: no prompts given.")
    if pruned is None:
        raise ConfigError(
            "onpolicy_safety_pairs: 'pruned' is None; pass the safety neurons (or interventions) "
            "whose ablation makes the model comply."
        )
    chosen, finish = _generate(generate_fn, prompts, None, "answers of the full model")
    rejected, _ = _generate(generate_fn, prompts, pruned, "answers of the pruned model")
    lab_c = _labels(judge, prompts, chosen, language)
    lab_r = _labels(judge, prompts, rejected, language)
    report = BuildReport(candidates=len(prompts))
    out: list[PreferencePair] = []
    for p, c, r, lc, lr, f in zip(prompts, chosen, rejected, lab_c, lab_r, finish):
        if lc != "refusal":
            report.drop(f"chosen_{lc}")
        elif lr != "compliance":
            report.drop(f"rejected_{lr}")
        elif not c.strip() or not r.strip():
            report.drop("empty")
        else:
            out.append(PreferencePair.single(p, c, r, source, language=language, **_finish_meta(f)))
    report.kept = len(out)
    logger.info("on-policy safety pairs: kept %d of %d (%s).", report.kept, report.candidates, report.dropped)
    return out, report


# ----------------------------------------------------------------------------------------------
# (b) HH-RLHF harmless-base
# ----------------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_hh_transcript(text: str, where: str = "transcript") -> list[Message]:
    """Split an HH-RLHF transcript into chat messages.

    ``"\\n\\nHuman: a\\n\\nAssistant: b"`` → ``[{"role": "user", "content": "a"},
    {"role": "assistant", "content": "b"}]``."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where}: not an HH-RLHF transcript (expected it to start with '\\n\\nHuman:').")
    msgs: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if msgs and msgs[-1]["role"] == role:  # a speaker continued over a blank line
            msgs[-1]["content"] = (msgs[-1]["content"] + "\n\n" + content).strip()
        else:
            msgs.append({"role": role, "content": content})
    return msgs


def hh_pair_from_row(row: Mapping[str, Any], where: str = "row") -> PreferencePair | None:
    """One HH-RLHF row (``chosen``/``rejected`` full transcripts) → a pair, or ``None`` when the two
    transcripts do not share their history or end identically."""
    try:
        ch = parse_hh_transcript(str(row["chosen"]), f"{where} 'chosen'")
        rj = parse_hh_transcript(str(row["rejected"]), f"{where} 'rejected'")
    except KeyError as exc:
        raise DataError(
            f"{where}: HH-RLHF rows need 'chosen' and 'rejected' transcripts (missing {exc})."
        ) from None
    if ch[-1]["role"] != "assistant" or rj[-1]["role"] != "assistant":
        return None
    if ch[:-1] != rj[:-1] or not ch[:-1]:
        return None
    c, r = ch[-1]["content"], rj[-1]["content"]
    if not c or not r or c == r:
        return None
    return PreferencePair(
        tuple(ch[:-1]), c, r, "hh_rlhf_harmless_base", {"turns": sum(m["role"] == "user" for m in ch)}
    )


def hh_rlhf_pairs(
    rows: Iterable[Mapping[str, Any]] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    single_turn: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> tuple[list[PreferencePair], BuildReport]:
    """HH-RLHF harmless-base pairs from the local datasets folder (or the given ``rows``).

    ``single_turn`` keeps only one-question conversations; otherwise earlier turns become chat history
    in the prompt. ``limit`` takes a seeded random sample."""
    if rows is None:
        from safeneurons.data.datasets import read_jsonl_file

        rows = read_jsonl_file(HH_RLHF_FILE, data_dir)
    report = BuildReport()
    out: list[PreferencePair] = []
    for i, row in enumerate(rows, start=1):
        report.candidates += 1
        pair = hh_pair_from_row(row, f"{HH_RLHF_FILE} line {i}")
        if pair is None:
            report.drop("unpaired_or_identical")
            continue
        if single_turn and len(pair.prompt) != 1:
            report.drop("multi_turn")
            continue
        out.append(pair)
    if limit is not None and limit < len(out):
        out = random.Random(seed).sample(out, limit)
    report.kept = len(out)
    return out, report


# ----------------------------------------------------------------------------------------------
# (c) benign helpfulness pairs
# ----------------------------------------------------------------------------------------------


def helpfulness_pairs(
    prompts: Sequence[str],
    generate_fn: GenerateFn,
    strategy: Literal["other_prompt", "truncate", "pruned", "anchor"] = "other_prompt",
    judge: Any | None = None,
    interventions: Any = None,
    truncate_words: int = 4,
    seed: int = 0,
    source: str = "helpfulness",
) -> tuple[list[PreferencePair], BuildReport]:
    """Chosen = the model's answer to a benign prompt; rejected = a degraded answer (``strategy``, one of
    :data:`DEGRADE_STRATEGIES`). With a ``judge``, pairs whose chosen answer is a refusal are dropped
    (they would teach over-refusal)."""
    if strategy not in DEGRADE_STRATEGIES:
        raise ConfigError(
            f"helpfulness_pairs strategy {strategy!r} is unknown; use one of {', '.join(DEGRADE_STRATEGIES)}."
        )
    prompts = list(prompts)
    if strategy == "other_prompt" and len(prompts) < 2:
        raise DataError("helpfulness_pairs(strategy='other_prompt') needs at least 2 prompts.")
    if strategy == "pruned" and interventions is None:
        raise ConfigError(
            "helpfulness_pairs(strategy='pruned') needs 'interventions' (the neurons to ablate)."
        )
    chosen, finish = _generate(generate_fn, prompts, None, "answers")
    if strategy == "other_prompt":
        order = list(range(len(prompts)))
        shift = random.Random(seed).randrange(1, len(prompts))
        rejected = [chosen[(i + shift) % len(prompts)] for i in order]
    elif strategy == "truncate":
        rejected = [" ".join(c.split()[:truncate_words]) for c in chosen]
    elif strategy == "anchor":
        rejected = list(chosen)
    else:
        rejected, _ = _generate(generate_fn, prompts, interventions, "answers of the pruned model")
    refused = _labels(judge, prompts, chosen, "en") if judge is not None else ["compliance"] * len(prompts)
    report = BuildReport(candidates=len(prompts))
    out: list[PreferencePair] = []
    for p, c, r, lab, f in zip(prompts, chosen, rejected, refused, finish):
        if lab == "refusal":
            report.drop("chosen_refusal")
        elif not c.strip() or not r.strip():
            report.drop("empty")
        elif c.strip() == r.strip() and strategy != "anchor":
            report.drop("identical")
        else:
            out.append(PreferencePair.single(p, c, r, source, strategy=strategy, **_finish_meta(f)))
    report.kept = len(out)
    return out, report


def drop_unfinished(pairs: Sequence[PreferencePair]) -> tuple[list[PreferencePair], BuildReport]:
    """The pairs whose chosen answer is a whole answer: drops those the model stopped at the token budget
    (``meta["chosen_finish"] == "length"``, recorded by the builders above) and those
    :func:`~safeneurons.evaluate.judges.degenerate_reason` calls degenerate (looping, echo, gibberish).

    Why: DPO raises the chosen answer's likelihood (and ``sft_weight``'s NLL term trains it directly), so a
    cut answer teaches stopping mid-sentence before the end-of-turn token, and a looping one teaches loops;
    on Qwen2.5-Coder-0.5B about a quarter of 256-token Self-Instruct answers were cut or looping, and the
    trained models looped on GSM8K (docs/results.md §4j)."""
    from safeneurons.evaluate.judges import degenerate_reason

    report = BuildReport(candidates=len(pairs))
    out: list[PreferencePair] = []
    for pair in pairs:
        if pair.meta.get("chosen_finish") == "length":
            report.drop("chosen_cut_at_token_budget")
        elif degenerate_reason(pair.chosen, pair.prompt_text) is not None:
            report.drop("chosen_degenerate")
        else:
            out.append(pair)
    report.kept = len(out)
    return out, report


# ----------------------------------------------------------------------------------------------
# (d) mixing and hub datasets
# ----------------------------------------------------------------------------------------------


def mix(
    safety_pairs: Sequence[PreferencePair],
    general_pairs: Sequence[PreferencePair],
    safety_fraction: float = 0.3,
    n: int | None = None,
    seed: int = 0,
) -> list[PreferencePair]:
    """A shuffled mix with ``safety_fraction`` safety pairs (SafeNeuron B.2: 30 % safety, 70 % general).

    ``n=None`` uses as many pairs as the scarcer side allows at that ratio; with ``n`` given, exactly
    ``round(n * safety_fraction)`` safety pairs and the rest general ones are sampled."""
    if not 0.0 <= safety_fraction <= 1.0:
        raise ConfigError(
            f"mix: safety_fraction = {safety_fraction!r}; expected a value in [0, 1] (paper: 0.3)."
        )
    s_avail, g_avail = len(safety_pairs), len(general_pairs)
    if n is None:
        limits = []
        if safety_fraction > 0:
            limits.append(s_avail / safety_fraction)
        if safety_fraction < 1:
            limits.append(g_avail / (1 - safety_fraction))
        total = math.floor(min(limits) + 1e-9)
    else:
        total = int(n)
    n_s = round(total * safety_fraction)
    n_g = total - n_s
    if n_s > s_avail or n_g > g_avail:
        raise DataError(
            f"mix: {total} pairs at safety_fraction={safety_fraction} need {n_s} safety and {n_g} "
            f"general pairs, but only {s_avail} and {g_avail} were given; lower n or add pairs."
        )
    rng = random.Random(seed)
    chosen = rng.sample(list(safety_pairs), n_s) + rng.sample(list(general_pairs), n_g)
    rng.shuffle(chosen)
    return chosen


def pku_saferlhf_pair(row: Mapping[str, Any], require_unsafe_rejected: bool = True) -> PreferencePair | None:
    """PKU-SafeRLHF row → pair: chosen = ``response_{safer_response_id}``, rejected = the other one
    (papers.md A.5 [INF]); with ``require_unsafe_rejected`` only pairs whose rejected response is
    labelled unsafe are kept."""
    sid = int(row["safer_response_id"])
    if sid not in (0, 1):
        return None
    oid = 1 - sid
    if require_unsafe_rejected and row.get(f"is_response_{oid}_safe", False):
        return None
    c, r = str(row[f"response_{sid}"]).strip(), str(row[f"response_{oid}"]).strip()
    if not c or not r or c == r:
        return None
    return PreferencePair.single(str(row["prompt"]).strip(), c, r, "pku_saferlhf")


def ultrafeedback_pair(row: Mapping[str, Any]) -> PreferencePair | None:
    """UltraFeedback-binarized row (``chosen``/``rejected`` message lists) → pair."""
    ch, rj = list(row["chosen"]), list(row["rejected"])
    if not ch or not rj or ch[-1]["role"] != "assistant" or rj[-1]["role"] != "assistant":
        return None
    prompt = tuple({"role": m["role"], "content": m["content"]} for m in ch[:-1])
    if not prompt or prompt[-1]["role"] != "user":
        prompt = ({"role": "user", "content": str(row["prompt"])},)
    c, r = ch[-1]["content"].strip(), rj[-1]["content"].strip()
    if not c or not r or c == r:
        return None
    return PreferencePair(prompt, c, r, "ultrafeedback_binarized")


@dataclass(frozen=True)
class HubSpec:
    hub_id: str
    split: str
    convert: Callable[[Mapping[str, Any]], PreferencePair | None]


HUB_DATASETS: dict[str, HubSpec] = {
    "pku-saferlhf": HubSpec("PKU-Alignment/PKU-SafeRLHF", "train", pku_saferlhf_pair),
    "ultrafeedback": HubSpec("HuggingFaceH4/ultrafeedback_binarized", "train_prefs", ultrafeedback_pair),
}


def hub_pairs(
    name: str,
    *,
    fraction: float | None = None,
    limit: int | None = None,
    seed: int = 0,
    split: str | None = None,
) -> list[PreferencePair]:
    """Pairs from a Hub dataset (``pku-saferlhf``, ``ultrafeedback``); needs the network and the
    ``datasets`` package. ``fraction`` takes a seeded random share (SafeNeuron: 20 % of PKU-SafeRLHF)."""
    if name not in HUB_DATASETS:
        raise ConfigError(f"hub_pairs: unknown dataset {name!r}; known: {', '.join(HUB_DATASETS)}.")
    spec = HUB_DATASETS[name]
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(
            f"hub_pairs({name!r}) needs the 'datasets' package (pip install 'safeneurons[hub]')."
        ) from None
    try:
        ds = load_dataset(spec.hub_id, split=split or spec.split)
    except Exception as exc:  # offline, missing auth, ...: one clear line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(
            f"hub_pairs({name!r}): could not load {spec.hub_id} ({type(exc).__name__}: {first}). It needs "
            "network access to the Hugging Face Hub (HF_HUB_OFFLINE unset) or a local datasets cache; "
            "offline, use hh_rlhf_pairs() or on-policy pairs."
        ) from exc
    n = len(ds)
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"hub_pairs: fraction = {fraction!r}; expected a value in (0, 1].")
        idx = idx[: round(n * fraction)]
    out: list[PreferencePair] = []
    for i in idx:
        pair = spec.convert(ds[i])
        if pair is not None:
            out.append(pair)
            if limit is not None and len(out) >= limit:
                break
    return out


# ----------------------------------------------------------------------------------------------
# I/O
# ----------------------------------------------------------------------------------------------


def save_pairs(path: str | os.PathLike[str], pairs: Iterable[PreferencePair]) -> Path:
    """Write pairs as JSONL (one pair per line), atomically."""
    text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs)
    return write_text_atomic(path, text)


def load_pairs(path: str | os.PathLike[str]) -> list[PreferencePair]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"preference pair file {p} does not exist.")
    out = [PreferencePair.from_dict(d, f"{p} line {i}") for i, d in jsonl_objects(p)]
    if not out:
        raise DataError(f"{p} holds no preference pairs.")
    return out


def to_trl_rows(pairs: Sequence[PreferencePair], chat_template: bool = True) -> list[dict[str, Any]]:
    if not pairs:
        raise DataError("no preference pairs to train on.")
    return [p.to_trl(chat_template) for p in pairs]


__all__ = [
    "DEGRADE_STRATEGIES",
    "generate_fn_for",
    "HUB_DATASETS",
    "BuildReport",
    "PreferencePair",
    "helpfulness_pairs",
    "hh_pair_from_row",
    "hh_rlhf_pairs",
    "hub_pairs",
    "load_pairs",
    "mix",
    "onpolicy_safety_pairs",
    "parse_hh_transcript",
    "pku_saferlhf_pair",
    "render_transcript",
    "save_pairs",
    "to_trl_rows",
    "ultrafeedback_pair",
]
