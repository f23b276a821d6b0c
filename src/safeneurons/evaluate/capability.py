"""Capability checks for pruned or hooked models: multiple-choice log-likelihood benchmarks (ARC-Challenge,
MMLU, HellaSwag), GSM8K exact match, and perplexity.

The multiple-choice scoring follows lm-evaluation-harness (0.4.x) conventions so that figures are
comparable with published ones:

- each choice is a continuation ``target_delimiter + choice`` (delimiter ``" "``) of the context, scored
  by its summed token log-probability given the context; trailing spaces of the context move to the
  continuation, the pair is encoded as ``tok(context + continuation)`` and split after
  ``len(tok(context))`` tokens, with the tokenizer's default special tokens (``HFLM._encode_pair``);
- ``acc`` is ``argmax(loglikelihood) == gold``; ``acc_norm`` is ``argmax(loglikelihood / len(choice))``
  with ``len`` the number of *characters* of the choice text, delimiter excluded (lm-eval
  ``ConfigurableTask.process_results``; ``acc_bytes`` uses UTF-8 bytes instead and is reported too);
- ``stderr`` is lm-eval's ``mean_stderr``: ``sqrt(p (1 - p) / (n - 1))`` (sample standard deviation of
  the 0/1 scores over ``sqrt(n)``);
- prompts: ARC ``"Question: {question}\\nAnswer:"`` with choice texts (``arc_challenge.yaml``); MMLU
  ``"The following are multiple choice questions (with answers) about {subject}.\\n\\n"`` then
  ``"{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"`` with continuations ``" A"``..``" D"``
  and few-shot examples the first k dev rows of the subject (``mmlu/default``, ``sampler: first_n``);
  HellaSwag ``preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`` with preprocessed
  endings (``hellaswag/utils.py``). Few-shot examples are ``context + " " + answer`` joined by ``"\\n\\n"``.

Differences from lm-eval, stated in :attr:`CapabilityResult.meta`: ARC and HellaSwag few-shot examples are
drawn (seeded) from the *validation* rows other than the question itself, because the local datasets
folder has no train split; lm-eval draws them from the train split.

GSM8K uses greedy generation through :func:`safeneurons.evaluate.generate.generate` with the OLMES 8-shot
chain-of-thought prefix (``prefix + "Question: " + question + "\\nAnswer:"``, stop at ``"Question:"``
or a blank line), extracts ``"The answer is N"`` (else the last number) and compares it with
``short_answer``.
"""

from __future__ import annotations

import copy
import math
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch

from safeneurons.errors import ConfigError, DataError
from safeneurons.registry import Registry

if TYPE_CHECKING:
    from safeneurons.evaluate.cache import GenerationCache

ARC_FILE = "arc_challenge/arc_challenge_validation.jsonl"
MMLU_TEST_FILE = "mmlu/mmlu_test.jsonl.gz"
MMLU_DEV_FILE = "mmlu/mmlu_dev.jsonl"
HELLASWAG_FILE = "hellaswag/hellaswag_validation.jsonl.gz"
GSM8K_FILE = "gsm8k/gsm8k_test.jsonl"
GSM8K_PREFIX_FILE = "gsm8k/gsm8k_8shot_cot_prefix.txt"
MMLU_LETTERS = ("A", "B", "C", "D")


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class CapabilityResult:
    """One benchmark figure. ``acc_norm`` is ``None`` where it has no meaning (GSM8K exact match)."""

    task: str
    n: int
    acc: float
    acc_norm: float | None
    stderr: float
    k_shot: int
    seconds: float
    acc_norm_stderr: float | None = None
    metric: str = "acc"  # what ``acc`` is: "acc" (MC log-likelihood) or "exact_match" (GSM8K)
    meta: dict[str, Any] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)  # question ids, in scoring order
    correct: list[float] = field(default_factory=list)  # 0/1 per question for ``acc`` (paired comparisons)
    correct_norm: list[float] = field(default_factory=list)  # 0/1 per question for ``acc_norm``

    def score(self, metric: str = "acc") -> float | None:
        """``acc`` (GSM8K: exact match) or ``acc_norm``."""
        if metric not in ("acc", "acc_norm"):
            raise ConfigError(f"capability metric {metric!r} is not 'acc' or 'acc_norm'.")
        return self.acc if metric == "acc" else self.acc_norm

    def per_question(self, metric: str = "acc") -> list[float]:
        self.score(metric)
        return self.correct if metric == "acc" else self.correct_norm

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CapabilityResult":
        def opt(key: str) -> float | None:
            return None if d.get(key) is None else float(d[key])

        return cls(task=str(d["task"]), n=int(d["n"]), acc=float(d["acc"]), acc_norm=opt("acc_norm"),
                   stderr=float(d["stderr"]), k_shot=int(d["k_shot"]), seconds=float(d["seconds"]),
                   acc_norm_stderr=opt("acc_norm_stderr"), metric=str(d.get("metric", "acc")),
                   meta=dict(d.get("meta") or {}), ids=[str(i) for i in d.get("ids") or []],
                   correct=[float(c) for c in d.get("correct") or []],
                   correct_norm=[float(c) for c in d.get("correct_norm") or []])


def paired_difference(base: CapabilityResult, other: CapabilityResult, z: float = 1.96,
                      metric: str = "acc") -> dict[str, Any]:
    """``other − base`` in ``metric`` on the questions both scored, with the paired standard error
    ``sd(c_other − c_base) / sqrt(n)`` (the questions are the same, so their difficulty cancels: far
    tighter than two independent intervals) and a normal ``z`` interval. Needs per-question results
    (``ids`` and ``correct``/``correct_norm``); raises :class:`DataError` without them or without common
    questions."""
    mine, theirs = base.per_question(metric), other.per_question(metric)
    if not (mine and theirs):
        raise DataError(f"{base.task}: paired comparison of {metric} needs per-question results "
                        "(rerun the capability check).")
    if base.k_shot != other.k_shot:
        raise DataError(f"{base.task}: cannot pair a {base.k_shot}-shot result with a {other.k_shot}-shot one.")
    b = dict(zip(base.ids, mine))
    diffs = [c - b[i] for i, c in zip(other.ids, theirs) if i in b]
    if not diffs:
        raise DataError(f"{base.task}: the two results share no questions (different n or seed).")
    delta, se = sum(diffs) / len(diffs), mean_stderr(diffs)
    return {"task": base.task, "metric": metric, "n": len(diffs), "delta": delta, "stderr": se,
            "ci": [delta - z * se, delta + z * se], "changed": sum(d != 0 for d in diffs)}


def mean_stderr(scores: Sequence[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n); for 0/1 scores
    ``sqrt(p (1 - p) / (n - 1))``. ``nan`` for fewer than two scores."""
    n = len(scores)
    if n < 2:
        return float("nan")
    mu = sum(scores) / n
    return math.sqrt(sum((x - mu) ** 2 for x in scores) / (n - 1)) / math.sqrt(n)


# ----------------------------------------------------------------------------------------------
# log-likelihood core


def _context_manager(model: Any, interventions: Any) -> Any:
    from contextlib import nullcontext

    if interventions is None:
        return nullcontext()
    from safeneurons.intervene.hooks import as_interventions, intervene

    ivs = as_interventions(interventions)
    return intervene(model, ivs) if ivs else nullcontext()


def _prefix_token_id(tokenizer: Any) -> int:
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise DataError("tokenizer has neither a bos nor an eos token to condition an empty context on.")
    return int(tid)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair`` for causal models: trailing context spaces move to the continuation,
    ``whole = tok(context + continuation)``, the continuation is ``whole[len(tok(context)):]``.
    An empty context is replaced by the BOS (else EOS) token, as lm-eval's ``loglikelihood`` does."""
    if not context:
        return [_prefix_token_id(tokenizer)], list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer(context + continuation)["input_ids"])
    ctx = list(tokenizer(context)["input_ids"])
    return ctx, whole[len(ctx):]


def _max_length(model: Any) -> int:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def loglikelihoods(model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], *, batch_size: int = 8,
                   interventions: Any = None, progress: bool = False, max_length: int | None = None,
                   share_prefix: int | None = 64) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), is_greedy)`` per ``(context, continuation)`` request.

    Inputs are ``(context + continuation)[:-1]`` left-truncated to ``max_length`` tokens (lm-eval
    ``_loglikelihood_tokens``); requests with the same input share one forward pass (e.g. MMLU's four
    one-token answers). Log-softmax is taken in float32.

    ``share_prefix``: requests whose contexts encode to the same tokens, at least this many, run the context
    once and only their continuations after it, on copies of its key/value cache (ARC's 3-5 choices after
    a 25-shot context: ~4x fewer tokens). The result equals the full pass up to float rounding; ``None``
    turns it off (lm-eval's behaviour)."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size} is invalid: expected an integer >= 1.")
    max_len = int(max_length or _max_length(model))
    rows: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    split: dict[tuple[int, ...], int] = {}  # input -> where its (shortest) context's last token sits
    for r, (context, continuation) in enumerate(requests):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise DataError(f"request {r}: continuation {continuation!r} encodes to no tokens.")
        inp = tuple((ctx + cont)[-(max_len + 1):][:-1])
        rows.setdefault(inp, []).append((r, cont))
        split[inp] = min(split.get(inp, len(inp)), len(inp) - len(cont))
    prefixes: dict[tuple[int, ...], list[tuple[int, ...]]] = {}  # shared context head -> inputs continuing it
    for inp, s in split.items():
        prefixes.setdefault(inp[:s], []).append(inp)
    shared = {p: ts for p, ts in prefixes.items()
              if share_prefix is not None and len(ts) > 1 and len(p) >= max(1, share_prefix)}
    in_shared = {t for ts in shared.values() for t in ts}
    unique = sorted((t for t in rows if t not in in_shared), key=lambda t: -len(t))
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    bar = tqdm(total=len(requests), desc="loglikelihood", unit="req", file=sys.stderr, disable=not progress,
               leave=False)

    def padded(batch: Sequence[Sequence[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(batch), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, t in enumerate(batch):
            ids[b, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[b, : len(t)] = 1
        return ids, mask

    def score(logits: torch.Tensor, b: int, length: int, t: tuple[int, ...]) -> None:
        """Fill the requests of input ``t`` from row ``b`` of ``logits`` whose last real position is ``length - 1``."""
        for r, cont in rows[t]:
            c = len(cont)
            lp = torch.log_softmax(logits[b, length - c : length].float(), dim=-1)
            target = torch.tensor(cont, dtype=torch.long, device=lp.device)
            out[r] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
            bar.update(1)

    try:
        with _context_manager(model, interventions), torch.inference_mode():
            for start in range(0, len(unique), batch_size):
                batch = unique[start : start + batch_size]
                ids, mask = padded(batch, max(len(t) for t in batch))
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                for b, t in enumerate(batch):
                    score(logits, b, len(t), t)
            for prefix, inputs in shared.items():
                head = torch.tensor([prefix], dtype=torch.long, device=device)
                past = model(input_ids=head, use_cache=True).past_key_values
                for start in range(0, len(inputs), batch_size):
                    batch = inputs[start : start + batch_size]
                    tails = [t[len(prefix):] for t in batch]  # last context token + continuation[:-1]
                    ids, mask = padded(tails, max(len(t) for t in tails))
                    cache = past if len(inputs) <= batch_size else copy.deepcopy(past)
                    cache.batch_repeat_interleave(len(batch))
                    full_mask = torch.cat([torch.ones((len(batch), len(prefix)), dtype=torch.long), mask], dim=1)
                    logits = model(input_ids=ids.to(device), attention_mask=full_mask.to(device),
                                   past_key_values=cache, use_cache=True).logits
                    for b, (t, tail) in enumerate(zip(batch, tails)):
                        score(logits, b, len(tail), t)
    finally:
        bar.close()
    return [o for o in out if o is not None]


# ----------------------------------------------------------------------------------------------
# multiple choice


@dataclass(frozen=True)
class MCDoc:
    """One multiple-choice question: the full context (few-shot examples included), the choice texts
    (without the delimiter) and the gold index."""

    context: str
    choices: tuple[str, ...]
    gold: int
    id: str = ""
    target_delimiter: str = " "


@dataclass
class MCScores:
    """Per-question choice log-likelihoods and the lm-eval metrics derived from them."""

    loglikelihoods: list[list[float]]
    docs: list[MCDoc]

    def _pred(self, norm: str | None) -> list[int]:
        preds = []
        for lls, doc in zip(self.loglikelihoods, self.docs):
            arr = np.asarray(lls, dtype=np.float64)
            if norm == "chars":
                arr = arr / np.asarray([float(len(c)) for c in doc.choices])
            elif norm == "bytes":
                arr = arr / np.asarray([float(len(c.encode("utf-8"))) for c in doc.choices])
            preds.append(int(np.argmax(arr)))
        return preds

    def correct(self, norm: str | None = None) -> list[float]:
        """0/1 per question: ``norm=None`` → acc, ``"chars"`` → acc_norm, ``"bytes"`` → acc_bytes."""
        return [1.0 if p == d.gold else 0.0 for p, d in zip(self._pred(norm), self.docs)]

    def metrics(self) -> dict[str, float]:
        acc, acc_norm, acc_bytes = self.correct(), self.correct("chars"), self.correct("bytes")
        n = len(acc)
        return {
            "acc": sum(acc) / n if n else float("nan"),
            "acc_stderr": mean_stderr(acc),
            "acc_norm": sum(acc_norm) / n if n else float("nan"),
            "acc_norm_stderr": mean_stderr(acc_norm),
            "acc_bytes": sum(acc_bytes) / n if n else float("nan"),
        }


def score_multiple_choice(model: Any, tokenizer: Any, docs: Sequence[MCDoc], *, batch_size: int = 8,
                          interventions: Any = None, progress: bool = False,
                          share_prefix: int | None = 64) -> MCScores:
    """Score every choice of every doc as ``(context, delimiter + choice)`` (see :func:`loglikelihoods`,
    which also explains ``share_prefix``)."""
    requests: list[tuple[str, str]] = []
    for i, doc in enumerate(docs):
        if not doc.choices:
            raise DataError(f"multiple-choice doc {doc.id or i} has no choices.")
        if not 0 <= doc.gold < len(doc.choices):
            raise DataError(f"multiple-choice doc {doc.id or i}: gold index {doc.gold} is outside 0..{len(doc.choices) - 1}.")
        requests += [(doc.context, doc.target_delimiter + c) for c in doc.choices]
    flat = loglikelihoods(model, tokenizer, requests, batch_size=batch_size, interventions=interventions,
                          progress=progress, share_prefix=share_prefix)
    lls, k = [], 0
    for doc in docs:
        lls.append([flat[k + j][0] for j in range(len(doc.choices))])
        k += len(doc.choices)
    return MCScores(lls, list(docs))


# ----------------------------------------------------------------------------------------------
# dataset → docs


def subsample(n_total: int, n: int | None, seed: int = 0) -> list[int]:
    """Sorted indices of ``n`` of ``n_total`` items drawn with ``random.Random(seed)`` (all when ``n`` is None)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    if n < 1:
        raise ConfigError(f"n = {n} is invalid: expected a positive number of questions (or None for all).")
    return sorted(random.Random(seed).sample(range(n_total), n))


def question_id(task: str, row: Mapping[str, Any], i: int) -> str:
    """The id a task's result lists for row ``i`` (``CapabilityResult.ids``): ARC's ``id``, MMLU
    ``<subject>-<i>``, HellaSwag's ``ind``, GSM8K the row index."""
    if task == "mmlu":
        return f"{row.get('subject', '')}-{i}"
    field_name = {"arc_challenge": "id", "hellaswag": "ind"}.get(task)
    return str(row.get(field_name, i)) if field_name else str(i)


def question_key(task: str, row: Mapping[str, Any], i: int) -> str:
    """The evaluation-split key of a capability question: ``"<task>:<question id>"``."""
    return f"{task}:{question_id(task, row, i)}"


def split_indices(task: str, rows: Sequence[Mapping[str, Any]], n: int | None, seed: int = 0,
                  split: str | None = None) -> list[int]:
    """Sorted indices of the questions to score: :func:`subsample` of every row (``split`` None or
    ``"all"``, the behaviour before evaluation splits), else the same draw within the rows whose
    :func:`question_key` is on the ``split`` side (:func:`safeneurons.data.split_of`)."""
    if split is None or split == "all":
        return subsample(len(rows), n, seed)
    from safeneurons.data.prompts import check_split, split_of

    check_split(split, "capability split")
    pool = [i for i, row in enumerate(rows) if split_of(question_key(task, row, i)) == split]
    if not pool:
        raise DataError(f"{task}: no question on the {split} split.")
    return sorted(pool[j] for j in subsample(len(pool), n, seed))


def scored_keys(task: str, n: int | None, seed: int = 0, split: str | None = None,
                data_dir: Any = None) -> tuple[list[str], list[str]]:
    """``(pool, scored)``: the :func:`question_key` of every question on the ``split`` side of ``task``'s
    file and of the ones a run with ``n`` and ``seed`` scores (the same :func:`split_indices`), without
    scoring anything (for the test ledger and the manifest)."""
    files = {"arc_challenge": ARC_FILE, "mmlu": MMLU_TEST_FILE, "hellaswag": HELLASWAG_FILE,
             "gsm8k": GSM8K_FILE}
    if task not in files:
        raise ConfigError(f"capability task {task!r} has no question file; tasks: {', '.join(files)}.")
    rows = _read(files[task], data_dir)
    keys = [question_key(task, row, i) for i, row in enumerate(rows)]
    if split is None or split == "all":
        pool = keys
    else:
        from safeneurons.data.prompts import split_of

        pool = [k for k in keys if split_of(k) == split]
    return pool, [keys[i] for i in split_indices(task, rows, n, seed, split)]


def _few_shot_indices(n_rows: int, exclude: int, k: int, seed: int) -> list[int]:
    if k <= 0:
        return []
    pool = [j for j in range(n_rows) if j != exclude]
    if k > len(pool):
        raise ConfigError(f"k_shot = {k} is larger than the {len(pool)} rows available for examples.")
    return random.Random(f"{seed}:{exclude}").sample(pool, k)


def _join_shots(shots: Sequence[str], text: str, description: str = "") -> str:
    """lm-eval plain-text context: description + examples each followed by "\\n\\n" + the question."""
    return description + "".join(s + "\n\n" for s in shots) + text


def _arc_row(row: Mapping[str, Any], where: str) -> tuple[str, list[str], int]:
    try:
        labels = list(row["choices"]["label"])
        texts = [str(t) for t in row["choices"]["text"]]
        gold = labels.index(row["answerKey"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: ARC row needs question, choices{{text,label}} and an answerKey among the labels ({exc}).") from None
    return f"Question: {row['question']}\nAnswer:", texts, gold


def arc_docs(rows: Sequence[Mapping[str, Any]], *, k_shot: int = 0, seed: int = 0,
             indices: Sequence[int] | None = None) -> list[MCDoc]:
    """ARC docs (lm-eval ``arc_challenge``); few-shot examples from the other rows (seeded per question)."""
    parsed = [_arc_row(r, f"{ARC_FILE} row {i + 1}") for i, r in enumerate(rows)]
    docs = []
    for i in (range(len(rows)) if indices is None else indices):
        text, choices, gold = parsed[i]
        shots = [f"{parsed[j][0]} {parsed[j][1][parsed[j][2]]}" for j in _few_shot_indices(len(rows), i, k_shot, seed)]
        docs.append(MCDoc(_join_shots(shots, text), tuple(choices), gold, id=str(rows[i].get("id", i))))
    return docs


def _mmlu_text(row: Mapping[str, Any]) -> str:
    ch = row["choices"]
    return (f"{str(row['question']).strip()}\nA. {ch[0]}\nB. {ch[1]}\nC. {ch[2]}\nD. {ch[3]}\nAnswer:")


def mmlu_docs(rows: Sequence[Mapping[str, Any]], dev_rows: Sequence[Mapping[str, Any]] = (), *, k_shot: int = 0,
              indices: Sequence[int] | None = None) -> list[MCDoc]:
    """MMLU docs (lm-eval ``mmlu/default``): subject description, the first ``k_shot`` dev rows of the
    same subject as examples, continuations ``" A"``..``" D"``."""
    by_subject: dict[str, list[Mapping[str, Any]]] = {}
    for r in dev_rows:
        by_subject.setdefault(str(r["subject"]), []).append(r)
    docs = []
    for i in (range(len(rows)) if indices is None else indices):
        row = rows[i]
        if len(row.get("choices") or []) != 4 or not isinstance(row.get("answer"), int):
            raise DataError(f"{MMLU_TEST_FILE} row {i + 1}: expected 4 choices and an integer answer 0-3.")
        subject = str(row["subject"])
        pool = by_subject.get(subject, [])
        if len(pool) < k_shot:
            raise DataError(f"{MMLU_DEV_FILE}: subject {subject!r} has {len(pool)} dev rows, k_shot={k_shot} needs more.")
        shots = [f"{_mmlu_text(r)} {MMLU_LETTERS[int(r['answer'])]}" for r in pool[:k_shot]]
        description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        docs.append(MCDoc(_join_shots(shots, _mmlu_text(row), description), MMLU_LETTERS, int(row["answer"]),
                          id=f"{subject}-{i}"))
    return docs


def hellaswag_preprocess(text: str) -> str:
    """lm-eval ``hellaswag/utils.py::preprocess``."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_row(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return (hellaswag_preprocess(row["activity_label"] + ": " + ctx),
            [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]))


def hellaswag_docs(rows: Sequence[Mapping[str, Any]], *, k_shot: int = 0, seed: int = 0,
                   indices: Sequence[int] | None = None) -> list[MCDoc]:
    """HellaSwag docs (lm-eval ``hellaswag``: ``query`` context, preprocessed endings)."""
    parsed = {}

    def get(j: int) -> tuple[str, list[str], int]:
        if j not in parsed:
            try:
                parsed[j] = _hellaswag_row(rows[j])
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{HELLASWAG_FILE} row {j + 1}: needs activity_label, ctx_a, ctx_b, endings, label ({exc}).") from None
        return parsed[j]

    docs = []
    for i in (range(len(rows)) if indices is None else indices):
        text, choices, gold = get(i)
        shots = [f"{get(j)[0]} {get(j)[1][get(j)[2]]}" for j in _few_shot_indices(len(rows), i, k_shot, seed)]
        docs.append(MCDoc(_join_shots(shots, text), tuple(choices), gold, id=str(rows[i].get("ind", i))))
    return docs


# ----------------------------------------------------------------------------------------------
# benchmark runners


def _read(relpath: str, data_dir: Any) -> list[dict[str, Any]]:
    from safeneurons.data.datasets import read_jsonl_file

    return read_jsonl_file(relpath, data_dir)


def _mc_result(task: str, scores: MCScores, k_shot: int, seconds: float, meta: dict[str, Any]) -> CapabilityResult:
    m = scores.metrics()
    return CapabilityResult(task=task, n=len(scores.docs), acc=m["acc"], acc_norm=m["acc_norm"],
                            stderr=m["acc_stderr"], k_shot=k_shot, seconds=seconds,
                            acc_norm_stderr=m["acc_norm_stderr"], metric="acc",
                            meta={**meta, "acc_bytes": m["acc_bytes"]}, ids=[d.id for d in scores.docs],
                            correct=scores.correct(), correct_norm=scores.correct("chars"))


def resolve_k_shot(task: str, k_shot: int | Mapping[str, int] | None = None) -> int:
    """The shots ``task`` runs with: ``k_shot`` itself, its entry for ``task`` when a mapping, else the
    task's registered ``default_k_shot``."""
    default = int(BENCHMARKS.entry(task).meta.get("default_k_shot", 0))
    if isinstance(k_shot, Mapping):
        return int(k_shot.get(task, default))
    return default if k_shot is None else int(k_shot)


def headline_metric(task: str) -> str:
    """The metric a task is usually reported in: ``acc_norm`` for ARC and HellaSwag (as the Open LLM
    Leaderboard, whose "ARC@25" the SafeNeuron paper quotes), ``acc`` otherwise (GSM8K: exact match)."""
    return str(BENCHMARKS.entry(task).meta.get("headline_metric", "acc"))


def _check_k(k_shot: int) -> int:
    if isinstance(k_shot, bool) or not isinstance(k_shot, int) or k_shot < 0:
        raise ConfigError(f"k_shot = {k_shot!r} is invalid: expected an integer >= 0.")
    return k_shot


BenchmarkFn = Callable[..., CapabilityResult]
BENCHMARKS: Registry[BenchmarkFn] = Registry("capability benchmark")


@BENCHMARKS.register("arc_challenge", summary="ARC-Challenge validation (299), MC log-likelihood, acc/acc_norm",
                     default_k_shot=0, headline_metric="acc_norm")
def evaluate_arc(model: Any, tokenizer: Any, *, n: int | None = None, k_shot: int = 0, seed: int = 0,
                 batch_size: int = 8, interventions: Any = None, rows: Sequence[Mapping[str, Any]] | None = None,
                 data_dir: Any = None, progress: bool = True, share_prefix: int | None = 64,
                 split: str | None = None, **_: Any) -> CapabilityResult:
    """ARC-Challenge (lm-eval ``arc_challenge`` prompt) on the local validation split (``split``: the
    evaluation half to draw from, :func:`split_indices`)."""
    t0 = time.perf_counter()
    rows = list(rows) if rows is not None else _read(ARC_FILE, data_dir)
    idx = split_indices("arc_challenge", rows, n, seed, split)
    docs = arc_docs(rows, k_shot=_check_k(k_shot), seed=seed, indices=idx)
    scores = score_multiple_choice(model, tokenizer, docs, batch_size=batch_size, interventions=interventions,
                                   progress=progress, share_prefix=share_prefix)
    return _mc_result("arc_challenge", scores, k_shot, time.perf_counter() - t0,
                      {"split": "validation", "seed": seed, "n_available": len(rows),
                       "eval_split": split or "all",
                       "fewshot_source": "other validation rows" if k_shot else None})


@BENCHMARKS.register("mmlu", summary="MMLU test (14042), MC log-likelihood over ' A'..' D'", default_k_shot=0,
                     headline_metric="acc")
def evaluate_mmlu(model: Any, tokenizer: Any, *, n: int | None = None, k_shot: int = 0, seed: int = 0,
                  batch_size: int = 8, interventions: Any = None, rows: Sequence[Mapping[str, Any]] | None = None,
                  dev_rows: Sequence[Mapping[str, Any]] | None = None, data_dir: Any = None, progress: bool = True,
                  share_prefix: int | None = 64, split: str | None = None, **_: Any) -> CapabilityResult:
    """MMLU (lm-eval ``mmlu`` default prompt; k-shot examples: first k dev rows of the subject).

    ``acc`` over the sampled questions (micro average), not lm-eval's per-subject group average."""
    t0 = time.perf_counter()
    rows = list(rows) if rows is not None else _read(MMLU_TEST_FILE, data_dir)
    if dev_rows is None:
        dev_rows = _read(MMLU_DEV_FILE, data_dir) if k_shot else []
    idx = split_indices("mmlu", rows, n, seed, split)
    docs = mmlu_docs(rows, dev_rows, k_shot=_check_k(k_shot), indices=idx)
    scores = score_multiple_choice(model, tokenizer, docs, batch_size=batch_size, interventions=interventions,
                                   progress=progress, share_prefix=share_prefix)
    return _mc_result("mmlu", scores, k_shot, time.perf_counter() - t0,
                      {"split": "test", "seed": seed, "n_available": len(rows), "average": "micro",
                       "eval_split": split or "all",
                       "fewshot_source": "dev (first_n)" if k_shot else None})


@BENCHMARKS.register("hellaswag", summary="HellaSwag validation (10042), MC log-likelihood, acc/acc_norm",
                     default_k_shot=0, headline_metric="acc_norm")
def evaluate_hellaswag(model: Any, tokenizer: Any, *, n: int | None = None, k_shot: int = 0, seed: int = 0,
                       batch_size: int = 8, interventions: Any = None,
                       rows: Sequence[Mapping[str, Any]] | None = None, data_dir: Any = None,
                       progress: bool = True, share_prefix: int | None = 64, split: str | None = None,
                       **_: Any) -> CapabilityResult:
    """HellaSwag (lm-eval ``hellaswag`` preprocessing) on the local validation split; report ``acc_norm``."""
    t0 = time.perf_counter()
    rows = list(rows) if rows is not None else _read(HELLASWAG_FILE, data_dir)
    idx = split_indices("hellaswag", rows, n, seed, split)
    docs = hellaswag_docs(rows, k_shot=_check_k(k_shot), seed=seed, indices=idx)
    scores = score_multiple_choice(model, tokenizer, docs, batch_size=batch_size, interventions=interventions,
                                   progress=progress, share_prefix=share_prefix)
    return _mc_result("hellaswag", scores, k_shot, time.perf_counter() - t0,
                      {"split": "validation", "seed": seed, "n_available": len(rows),
                       "eval_split": split or "all",
                       "fewshot_source": "other validation rows" if k_shot else None})


# ----------------------------------------------------------------------------------------------
# GSM8K

_ANSWER_RE = re.compile(r"the answer is\s*:?\s*(-?)\s*\$?\s*([\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?[\d,]*\.?\d+")


def normalize_number(text: str) -> str:
    """``"1,234.50"`` → ``"1234.5"``, ``"$18."`` → ``"18"``, ``"-3.0"`` → ``"-3"``; non-numbers are stripped text."""
    s = text.strip().replace(",", "").replace("$", "").rstrip(".").strip()
    try:
        value = float(s)
    except ValueError:
        return s
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def extract_gsm8k_answer(text: str) -> str | None:
    """The number after the first "The answer is" (OLMES/lm-eval CoT format; a minus sign may be followed by a
    space, a ``$`` may precede the number), else the last number in the text, normalised by
    :func:`normalize_number`; ``None`` when the text has no number."""
    m = _ANSWER_RE.search(text)
    if m:  # "- 10" (a spaced minus, as in two GSM8K solutions) counts as -10
        return normalize_number(m.group(1) + m.group(2))
    nums = [x for x in _NUMBER_RE.findall(text) if any(ch.isdigit() for ch in x)]
    return normalize_number(nums[-1]) if nums else None


def gsm8k_prefix(k_shot: int = 8, data_dir: Any = None, prefix: str | None = None) -> str:
    """The first ``k_shot`` (of 8) exemplars of the OLMES CoT prefix, each followed by a blank line."""
    from safeneurons.data.datasets import read_text_file

    text = prefix if prefix is not None else read_text_file(GSM8K_PREFIX_FILE, data_dir)
    shots = [s.strip("\n") for s in text.split("\n\n") if s.strip()]
    if k_shot > len(shots):
        raise ConfigError(f"k_shot = {k_shot} for gsm8k: {GSM8K_PREFIX_FILE} has only {len(shots)} exemplars.")
    return "".join(s + "\n\n" for s in shots[:k_shot])


@BENCHMARKS.register("gsm8k", summary="GSM8K test (1319), 8-shot CoT greedy generation, exact match",
                     default_k_shot=8, headline_metric="acc")
def evaluate_gsm8k(model: Any, tokenizer: Any, *, n: int | None = None, k_shot: int = 8, seed: int = 0,
                   batch_size: int = 8, interventions: Any = None, rows: Sequence[Mapping[str, Any]] | None = None,
                   prefix: str | None = None, max_new_tokens: int = 256, chat_template: bool = False,
                   cache: "GenerationCache | None" = None, model_key: str = "", data_dir: Any = None,
                   progress: bool = True, share_prefix: int | None = 64, split: str | None = None,
                   **_: Any) -> CapabilityResult:
    """GSM8K exact match with the OLMES prompt ``prefix + "Question: {q}\\nAnswer:"`` (raw text by default;
    ``chat_template=True`` sends it as one user turn). Greedy, stops at ``"Question:"`` or a blank line.
    ``share_prefix=64`` (default) runs the k-shot prefix every prompt shares once (see
    :class:`~safeneurons.evaluate.generate.GenerationConfig`; the same greedy text as ``None``, every prompt
    in full, and 1.32x faster at batch 8 on 2 CPU cores: benchmarks/README.md)."""
    from safeneurons.evaluate.generate import GenerationConfig, generate

    t0 = time.perf_counter()
    rows = list(rows) if rows is not None else _read(GSM8K_FILE, data_dir)
    idx = split_indices("gsm8k", rows, n, seed, split)
    shots = gsm8k_prefix(_check_k(k_shot), data_dir, prefix)
    prompts, golds = [], []
    for i in idx:
        row = rows[i]
        if "question" not in row or "short_answer" not in row:
            raise DataError(f"{GSM8K_FILE} row {i + 1}: needs 'question' and 'short_answer'.")
        prompts.append(f"{shots}Question: {row['question']}\nAnswer:")
        golds.append(normalize_number(str(row["short_answer"])))
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, chat_template=chat_template,
                              stop=("Question:", "\n\n"), share_prefix=share_prefix)
    outputs = generate(model, tokenizer, prompts, config, interventions=interventions, cache=cache,
                       model_key=model_key, progress=progress)
    preds = [extract_gsm8k_answer(o) for o in outputs]
    correct = [1.0 if p is not None and p == g else 0.0 for p, g in zip(preds, golds)]
    m = len(correct)
    return CapabilityResult(
        task="gsm8k", n=m, acc=sum(correct) / m if m else float("nan"), acc_norm=None,
        stderr=mean_stderr(correct), k_shot=k_shot, seconds=time.perf_counter() - t0, metric="exact_match",
        meta={"split": "test", "seed": seed, "n_available": len(rows), "eval_split": split or "all",
              "max_new_tokens": max_new_tokens,
              "no_answer": sum(p is None for p in preds), "outputs": list(outputs),
              "examples": [{"question": rows[i]["question"], "output": o, "pred": p, "gold": g}
                           for i, o, p, g in list(zip(idx, outputs, preds, golds))[:3]]},
        ids=[str(i) for i in idx], correct=correct,
    )


# ----------------------------------------------------------------------------------------------
# entry points


def evaluate_capability(model: Any, tokenizer: Any, tasks: Sequence[str] | str = ("arc_challenge",), *,
                        n: int | None = 200, k_shot: int | Mapping[str, int] | None = None, seed: int = 0,
                        batch_size: int = 8, interventions: Any = None, progress: bool = True,
                        **kwargs: Any) -> dict[str, CapabilityResult]:
    """Run registered benchmarks (:data:`BENCHMARKS`): ``{task: CapabilityResult}``.

    ``n`` questions per task (seeded subsample; ``None`` = all), ``k_shot`` one number for every task or
    ``{task: k}`` (default: the task's ``default_k_shot``: 0 for the MC tasks, 8 for GSM8K).
    ``interventions`` are active during every task. Extra keyword arguments go to every runner
    (e.g. ``data_dir``, ``cache``/``model_key`` for GSM8K)."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    for name in names:
        BENCHMARKS.entry(name)  # unknown names fail before any work
    out: dict[str, CapabilityResult] = {}
    for name in names:
        entry = BENCHMARKS.entry(name)
        out[name] = entry.target(model, tokenizer, n=n, k_shot=resolve_k_shot(name, k_shot), seed=seed,
                                 batch_size=batch_size,
                                 interventions=interventions, progress=progress, **kwargs)
    return out


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], interventions: Any = None, *,
               batch_size: int = 8, max_length: int | None = None, progress: bool = False) -> float:
    """Token-weighted perplexity ``exp(sum NLL / number of predicted tokens)`` over ``texts``.

    Each text is tokenized with the tokenizer's default special tokens and truncated to ``max_length``
    (default: the model's context length); every token after the first is predicted from its prefix."""
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        raise ConfigError("perplexity(texts=...) expects a list of strings, not one string.")
    max_len = int(max_length or _max_length(model))
    encoded = [list(tokenizer(t)["input_ids"])[:max_len] for t in texts]
    encoded = [e for e in encoded if len(e) >= 2]
    if not encoded:
        raise DataError("perplexity needs at least one text of two or more tokens.")
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with _context_manager(model, interventions), torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc="perplexity", file=sys.stderr,
                          disable=not progress, leave=False):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            width = max(len(e) for e in batch)
            ids = torch.full((len(batch), width), int(pad), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, e in enumerate(batch):
                ids[b, : len(e)] = torch.tensor(e, dtype=torch.long)
                mask[b, : len(e)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            keep = mask[:, 1:].bool().to(logits.device)
            target = ids[:, 1:].to(logits.device)[keep]
            nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), target, reduction="sum")
            total_nll += float(nll)
            total_tokens += int(keep.sum())
    return math.exp(total_nll / total_tokens)


__all__ = [
    "BENCHMARKS", "CapabilityResult", "MCDoc", "MCScores", "arc_docs", "encode_pair", "evaluate_arc",
    "evaluate_capability", "evaluate_gsm8k", "evaluate_hellaswag", "evaluate_mmlu", "extract_gsm8k_answer",
    "gsm8k_prefix", "hellaswag_docs", "hellaswag_preprocess", "loglikelihoods", "mean_stderr", "mmlu_docs",
    "normalize_number", "perplexity", "question_id", "question_key", "score_multiple_choice", "scored_keys",
    "split_indices", "subsample",
]
