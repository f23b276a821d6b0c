"""Prompt sets: loading from CSV / JSONL / TXT files, deterministic splits and de-duplication.

Errors name the file and the row. Splits are decided per prompt by a seeded hash of its normalised
text, so they do not depend on file order, and identical prompts always land on the same side."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from safeneurons.errors import DataError
from safeneurons.io import sha256_file, sha256_text

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
    opener: Callable[..., Any]
    if p.suffix == ".gz":
        import gzip

        opener = lambda: gzip.open(p, "rt", encoding="utf-8")  # noqa: E731
    else:
        opener = lambda: open(p, encoding="utf-8", newline="")  # noqa: E731
    try:
        with opener() as fh:
            if suffix.startswith(".csv"):
                reader = csv.DictReader(fh)
                for i, row in enumerate(reader, start=2):  # row 1 is the header
                    prompts.append(_row_prompt(p, i, row, column, response_column))
            elif suffix.startswith(".jsonl"):
                for i, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{p} line {i}: invalid JSON ({exc.msg}).") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{p} line {i}: expected a JSON object, got {type(row).__name__}.")
                    prompts.append(_row_prompt(p, i, row, column, response_column))
            elif suffix.startswith(".txt"):
                for i, line in enumerate(fh, start=1):
                    if line.strip():
                        prompts.append(Prompt(text=line.strip(), id=str(i), source=str(p)))
            else:
                raise DataError(f"{p}: unsupported prompt file type {suffix!r}; use .csv, .jsonl or .txt.")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except csv.Error as exc:
        raise DataError(f"{p}: malformed CSV ({exc}).") from None
    if not prompts:
        raise DataError(f"{p}: no prompts found (the file is empty).")
    return PromptSet(name or p.stem, prompts, origin=str(p), sha256="sha256:" + sha256_file(p))
