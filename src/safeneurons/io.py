"""File helpers: atomic writes (temp file + rename, so an interrupted run never leaves half a
result), hashing, the user cache directory and version information for manifests."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from safeneurons.errors import DataError, UnreadableFileError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` keeps its old content."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and writers that replace the file (safetensors' save_file) make 0600 again:
        # set the user's normal mode on what was written, just before it takes the target's place.
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``; a file that does not parse raises :class:`UnreadableFileError` naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise UnreadableFileError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}); "
                                  "it may have been cut while written: restore or delete it.") from None
    except UnicodeDecodeError as exc:
        raise UnreadableFileError(f"{path}: not UTF-8 text (byte {exc.start}).") from None


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a missing file raises FileNotFoundError, a damaged one
    :class:`UnreadableFileError` naming it (safetensors' own errors do not)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    p = str(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(2, "No such file", p)
    try:
        with safe_open(p, framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        return load_file(p), meta
    except Exception as exc:  # safetensors raises its own error types (SafetensorError, OSError, ...)
        raise UnreadableFileError(f"{p}: unreadable safetensors file ({exc}); it may have been cut while "
                                  "written: delete it to recompute, or restore it.") from None


def _open_text(path: Path) -> Any:
    """A UTF-8 text handle on ``path`` (gzip-compressed when it ends in ``.gz``), newlines untranslated."""
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_text_maybe_gz(path: str | os.PathLike[str]) -> str:
    with _open_text(Path(path)) as fh:
        return fh.read()


def csv_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(row number, record)`` for every record of a CSV file with a header row (row 1), parsed strictly: a
    quote that does not open or close a field where CSV allows it, a file that ends inside a quoted field,
    a record with more or fewer fields than the header, a blank or repeated header name, or bytes that are
    not UTF-8 raise :class:`~safeneurons.errors.DataError` naming the file, the row and the line it starts
    on. So a stray ``"`` can no longer merge rows silently: a file loads every record or fails naming one.
    Quoted fields may span lines (the record's row number stays one); blank lines are not records."""
    import csv

    p = Path(path)
    with _open_text(p) as fh:
        reader = csv.reader(fh, strict=True)
        row_no, header = 1, None
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{p} row {row_no + (header is not None)} (line {start}): malformed CSV ({exc}); "
                                "look for a stray or unbalanced quote.") from None
            except UnicodeDecodeError as exc:
                raise DataError(f"{p}: not UTF-8 text (byte {exc.start} of a chunk near line {start}).") from None
            if not fields:
                continue
            if header is None:
                header = fields
                bad = [h for h in header if not h.strip()]
                if bad or len(set(header)) != len(header):
                    raise DataError(f"{p} row 1 (line {start}): the header needs distinct, non-empty column names; "
                                    f"got {header}.")
                continue
            row_no += 1
            if len(fields) != len(header):
                spans = f"; it spans lines {start}–{reader.line_num}, so a quote may have joined lines" \
                    if reader.line_num > start else ""
                raise DataError(f"{p} row {row_no} (line {start}): {len(fields)} fields where the header has "
                                f"{len(header)}{spans}.")
            yield row_no, dict(zip(header, fields))


def jsonl_objects(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of a JSON-lines file (``.gz`` read compressed). A line
    that is not a JSON object raises :class:`~safeneurons.errors.DataError` naming the file and the line: no row
    is skipped silently. The one reader of JSON-lines files that two modules share."""
    p = Path(path)
    with _open_text(p) as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p} line {i}: invalid JSON ({exc.msg}).") from None
            if not isinstance(row, dict):
                raise DataError(f"{p} line {i}: expected a JSON object, got {type(row).__name__}.")
            yield i, row


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_dir() -> Path:
    """``$SAFENEURONS_CACHE`` or ``$XDG_CACHE_HOME/safeneurons`` (default ``~/.cache/safeneurons``)."""
    env = os.environ.get("SAFENEURONS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "safeneurons"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("safeneurons")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def environment_info() -> dict[str, Any]:
    """Versions and machine facts recorded in every run manifest."""
    from importlib.metadata import PackageNotFoundError, version

    libs = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "safetensors", "numpy"):
        try:
            libs[name] = version(name)
        except PackageNotFoundError:
            libs[name] = None
    return {
        "safeneurons": package_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "libraries": libs,
    }
