"""A small generic registry (the shape of lm-eval's ``Registry``): one record per entry, decorator
registration, duplicate names refused, unknown names answered with suggestions."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from safeneurons.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: T
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named entries of one kind (``what`` is used in messages, e.g. ``"identification method"``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, summary: str = "", **meta: Any) -> Callable[[T], T]:
        def deco(target: T) -> T:
            self.add(name, target, summary=summary, **meta)
            return target

        return deco

    def add(self, name: str, target: T, summary: str = "", **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(
                f"{self.what} {name!r} is already registered ({self._entries[name].target!r}); "
                f"refusing to replace it with {target!r}"
            )
        if not summary:
            doc = getattr(target, "__doc__", None) or ""
            summary = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[name] = Entry(name, target, summary, dict(meta))

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"Unknown {self.what} {name!r}.{hint} Available: {', '.join(sorted(self._entries))}."
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[k] for k in sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
