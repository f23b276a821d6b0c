"""Prompt sets: loading from CSV / JSONL / TXT files, deterministic splits and de-duplication.

Errors name the file and the row. Splits are decided per prompt by a seeded hash of its normalised
text, so they do not depend on file order, and identical prompts always land on the same side.

Evaluation sets are cut once more, into a ``dev`` half (choosing recipes) and a sealed ``test`` half
(:func:`split_of`): by a hash with a fixed salt, never the run seed, so no setting moves a prompt across;
prompts already scored in published runs (``burned.json``) are always dev."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from safeneurons.errors import DataError
from safeneurons.io import csv_records, jsonl_objects, read_text_maybe_gz, sha256_file, sha256_text

TEXT_FIELDS = ("prompt", "forbidden_prompt", "instruction", "text", "question", "Behavior", "goal")
CATEGORY_FIELDS = ("category", "SemanticCategory", "risk_area", "harm_category")


@dataclass(frozen=True)
class Prompt:
    text: str
    id: str = ""
    category: str = ""
    language: str = "en"
    source: str = ""
    response: str | None = None
    meta: tuple[tuple[str, str], ...] = ()


@dataclass
class PromptSet:
    """A named list of prompts with where it came from and a content hash."""

    name: str
    prompts: list[Prompt]
    origin: str = ""
    sha256: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sha256:
            self.sha256 = content_hash(self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)

    def texts(self) -> list[str]:
        return [p.text for p in self.prompts]

    def responses(self) -> list[str | None]:
        return [p.response for p in self.prompts]

    def derive(self, name: str, prompts: list[Prompt], note: str) -> "PromptSet":
        return PromptSet(name, prompts, origin=self.origin, notes=[*self.notes, note])

    def filter(self, pred: Callable[[Prompt], bool], note: str = "filtered") -> "PromptSet":
        return self.derive(self.name, [p for p in self.prompts if pred(p)], note)

    def head(self, n: int | None) -> "PromptSet":
        if n is None or n >= len(self):
            return self
        return self.derive(self.name, self.prompts[:n], f"first {n}")

    def sample(self, n: int | None, seed: int = 0) -> "PromptSet":
        """Deterministic sample of ``n`` prompts (by seeded hash order, stable under reordering)."""
        if n is None or n >= len(self):
            return self
        ranked = sorted(self.prompts, key=lambda p: _hash_key(p.text, seed, "sample"))
        return self.derive(self.name, ranked[:n], f"sample {n} seed {seed}")

    def with_language(self, language: str) -> "PromptSet":
        return self.derive(self.name, [replace(p, language=language) for p in self.prompts], f"language={language}")

    def categories(self) -> list[str]:
        return sorted({p.category for p in self.prompts if p.category})

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "origin": self.origin, "n": len(self), "sha256": self.sha256, "notes": self.notes}


def normalise(text: str) -> str:
    """Lower-case, NFKC, collapse whitespace and strip surrounding punctuation (for de-duplication)."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = re.sub(r"\s+", " ", t).strip()
    return t.strip(" .!?;:\"'")


def content_hash(prompts: Iterable[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.text.encode("utf-8"))
        h.update(b"\x00")
        h.update((p.response or "").encode("utf-8"))
        h.update(b"\x01")
    return "sha256:" + h.hexdigest()


def _hash_key(text: str, seed: int, salt: str) -> str:
    return sha256_text(f"{salt}:{seed}:{normalise(text)}")


# evaluation dev / test split -------------------------------------------------------------------
SPLIT_SALT = "safeneurons-eval-split-v1"  # fixed forever: a new salt would reshuffle the sealed half
TEST_FRACTION = 0.5
EVAL_SPLITS = ("dev", "test", "all")
BURNED_FILE = Path(__file__).with_name("burned.json")


def burned_hash(key: str) -> str:
    """The ``burned.json`` entry of an evaluation item's key: the sha256 of its normalised key."""
    return sha256_text(normalise(key))


@lru_cache(maxsize=1)
def burned_hashes() -> frozenset[str]:
    """The hashes in the shipped ``burned.json``: items scored in published runs (data/build_burned.py)."""
    try:
        data = json.loads(BURNED_FILE.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{BURNED_FILE}: cannot read the burned-prompt list ({exc}); reinstall the package "
                        "or rebuild it with data/build_burned.py.") from None
    hashes = data.get("hashes") if isinstance(data, dict) else None
    if not isinstance(hashes, list) or not all(isinstance(h, str) and len(h) == 64 for h in hashes):
        raise DataError(f"{BURNED_FILE}: expected an object whose 'hashes' is a list of sha256 hex digests.")
    return frozenset(hashes)


def split_of(key: str) -> str:
    """``"dev"`` or ``"test"`` for the evaluation item ``key`` (see :func:`item_key`: a prompt's text, a
    MultiJail row id, ``"<task>:<question id>"`` for capability questions).

    Guarantees: the side depends on ``normalise(key)``, :data:`SPLIT_SALT` and ``burned.json`` only, never on
    a seed, a sample size, an order or the process, so the same key always lands on the same side; an item
    whose key is in ``burned.json`` is ``dev``; any other is ``test`` when the first 32 bits of
    ``sha256(SPLIT_SALT:normalised key)`` fall below ``TEST_FRACTION * 2**32``."""
    k = normalise(key)
    if sha256_text(k) in burned_hashes():
        return "dev"
    return "test" if int(sha256_text(f"{SPLIT_SALT}:{k}")[:8], 16) < int(TEST_FRACTION * 2**32) else "dev"


def item_key(p: Prompt, by: str = "text") -> str:
    """The key :func:`split_of` reads for a prompt: its text (``by="text"``; identical prompts share a side)
    or its dataset id (``by="id"``: every language version of a MultiJail row shares its side)."""
    if by not in ("text", "id"):
        raise DataError(f"item_key: by = {by!r}; expected 'text' or 'id'.")
    if by == "id" and not p.id:
        raise DataError(f"prompt {p.text[:40]!r} has no id to split by; split it by text.")
    return p.text if by == "text" else p.id


def split_hash(keys: Iterable[str]) -> str:
    """Identity of a set of evaluation items: sha256 over their sorted normalised keys (order-free)."""
    return "sha256:" + sha256_text("\n".join(sorted({normalise(k) for k in keys})))


def check_split(split: str, where: str = "split") -> str:
    if split not in EVAL_SPLITS:
        raise DataError(f"{where} = {split!r}; expected one of {', '.join(EVAL_SPLITS)}.")
    return split


def eval_split(ps: PromptSet, split: str, by: str = "text") -> PromptSet:
    """The prompts of ``ps`` on the ``split`` side (:func:`split_of` of :func:`item_key`); ``"all"`` returns
    ``ps`` itself. The result keeps the order of ``ps``; a later :meth:`PromptSet.sample` draws within it."""
    if check_split(split) == "all":
        return ps
    return ps.derive(ps.name, [p for p in ps.prompts if split_of(item_key(p, by)) == split], f"{split} split")


def dedupe(ps: PromptSet) -> PromptSet:
    seen: set[str] = set()
    out = []
    for p in ps.prompts:
        k = normalise(p.text)
        if k not in seen:
            seen.add(k)
            out.append(p)
    if len(out) == len(ps):
        return ps
    return ps.derive(ps.name, out, f"dedup removed {len(ps) - len(out)}")


def split(ps: PromptSet, eval_fraction: float, seed: int = 0) -> tuple[PromptSet, PromptSet]:
    """Deterministic (train, eval) split; duplicates by normalised text never straddle the split."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise DataError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    ps = dedupe(ps)
    cut = int(eval_fraction * 2**32)
    train, evl = [], []
    for p in ps.prompts:
        (evl if int(_hash_key(p.text, seed, "split")[:8], 16) < cut else train).append(p)
    return (ps.derive(f"{ps.name}[train]", train, f"split train seed {seed}"),
            ps.derive(f"{ps.name}[eval]", evl, f"split eval {eval_fraction} seed {seed}"))


def overlap(a: Sequence[Prompt] | PromptSet, b: Sequence[Prompt] | PromptSet) -> list[str]:
    """Texts of ``b`` that also occur in ``a`` (normalised comparison)."""
    keys = {normalise(p.text) for p in a}
    return [p.text for p in b if normalise(p.text) in keys]


def remove_overlap(keep_from: PromptSet, against: PromptSet) -> tuple[PromptSet, int]:
    keys = {normalise(p.text) for p in against}
    out = [p for p in keep_from.prompts if normalise(p.text) not in keys]
    n = len(keep_from) - len(out)
    if n == 0:
        return keep_from, 0
    return keep_from.derive(keep_from.name, out, f"removed {n} prompts shared with {against.name}"), n


# file loading -------------------------------------------------------------------------------
def _pick(row: dict[str, Any], fields: Sequence[str], explicit: str | None) -> str | None:
    if explicit:
        return explicit if explicit in row else None
    return next((f for f in fields if f in row), None)


def _row_prompt(path: Path, rownum: int, row: dict[str, Any], column: str | None,
                response_column: str | None) -> Prompt:
    col = _pick(row, TEXT_FIELDS, column)
    if col is None:
        want = repr(column) if column else " or ".join(repr(f) for f in TEXT_FIELDS[:4])
        raise DataError(f"{path} row {rownum}: no {want} field (fields: {', '.join(map(str, row))}).")
    text = row.get(col)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{path} row {rownum}: column {col!r} is empty; fill it or drop the row.")
    cat_col = _pick(row, CATEGORY_FIELDS, None)
    resp = None
    if response_column:
        if response_column not in row:
            raise DataError(f"{path} row {rownum}: no {response_column!r} field for responses.")
        resp = str(row[response_column])
    return Prompt(
        text=text.strip(), id=str(row.get("id", rownum)), category=str(row.get(cat_col, "") or "") if cat_col else "",
        language=str(row.get("language", "en") or "en"), source=str(path), response=resp,
    )


def load_prompt_file(path: str | Path, column: str | None = None, response_column: str | None = None,
                     name: str | None = None) -> PromptSet:
    """Load prompts from ``.csv`` (header row), ``.jsonl`` (one object per line) or ``.txt`` (one per line)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"prompt file {p} does not exist.")
    suffix = "".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix
    prompts: list[Prompt] = []
    if suffix.startswith(".csv"):
        for i, row in csv_records(p):
            prompts.append(_row_prompt(p, i, row, column, response_column))
    elif suffix.startswith(".jsonl"):
        for i, row in jsonl_objects(p):
            prompts.append(_row_prompt(p, i, row, column, response_column))
    elif suffix.startswith(".txt"):
        try:
            lines = read_text_maybe_gz(p).splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
        prompts = [Prompt(text=line.strip(), id=str(i), source=str(p)) for i, line in enumerate(lines, 1)
                   if line.strip()]
    else:
        raise DataError(f"{p}: unsupported prompt file type {suffix!r}; use .csv, .jsonl or .txt.")
    if not prompts:
        raise DataError(f"{p}: no prompts found (the file is empty).")
    return PromptSet(name or p.stem, prompts, origin=str(p), sha256="sha256:" + sha256_file(p))
