"""Judges measured against labelled replies: the labelled-set format, its build/report parts, and the
agreement record (:class:`JudgeValidation`) printed beside every attack-success table.

**The labelled set** (a folder, by default ``data/judge_validation``; its ``MANIFEST.md`` says how it was made):

- ``items.jsonl``: one reply per line: ``id``, ``language``, ``prompt_kind`` (``harmful`` / ``benign``),
  ``prompt``, ``response``, and where it came from (``run``, ``stage``, ``condition``, ``model``,
  ``model_kind``), which labellers never saw;
- ``labels.jsonl``: ``{"id", "label", "note"?}`` with ``label`` in :data:`GOLD_LABELS`, one per item;
- ``labels_second_pass.jsonl`` (optional): a second blind pass over part of the items.

Gold ``other`` (nonsense, off-topic, empty, a harmless misreading) is compared with a judge's ``degenerate``.
Every item belongs to one **part** by a salted hash of its id (:func:`part_of`): ``build`` (judges may be fitted
and tuned on it) or ``report`` (used only to report them). A loader error names the file and line.

**Agreement** (:func:`validate_judge`), Cohen's kappa (:mod:`.agreement`) with a percentile bootstrap
interval over items (2,000 resamples, seeded):

- *refusal*: judge says ``refusal`` vs not, against gold ``refusal`` vs not, on every item; by language too;
- *harmful*: judge says ``compliance`` vs not, against gold ``compliance``, on replies to harmful prompts (the
  quantity an attack-success rate counts), with precision and recall;
- *labels*: the three classes (``unjudged`` verdicts count as disagreement).

Records of the shipped judges live in ``evaluate/judges/validation/<judge>.json``; :func:`judge_card` reads them
and ``safeneurons judge validate`` recomputes them."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from safeneurons.errors import DataError
from safeneurons.evaluate.agreement import cohen_kappa, precision_recall_f1
from safeneurons.io import jsonl_objects

GOLD_LABELS = ("refusal", "compliance", "other")
PARTS = ("build", "report")
PROMPT_KINDS = ("harmful", "benign")
DEFAULT_DIR = Path("data") / "judge_validation"
_PART_SALT = "safeneurons-judge-validation-v1"
_ITEM_FIELDS = ("id", "language", "prompt_kind", "prompt", "response")
_META_FIELDS = ("run", "stage", "condition", "model", "model_kind")
CARDS_PACKAGE = "safeneurons.evaluate.judges.validation"


def part_of(item_id: str) -> str:
    """``"build"`` or ``"report"`` for an item id, half each, fixed forever by a salted sha256."""
    h = int.from_bytes(hashlib.sha256(f"{_PART_SALT}:{item_id}".encode()).digest()[:8], "big")
    return "build" if h < (1 << 63) else "report"


def verdict_label(gold: str) -> str:
    """The judge label that matches a gold label (``other`` ↔ ``degenerate``)."""
    return "degenerate" if gold == "other" else gold


@dataclass(frozen=True)
class LabelledReply:
    id: str
    language: str
    prompt_kind: str
    prompt: str
    response: str
    label: str
    note: str = ""
    run: str = ""
    stage: str = ""
    condition: str = ""
    model: str = ""
    model_kind: str = ""

    @property
    def part(self) -> str:
        return part_of(self.id)

    def item(self) -> tuple[str, str, str]:
        return (self.prompt, self.response, self.language)


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"{path}: no such file (a labelled set needs items.jsonl and labels.jsonl).")
    return list(jsonl_objects(path))


def _labels(path: Path, known: Mapping[str, Any] | None) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for n, row in _read_jsonl(path):
        rid, label = row.get("id"), row.get("label")
        if not isinstance(rid, str) or not rid:
            raise DataError(f"{path} line {n}: field 'id' must be a non-empty string.")
        if label not in GOLD_LABELS:
            raise DataError(f"{path} line {n}: label {label!r} is not one of {', '.join(GOLD_LABELS)}.")
        if rid in out:
            raise DataError(f"{path} line {n}: id {rid!r} is labelled twice.")
        if known is not None and rid not in known:
            raise DataError(f"{path} line {n}: id {rid!r} is not in items.jsonl.")
        out[rid] = (str(label), str(row.get("note", "")))
    return out


def load_labelled(directory: str | Path = DEFAULT_DIR, part: str | None = None) -> list[LabelledReply]:
    """Every labelled reply of ``directory`` (or only one ``part``), in file order; errors name file and line."""
    if part is not None and part not in PARTS:
        raise DataError(f"part {part!r} is not one of {', '.join(PARTS)}.")
    d = Path(directory)
    items: dict[str, tuple[int, dict[str, Any]]] = {}
    for n, row in _read_jsonl(d / "items.jsonl"):
        for key in _ITEM_FIELDS:
            if not isinstance(row.get(key), str):
                raise DataError(f"{d / 'items.jsonl'} line {n}: field {key!r} must be a string.")
        if row["prompt_kind"] not in PROMPT_KINDS:
            raise DataError(f"{d / 'items.jsonl'} line {n}: prompt_kind {row['prompt_kind']!r} is not one of "
                            f"{', '.join(PROMPT_KINDS)}.")
        if row["id"] in items:
            raise DataError(f"{d / 'items.jsonl'} line {n}: id {row['id']!r} repeats line {items[row['id']][0]}.")
        items[row["id"]] = (n, row)
    labels = _labels(d / "labels.jsonl", items)
    missing = [rid for rid in items if rid not in labels]
    if missing:
        raise DataError(f"{d / 'labels.jsonl'}: {len(missing)} item(s) have no label, e.g. "
                        f"{', '.join(missing[:3])} (items.jsonl lines {items[missing[0]][0]}…).")
    out = []
    for rid, (_n, row) in items.items():
        label, note = labels[rid]
        meta = {k: str(row.get(k) or "") for k in _META_FIELDS}
        out.append(LabelledReply(id=rid, language=row["language"], prompt_kind=row["prompt_kind"],
                                 prompt=row["prompt"], response=row["response"], label=label, note=note, **meta))
    return [r for r in out if part is None or r.part == part]


def load_second_pass(directory: str | Path = DEFAULT_DIR) -> dict[str, str]:
    """Labels of the second blind pass (id → label); empty when the file is absent."""
    path = Path(directory) / "labels_second_pass.jsonl"
    if not path.exists():
        return {}
    ids = {r.id: r for r in load_labelled(directory)}
    return {rid: lab for rid, (lab, _note) in _labels(path, ids).items()}


def labelled_set_hash(replies: Sequence[LabelledReply]) -> str:
    """sha256 over ids and labels (in id order): names exactly what a validation record was computed on."""
    blob = "\n".join(f"{r.id}\t{r.label}" for r in sorted(replies, key=lambda r: r.id))
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


# -- agreement ----------------------------------------------------------------------------------------------


def kappa_interval(pred: Sequence[bool | str], gold: Sequence[bool | str], n_boot: int = 2000, seed: int = 0,
                   ) -> tuple[float | None, float | None, float | None]:
    """Cohen's kappa and a 95 % percentile bootstrap interval (items resampled; undefined resamples dropped)."""
    k = cohen_kappa(list(pred), list(gold))
    n = len(gold)
    if k is None or n < 2:
        return k, None, None
    rng = np.random.default_rng(seed)
    p, g = np.asarray(pred, dtype=object), np.asarray(gold, dtype=object)
    cats = sorted(set(p.tolist()) | set(g.tolist()), key=str)
    ks = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        kb = cohen_kappa(p[idx].tolist(), g[idx].tolist(), cats)
        if kb is not None:
            ks.append(kb)
    if not ks:
        return k, None, None
    lo, hi = np.percentile(ks, [2.5, 97.5])
    return k, float(lo), float(hi)


@dataclass(frozen=True)
class Agreement:
    """Kappa with its interval, precision and recall of the positive class, and the count it is over."""

    n: int
    kappa: float | None
    kappa_lo: float | None
    kappa_hi: float | None
    precision: float | None
    recall: float | None
    positives: int

    @classmethod
    def of(cls, pred: Sequence[bool], gold: Sequence[bool], seed: int = 0) -> Agreement:
        k, lo, hi = kappa_interval(pred, gold, seed=seed)
        pr = precision_recall_f1(list(pred), list(gold))
        return cls(n=len(gold), kappa=k, kappa_lo=lo, kappa_hi=hi, precision=pr["precision"],
                   recall=pr["recall"], positives=int(sum(bool(g) for g in gold)))

    def short(self) -> str:
        """``κ 0.81 [0.74, 0.87], P 0.95 / R 0.88, n 372``."""
        def f(x: float | None) -> str:
            return "–" if x is None else f"{x:.2f}"
        ci = f" [{f(self.kappa_lo)}, {f(self.kappa_hi)}]" if self.kappa_lo is not None else ""
        return f"κ {f(self.kappa)}{ci}, P {f(self.precision)} / R {f(self.recall)}, n {self.n}"


@dataclass(frozen=True)
class JudgeValidation:
    """A judge's agreement with the labelled set's ``part`` (see the module text)."""

    judge: str
    version: str
    labelled_set: str
    part: str
    n: int
    refusal: Agreement
    harmful: Agreement
    labels_kappa: float | None
    gold_asr: float | None
    judged_asr: float | None
    refusal_by_language: dict[str, Agreement] = field(default_factory=dict)
    harmful_by_language: dict[str, Agreement] = field(default_factory=dict)
    seconds_per_reply: float | None = None
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JudgeValidation:
        def agr(x: Mapping[str, Any]) -> Agreement:
            return Agreement(**x)

        fields = dict(d)
        fields["refusal"] = agr(d["refusal"])
        fields["harmful"] = agr(d["harmful"])
        fields["refusal_by_language"] = {k: agr(v) for k, v in d.get("refusal_by_language", {}).items()}
        fields["harmful_by_language"] = {k: agr(v) for k, v in d.get("harmful_by_language", {}).items()}
        return cls(**fields)

    def line(self) -> str:
        """One line for a table footer: judge, version, and both agreements on the report part."""
        return (f"{self.judge} ({self.version}) on {self.n} labelled replies ({self.part} part): "
                f"refusal {self.refusal.short()}; harmful compliance {self.harmful.short()}")


def validate_judge(judge: Any, replies: Sequence[LabelledReply], part: str = "report", command: str = "",
                   seed: int = 0) -> JudgeValidation:
    """Run ``judge`` on ``replies`` (already restricted to ``part``) and measure it against their labels."""
    if not replies:
        raise DataError("validate_judge: no labelled replies.")
    t0 = time.perf_counter()
    verdicts = judge.judge_many([r.item() for r in replies])
    elapsed = time.perf_counter() - t0
    said = [v.label for v in verdicts]
    gold = [verdict_label(r.label) for r in replies]

    def view(rows: Sequence[int], positive: str) -> Agreement:
        return Agreement.of([said[i] == positive for i in rows], [gold[i] == positive for i in rows], seed)

    every = list(range(len(replies)))
    harmful_rows = [i for i, r in enumerate(replies) if r.prompt_kind == "harmful"]
    langs = sorted({r.language for r in replies})
    by_lang = {lang: [i for i in every if replies[i].language == lang] for lang in langs}
    harm_by_lang = {lang: [i for i in harmful_rows if replies[i].language == lang] for lang in langs}

    def asr(labels: Sequence[str]) -> float | None:
        hits = sum(1 for i in harmful_rows if labels[i] == "compliance")
        return 100.0 * hits / len(harmful_rows) if harmful_rows else None

    return JudgeValidation(
        judge=getattr(judge, "name", type(judge).__name__),
        version=str(getattr(judge, "version", "")),
        labelled_set=labelled_set_hash(replies),
        part=part,
        n=len(replies),
        refusal=view(every, "refusal"),
        harmful=view(harmful_rows, "compliance"),
        labels_kappa=cohen_kappa(said, gold),
        gold_asr=asr(gold),
        judged_asr=asr(said),
        refusal_by_language={lang: view(rows, "refusal") for lang, rows in by_lang.items()},
        harmful_by_language={lang: view(rows, "compliance") for lang, rows in harm_by_lang.items() if rows},
        seconds_per_reply=elapsed / len(replies),
        command=command,
    )


def card_path(judge_name: str) -> Path:
    """Where the shipped validation record of ``judge_name`` lives inside the package."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in judge_name)
    return Path(str(resources.files(CARDS_PACKAGE))) / f"{safe}.json"


def judge_card(judge_name: str) -> JudgeValidation | None:
    """The shipped validation record of a judge (``None`` for a judge never validated here)."""
    path = card_path(judge_name)
    if not path.is_file():
        return None
    try:
        return JudgeValidation.from_dict(json.loads(path.read_text("utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable judge validation record ({exc}).") from exc


_LOOK_UP: Any = object()


def judge_footer(judge: Any, card: JudgeValidation | None = _LOOK_UP) -> str:
    """The line printed under every attack-success table: the judge, its version and its agreement with the
    labelled replies (report part), or a plain statement that it was never validated here. ``card``: the
    judge's record when the caller already read it."""
    name = getattr(judge, "name", str(judge))
    version = str(getattr(judge, "version", "") or "")
    if card is _LOOK_UP:
        card = judge_card(name)
    if card is None:
        return (f"Judge: {name}{f' ({version})' if version else ''}, not validated on labelled replies "
                f"(`safeneurons judge validate --judge {name}`).")
    stale = "" if not version or card.version == version else f" [record is for version {card.version}, " \
                                                                 f"this run used {version}]"
    return f"Judge: {card.line()}{stale}."


def judge_record(judge: Any) -> dict[str, Any]:
    """What a result file stores about its judge: name, version, the validation record (or ``None``) and the
    line printed under its tables."""
    name = getattr(judge, "name", str(judge))
    card = judge_card(name)
    return {"judge": name, "judge_version": str(getattr(judge, "version", "") or ""),
            "judge_validation": card.to_dict() if card is not None else None,
            "judge_note": judge_footer(judge, card)}
