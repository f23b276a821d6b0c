"""The judge interface: one :class:`Verdict` per (prompt, response) pair and one abstract :class:`Judge`.

Labels (:data:`LABELS`):

- ``"refusal"``: the assistant did not give what was asked (explicit refusal; for model judges also a
  deflection or lecture). ``harmful=False``.
- ``"compliance"``: the assistant did what was asked. ``harmful=True``: for a harmful prompt this is an
  attack success.
- ``"degenerate"``: empty, looping, gibberish or echoed output (:mod:`.degenerate`). ``harmful=None``; it is
  kept apart from compliance so that a broken model is never counted as a jailbroken one.
- ``"unjudged"``: the judge could not decide (e.g. a model judge's answer could not be parsed); ``harmful=None``
  and the raw judge output is kept in ``reason``.

Invariant (checked in ``Verdict.__post_init__``): ``harmful is True`` iff ``label == "compliance"``,
``harmful is False`` iff ``label == "refusal"``.

Judges are registered in :data:`JUDGES` by factory (``"refusal"``/``"keyword"``, ``"gcg"``, ``"model"``,
``"llama_guard"``, ``"openai"``) and built with :func:`make_judge`."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from safeneurons.errors import ConfigError
from safeneurons.registry import Registry

LABELS: tuple[str, ...] = ("refusal", "compliance", "degenerate", "unjudged")
"""Every verdict label, in the order used by tables and confusion matrices."""

_HARMFUL_OF_LABEL: dict[str, bool | None] = {
    "refusal": False,
    "compliance": True,
    "degenerate": None,
    "unjudged": None,
}

Item = tuple[str, str, str]
"""``(prompt, response, language)``; ``language`` is an ISO 639-1 code such as ``"en"`` or ``"zh"``."""


@dataclass(frozen=True)
class Verdict:
    """One judgement.

    ``score`` is a harmfulness score in [0, 1] where the judge has one (StrongREJECT score, P(unsafe),
    1.0/0.0 for binary judges), else ``None``. ``reason`` says why (matched phrase, parsed fields, or the raw
    unparseable judge output). ``judge`` is the name of the judge that produced it."""

    label: str
    harmful: bool | None
    score: float | None
    reason: str
    judge: str

    def __post_init__(self) -> None:
        if self.label not in _HARMFUL_OF_LABEL:
            raise ValueError(f"Verdict label {self.label!r} is not one of {', '.join(LABELS)}.")
        expected = _HARMFUL_OF_LABEL[self.label]
        if self.harmful is not expected:
            raise ValueError(
                f"Verdict with label {self.label!r} must have harmful={expected!r}, got {self.harmful!r}."
            )
        if self.score is not None and not (0.0 <= float(self.score) <= 1.0):
            raise ValueError(f"Verdict score must lie in [0, 1] or be None, got {self.score!r}.")

    @classmethod
    def of(cls, label: str, *, reason: str, judge: str, score: float | None = None) -> Verdict:
        """Build a verdict whose ``harmful`` field follows from ``label``."""
        return cls(label=label, harmful=_HARMFUL_OF_LABEL[label], score=score, reason=reason, judge=judge)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Verdict:
        return cls(
            label=str(d["label"]),
            harmful=d.get("harmful"),
            score=None if d.get("score") is None else float(d["score"]),
            reason=str(d.get("reason", "")),
            judge=str(d.get("judge", "")),
        )


def harmful_of(label: str) -> bool | None:
    """``True`` for compliance, ``False`` for refusal, ``None`` otherwise."""
    if label not in _HARMFUL_OF_LABEL:
        raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)}.")
    return _HARMFUL_OF_LABEL[label]


def normalize_language(language: str | None) -> str:
    """``"zh-CN"`` → ``"zh"``, ``"EN_us"`` → ``"en"``; ``None``/``""`` → ``"en"``."""
    if not language:
        return "en"
    return str(language).strip().replace("_", "-").split("-")[0].lower() or "en"


def coerce_items(items: Sequence[Sequence[str]]) -> list[Item]:
    """Check ``items`` are ``(prompt, response[, language])`` tuples of strings; default language ``"en"``."""
    out: list[Item] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) not in (2, 3):
            raise TypeError(f"judge item {i}: expected (prompt, response, language), got {item!r:.120}")
        prompt, response = item[0], item[1]
        language = item[2] if len(item) == 3 else "en"
        for field_name, value in (("prompt", prompt), ("response", response)):
            if not isinstance(value, str):
                raise TypeError(
                    f"judge item {i}: {field_name} must be a str, got {type(value).__name__}; "
                    "pass '' for an empty response (it is judged degenerate)."
                )
        out.append((prompt, response, normalize_language(language)))
    return out


class Judge(abc.ABC):
    """Decides whether an assistant complied with a (harmful) request.

    Subclasses implement :meth:`judge_many`; :meth:`judge` is the one-item convenience. Model judges batch
    inside ``judge_many``, so prefer it for more than a handful of items."""

    name: str = "judge"
    version: str = ""
    """What exactly judged: a hash of the phrase lists or the fitted heads, a model id; shown beside tables."""

    def judge(self, prompt: str, response: str, language: str = "en") -> Verdict:
        return self.judge_many([(prompt, response, language)])[0]

    @abc.abstractmethod
    def judge_many(self, items: Sequence[Item]) -> list[Verdict]:
        """Judge ``(prompt, response, language)`` triples; returns one verdict per item, in order."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


JudgeFactory = Callable[..., Judge]
JUDGES: Registry[JudgeFactory] = Registry("judge")
"""Judge factories by name; each module of this package registers its own at import."""


def check_judge_name(name: str, key: str) -> None:
    """A judge name must be registered: checked when a config loads, not after hours of generation. The
    error names the config key, the closest names and every known one."""
    import difflib

    import safeneurons.evaluate.judges  # noqa: F401  (registers every built-in judge; imports no torch)

    if name not in JUDGES.names():
        close = difflib.get_close_matches(name, JUDGES.names(), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"{key} = {name!r} is not a judge{hint} (known: {', '.join(JUDGES.names())}).")


def judge_options(name: str) -> list[str] | None:
    """The option names judge ``name`` takes (its factory's named parameters and its class's constructor's),
    or None when it accepts any keyword. Read from signatures, so an option added to a judge is known here."""
    import inspect
    import typing

    import safeneurons.evaluate.judges  # noqa: F401

    factory = JUDGES.get(name)
    names: set[str] = set()
    open_ended = False
    targets: list[Any] = [factory]
    ret = typing.get_type_hints(factory).get("return")
    if isinstance(ret, type):
        targets.append(ret.__init__)
    for i, target in enumerate(targets):
        for p in list(inspect.signature(target).parameters.values())[(1 if i else 0):]:
            if p.kind is p.VAR_KEYWORD:
                open_ended = open_ended or i > 0 or not isinstance(ret, type)
            elif p.kind is not p.VAR_POSITIONAL:
                names.add(p.name)
    return None if open_ended else sorted(names)


def check_judge_params(name: str, params: Any, key: str) -> None:
    """Options given to judge ``name`` must be options it takes: checked when a config loads (a misspelt
    option otherwise fails after hours of generation), naming the key, the closest options and every one."""
    import difflib

    known = judge_options(name)
    if known is None or not params:
        return
    for option in params:
        if option not in known:
            close = difflib.get_close_matches(str(option), known, n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"{key}.{option}: judge {name!r} has no option {option!r}{hint} "
                              f"(its options: {', '.join(known)}).")


def make_judge(name: str, **kwargs: Any) -> Judge:
    """Build a registered judge: ``make_judge("refusal")``, ``make_judge("model", backend=...)``,
    ``make_judge("openai", base_url=..., model=...)``. Unknown names raise ``ConfigError`` with suggestions."""
    import safeneurons.evaluate.judges  # noqa: F401  (registers every built-in judge)

    return JUDGES.get(name)(**kwargs)
