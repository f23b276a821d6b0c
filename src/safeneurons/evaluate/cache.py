"""A generation cache on stdlib ``sqlite3``: one row per (model, interventions, prompt, decoding) key.

The key is the sha256 of a canonical JSON list ``[model_key, interventions fingerprint, rendered prompt
text, decoding settings]`` (see :func:`cache_key`), so a different model checksum, neuron set, intervention
mode, chat template/system prompt or decoding setting never hits an old entry. Values are JSON (never
pickle). Every :meth:`GenerationCache.put_many` is one transaction and the database runs in WAL mode, so a
run that is interrupted keeps every batch it finished and never leaves a half-written row; the next run
only generates what is missing.

>>> cache = GenerationCache(tmp_path / "gen.sqlite")        # doctest: +SKIP
>>> texts = generate(model, tok, prompts, cfg, cache=cache, model_key=lm.checksum)  # doctest: +SKIP
>>> cache.stats()                                            # doctest: +SKIP
{'hits': 0, 'misses': 520, 'puts': 520, 'entries': 520, 'path': '...'}
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from safeneurons.errors import DataError

SCHEMA_VERSION = 1
DEFAULT_FILENAME = "generations.sqlite"


def cache_key(model_key: str, interventions_fingerprint: str, rendered_prompt: str,
              decoding: Mapping[str, Any]) -> str:
    """``sha256`` (hex) of ``[model_key, fingerprint, rendered prompt, decoding settings]`` as canonical JSON.

    ``decoding`` must be JSON-serialisable (sorted keys are used, so dict order does not matter)."""
    payload = json.dumps(
        [SCHEMA_VERSION, str(model_key), str(interventions_fingerprint), str(rendered_prompt), dict(decoding)],
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class GenerationCache:
    """Cached generations in one sqlite file (``path``; a directory gets ``generations.sqlite`` inside it;
    ``":memory:"`` keeps it in memory).

    A value is a JSON object with at least ``"text"`` (the decoded response) and any metadata
    (``n_new_tokens``, ``finish_reason``...). :meth:`stats` counts this object's hits and misses."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
        if str(path) == ":memory:":
            self.path: Path | None = None
            target = ":memory:"
        else:
            p = Path(path).expanduser()
            if p.is_dir() or str(path).endswith(os.sep):
                p = p / DEFAULT_FILENAME
            p.parent.mkdir(parents=True, exist_ok=True)
            self.path = p
            target = str(p)
        try:
            self._conn = sqlite3.connect(target, timeout=timeout, check_same_thread=False, isolation_level=None)
            if self.path is not None:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS generations ("
                " key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
            )
        except sqlite3.DatabaseError as exc:
            raise DataError(
                f"generation cache {target}: cannot open it as an sqlite database ({exc}); "
                "delete the file or pass another cache path."
            ) from exc
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.puts = 0

    # ------------------------------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{key: value}`` for the keys that are cached (missing keys are absent); counts hits/misses."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # stay below SQLITE_MAX_VARIABLE_NUMBER
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT key, value FROM generations WHERE key IN ({marks})", chunk)
                for key, value in rows:
                    try:
                        found[key] = json.loads(value)
                    except json.JSONDecodeError:  # a corrupt row is a miss; it is rewritten on the next put
                        continue
            self.hits += len(found)
            self.misses += len(wanted) - len(found)
        return found

    def put_many(self, items: Mapping[str, Mapping[str, Any]] | Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        """Store ``{key: value}`` (or ``(key, value)`` pairs) in one transaction; returns the number stored."""
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        rows = []
        now = time.time()
        for key, value in pairs:
            if not isinstance(value, Mapping) or "text" not in value:
                raise TypeError(f"generation cache value for key {key[:12]}… must be a mapping with a 'text' field")
            rows.append((str(key), json.dumps(dict(value), ensure_ascii=False, sort_keys=True), now))
        if not rows:
            return 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR REPLACE INTO generations (key, value, created) VALUES (?, ?, ?)",
                                       rows)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            self.puts += len(rows)
        return len(rows)

    def merge_from(self, other: str | os.PathLike[str]) -> int:
        """Add the entries of another cache file whose keys this one lacks (keys are content hashes, so an
        entry present in both is the same generation); one transaction. Returns the number added."""
        if self.path is not None and Path(other).resolve() == self.path.resolve():
            return 0
        with self._lock:
            before = self._conn.total_changes
            try:
                self._conn.execute("ATTACH DATABASE ? AS other", (str(other),))
            except sqlite3.DatabaseError as exc:
                raise DataError(f"generation cache {other}: cannot open it ({exc}).") from exc
            try:
                self._conn.execute("INSERT OR IGNORE INTO generations (key, value, created) "
                                   "SELECT key, value, created FROM other.generations")
            except sqlite3.DatabaseError as exc:
                raise DataError(f"generation cache {other}: cannot read its generations ({exc}).") from exc
            finally:
                self._conn.execute("DETACH DATABASE other")
            return self._conn.total_changes - before

    def __contains__(self, key: object) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM generations WHERE key = ?", (str(key),)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """``hits``/``misses``/``puts`` counted by this object, ``entries`` in the file, and its ``path``."""
        return {"hits": self.hits, "misses": self.misses, "puts": self.puts, "entries": len(self),
                "path": str(self.path) if self.path else ":memory:"}

    def reset_stats(self) -> None:
        self.hits = self.misses = self.puts = 0

    def clear(self) -> None:
        """Delete every entry."""
        with self._lock:
            self._conn.execute("DELETE FROM generations")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "GenerationCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GenerationCache({str(self.path) if self.path else ':memory:'!r})"
