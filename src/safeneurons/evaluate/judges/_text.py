"""Text helpers shared by the phrase judge and the degenerate-output detector: Unicode normalisation
that keeps phrase matching stable across typing conventions, word-character tests that understand
combining marks (Bengali vowel signs, Arabic harakat, Thai tone marks), and sentence boundaries."""

from __future__ import annotations

import re
import unicodedata

NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my"})
"""Languages written without spaces between words: phrases are matched as substrings, units are characters."""

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u0060": "'", "\u00b4": "'"})
_COMMAS = re.compile(r"[,\u060c\u3001\uff0c]")
_ARABIC_MARKS = re.compile(r"[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_ARABIC_LETTERS = str.maketrans(
    {"\u0623": "\u0627", "\u0625": "\u0627", "\u0622": "\u0627", "\u0671": "\u0627", "\u0649": "\u064a"}
)
_HSPACE = re.compile(r"[^\S\n]+")
_NEWLINES = re.compile(r"\s*\n\s*")


def is_word_char(ch: str) -> bool:
    """Letters, digits, underscore and combining marks (category M*).

    Python's ``\\w`` treats combining marks as non-word characters, so ``\\b`` fires inside Bengali or Hindi
    words (before a vowel sign); this test does not."""
    return ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M")


def is_letter(ch: str) -> bool:
    """Alphabetic characters and combining marks (the letters of a word in any script)."""
    return ch.isalpha() or unicodedata.category(ch).startswith("M")


def normalize(text: str, language: str = "en") -> str:
    """Normalise for phrase matching: NFKC (full-width forms to ASCII, composed Vietnamese diacritics),
    case-fold, typographic apostrophes to ``'``, commas of any script dropped, runs of spaces collapsed
    (newlines kept); Arabic loses harakat/tatweel and has alef/yeh variants unified; languages without
    spaces (:data:`NO_SPACE_LANGUAGES`) lose horizontal whitespace entirely.

    The same function is applied to phrases and responses, so offsets refer to the normalised text."""
    t = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    if language == "ar":
        t = _ARABIC_MARKS.sub("", t).translate(_ARABIC_LETTERS)
    t = _COMMAS.sub(" ", t)
    if language in NO_SPACE_LANGUAGES:
        t = _HSPACE.sub("", t)
    else:
        t = _HSPACE.sub(" ", t)
    t = _NEWLINES.sub("\n", t)
    return t.strip()


def normalize_light(text: str) -> str:
    """NFKC, case-fold, typographic apostrophes, runs of spaces collapsed; punctuation (commas included) is kept.

    Used by the degenerate-output checks, which count punctuation."""
    t = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    return _NEWLINES.sub("\n", _HSPACE.sub(" ", t)).strip()


# A sentence ends at . ! ? ; … followed by whitespace, at a CJK/Arabic/Bengali terminator, or at a newline.
_SENTENCE_END = re.compile(
    r"(?:[.!?;\u2026]+[\"'\u201d)\]]*(?=\s|$))|[\u3002\uff01\uff1f\u061f\u06d4\u0964\u0965]+|\n+"
)


def sentence_ends(text: str) -> list[int]:
    """Offsets just after each sentence end in ``text`` (the last is ``len(text)`` when text continues)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] < len(text):
        ends.append(len(text))
    return ends


def head_end(text: str, max_sentences: int | None, max_chars: int | None) -> int:
    """End offset of the head of ``text``: the first ``max_sentences`` sentences, cut at ``max_chars``.

    ``None`` lifts that limit."""
    end = len(text)
    if max_sentences is not None:
        ends = sentence_ends(text)
        end = ends[min(max_sentences, len(ends)) - 1] if max_sentences > 0 else 0
    if max_chars is not None:
        end = min(end, max_chars)
    return end


def units(text: str, language: str) -> list[str]:
    """Words (runs of word characters) or, for languages without spaces, single letters."""
    if language in NO_SPACE_LANGUAGES:
        return [ch for ch in text if is_letter(ch) or ch.isdigit()]
    out: list[str] = []
    cur: list[str] = []
    for ch in text:
        if is_word_char(ch) or (ch == "'" and cur):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out
