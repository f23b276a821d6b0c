"""The test-scoring ledger: every look at the sealed test half of an evaluation set leaves a line.

The ledger is a JSON-lines file, ``$SAFENEURONS_LEDGER`` or else ``test-ledger.jsonl`` in the working
directory, only ever appended to (each line flushed and fsync'd). A scoring run whose evaluation split is
not ``dev`` (``test``, or ``all``, which includes the test half) appends, per command:

* ``opened``: before any test prompt is generated or scored: the date (UTC, ISO 8601), the command line,
  the config hash, the model checksum, the run directory and each evaluation set it will score (name, split,
  the hash of every item on that side, the number of items, the hash of the sample scored);
* ``result``: when scoring finishes, with the same ``id``: the headline numbers the run produced.

A ledger that cannot be written stops the run with a :class:`~safeneurons.errors.ConfigError` before any
model work on test prompts (:func:`check_writable` at the start, :func:`open_look` right before scoring),
so a test scoring without its ``opened`` line cannot happen. The number of looks at a test set is the
number of ``opened`` lines listing its hash (:func:`ledger_counts`). Only the pipelines import this module.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shlex
import sys
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from safeneurons.errors import ConfigError, DataError
from safeneurons.io import jsonl_objects

LEDGER_ENV = "SAFENEURONS_LEDGER"
DEFAULT_LEDGER = "test-ledger.jsonl"
LEDGER_VERSION = 1


def ledger_path() -> Path:
    """``$SAFENEURONS_LEDGER`` when set, else ``test-ledger.jsonl`` in the current working directory."""
    env = os.environ.get(LEDGER_ENV)
    return Path(env).expanduser() if env else Path.cwd() / DEFAULT_LEDGER


def needs_ledger(split: str) -> bool:
    """Whether scoring ``split`` looks at test prompts (``test``, and ``all``, which contains them)."""
    return split != "dev"


@dataclass(frozen=True)
class EvalSetRef:
    """One evaluation set a run scores: ``hash`` identifies every item on the ``split`` side (what the
    looks are counted against), ``sample_hash`` the ``n`` items this run scores."""

    name: str
    split: str
    hash: str
    n_split: int
    n: int
    sample_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _unwritable(path: Path, exc: OSError) -> ConfigError:
    reason = f"{type(exc).__name__}: {exc.strerror or exc}"
    return ConfigError(f"cannot append to the test ledger {path} ({reason}); "
                       f"nothing was scored on the test split. Make it writable or point ${LEDGER_ENV} at a "
                       "writable file.")


def check_writable(path: Path | None = None) -> Path:
    """Open the ledger for appending and close it again (no line is written); raises a ConfigError naming
    the file when that fails. Called at the start of a test-scoring run, so it fails before hours of work."""
    p = path or ledger_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise _unwritable(p, exc) from None
    return p


def append_line(path: Path, record: Any) -> None:
    """Append one JSON line to ``path`` and flush and fsync it before returning (raises a ConfigError
    naming the file when it cannot)."""
    line = json.dumps(record, ensure_ascii=False, sort_keys=True, default=str) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise _unwritable(path, exc) from None


def config_hash(config: Any) -> str:
    """sha256 of a run's resolved config (as recorded in its manifest), keys sorted."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TestLook:
    """An opened look at test prompts: :meth:`close` appends its ``result`` line."""

    __test__ = False  # not a pytest test class

    id: str
    path: Path
    run_dir: str

    def close(self, **result: Any) -> None:
        """Append the ``result`` line: ``result`` holds the headline numbers (JSON-serialisable)."""
        append_line(self.path, {"event": "result", "v": LEDGER_VERSION, "id": self.id, "date": _now(),
                                "run_dir": self.run_dir, "result": result})


def open_look(run_dir: str | Path, config: Any, model_checksum: str, sets: Sequence[EvalSetRef],
              path: Path | None = None, command: str | None = None) -> TestLook:
    """Append the ``opened`` line of a test scoring (fsync'd) and return its handle. Call it before any
    test prompt is generated or scored; it raises a ConfigError naming the file when the line cannot be
    written, so the caller stops before touching test prompts."""
    if not sets:
        raise DataError("open_look: no evaluation set to record.")
    p = path or ledger_path()
    look = TestLook(uuid.uuid4().hex, p, str(Path(run_dir).resolve()))
    append_line(p, {"event": "opened", "v": LEDGER_VERSION, "id": look.id, "date": _now(),
                    "command": command if command is not None else shlex.join(sys.argv),
                    "config_hash": config_hash(config), "model_checksum": model_checksum,
                    "run_dir": look.run_dir, "prompt_sets": [s.to_dict() for s in sets]})
    return look


def read_ledger(path: Path | None = None) -> list[dict[str, Any]]:
    """Every line of the ledger (an absent file: none); a malformed line raises a DataError naming it."""
    p = path or ledger_path()
    if not p.is_file():
        return []
    out = []
    for i, rec in jsonl_objects(p):
        if rec.get("event") not in ("opened", "result"):
            raise DataError(f"{p} line {i}: expected an object with event 'opened' or 'result'.")
        out.append(rec)
    return out


def ledger_counts(path: Path | None = None) -> dict[str, int]:
    """Looks per evaluation set: ``{split hash: number of opened lines listing it}``."""
    counts: Counter[str] = Counter()
    for rec in read_ledger(path):
        if rec["event"] == "opened":
            counts.update({s["hash"] for s in rec.get("prompt_sets") or []})
    return dict(counts)


def ledger_summary(path: Path | None = None) -> list[dict[str, Any]]:
    """One row per evaluation set seen in the ledger: name, split, hash, looks, and how many looks got a
    result line (for ``safeneurons ledger`` and reports)."""
    records = read_ledger(path)
    finished = {r["id"] for r in records if r["event"] == "result"}
    rows: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec["event"] != "opened":
            continue
        for s in rec.get("prompt_sets") or []:
            row = rows.setdefault(s["hash"], {"name": s["name"], "split": s["split"], "hash": s["hash"],
                                              "looks": 0, "finished": 0, "last": ""})
            row["looks"] += 1
            row["finished"] += rec["id"] in finished
            row["last"] = max(row["last"], rec.get("date", ""))
    return sorted(rows.values(), key=lambda r: (r["name"], r["split"], r["hash"]))
