"""Run directories: one per command, holding the resolved config, a manifest (versions, model and
data checksums, seed, stage timings, status) and results, every file written atomically.

A stage that finished is recorded in the manifest; re-running the same command on the same
directory skips it (``resume``), so a long run interrupted half-way loses at most one stage."""

from __future__ import annotations

import datetime as _dt
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from safeneurons import runformat as rf
from safeneurons.config import dump_config, migrate_keys, to_dict
from safeneurons.errors import ConfigError
from safeneurons.io import environment_info, read_json, write_json_atomic, write_text_atomic

log = logging.getLogger("safeneurons.run")
MANIFEST = rf.MANIFEST


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _defaults(config: Any) -> Any:
    """The default configuration of ``config``'s class as a dict (None when it cannot be built)."""
    try:
        return to_dict(type(config)())
    except Exception:  # noqa: BLE001 - a config class without defaults: compare exactly
        return None


# Options added after runs existed whose earlier behaviour is not their default, per command: the value a
# stored config without the (dotted) key stands for. Runs before evaluation splits scored every prompt.
EARLIER_VALUES = {"attack": {"data.split": "all"}, "train": {"attack.data.split": "all"},
                  "multilingual": {"split": "all"}}


def _same_config(stored: Any, current: Any, defaults: Any, earlier: Mapping[str, Any] | None = None,
                 prefix: str = "") -> bool:
    """Whether a stored run config matches the current one. A key the stored config lacks is ignored when
    its current value is the default: an option added to the library after the run cannot have changed it;
    ``earlier`` maps the dotted keys whose behaviour before they existed was another value to that value."""
    if isinstance(stored, dict) and isinstance(current, dict):
        d = defaults if isinstance(defaults, dict) else {}
        before = earlier or {}
        for key in stored.keys() | current.keys():
            if key not in stored:
                dotted = f"{prefix}{key}"
                if dotted in before:
                    if current[key] != before[dotted]:
                        return False
                elif key not in d or current[key] != d[key]:
                    return False
            elif key not in current or not _same_config(stored[key], current[key], d.get(key), earlier,
                                                        f"{prefix}{key}."):
                return False
        return True
    return stored == current


def default_run_dir(command: str, root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{command}-{stamp}"


class RunDir:
    def __init__(self, path: str | Path, command: str, config: Any, resume: bool = True) -> None:
        self.path = Path(path)
        self.command = command
        self.path.mkdir(parents=True, exist_ok=True)
        mpath = self.path / MANIFEST
        cfg = to_dict(config)
        if mpath.exists() and resume:
            self.manifest = read_json(mpath)
            if self.manifest.get("command") != command:
                raise ConfigError(f"{self.path} holds a {self.manifest.get('command')!r} run, not {command!r}; "
                                  "choose another --out.")
            # the stored config as the current keys read it (a key moved since is compared at its new place)
            stored = self.manifest.get("config")
            if isinstance(stored, dict):
                stored = migrate_keys(type(config), stored, str(mpath), warn=False)
            if not _same_config(stored, cfg, _defaults(config), EARLIER_VALUES.get(command)):
                raise ConfigError(
                    f"{self.path} was started with a different configuration; resume needs the same config "
                    f"({self.path / rf.CONFIG}), or choose another --out (with --reuse {self.path} to keep its cached "
                    "generations and importance cells).")
            self.manifest["resumed"] = self.manifest.get("resumed", 0) + 1
        else:
            self.manifest = {
                rf.FORMAT_KEY: rf.FORMAT, "command": command, "created": _now(), "status": "running", "config": cfg,
                "environment": environment_info(), "stages": {}, "model": {}, "data": {},
            }
            write_text_atomic(self.path / rf.CONFIG, dump_config(config))
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def file(self, rel: str) -> Path:
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, rel: str, obj: Any) -> Path:
        return write_json_atomic(self.file(rel), obj)

    def write_text(self, rel: str, text: str) -> Path:
        return write_text_atomic(self.file(rel), text)

    def done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and record it; the yielded dict is stored as the stage's info."""
        info: dict[str, Any] = {"status": "running", "started": _now()}
        self.manifest["stages"][name] = info
        self.save()
        t0 = time.perf_counter()
        try:
            yield info
        except BaseException as exc:
            info.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500],
                        seconds=round(time.perf_counter() - t0, 2))
            self.manifest["status"] = "failed"
            self.save()
            raise
        info.update(status="done", finished=_now(), seconds=round(time.perf_counter() - t0, 2))
        self.save()

    def record(self, section: str, key: str, value: Any) -> None:
        self.manifest.setdefault(section, {})[key] = value
        self.save()

    def finish(self) -> None:
        self.manifest["status"] = "done"
        self.manifest["finished"] = _now()
        self.save()


def copy_missing(files: Iterable[Path], src: Path, dst: Path, link: bool = False) -> list[str]:
    """Copy each of ``files`` (under ``src``) to the same relative path under ``dst`` unless a file is
    already there; ``link`` hard-links instead (falling back to a copy across file systems). Returns the
    relative paths written."""
    import os
    import shutil

    written = []
    for f in files:
        rel = f.relative_to(src)
        target = dst / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not link:
                raise OSError
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
        written.append(str(rel))
    return written


def seed_caches(source: str | Path, dest: str | Path) -> list[str]:
    """Copy the content-keyed caches of an earlier run into ``dest`` (``--reuse``): every
    ``generations.sqlite`` (keyed by model checksum, interventions, rendered prompt and decoding settings;
    merged into one ``dest`` already has, so several earlier runs can seed one run), every importance
    ``partial/`` cell (keyed by model, prompts, config and shard), every ``capability_cache/`` result (keyed
    by model, interventions, task, questions and shots), every ``stats_cache/`` file of identification
    statistics (keyed by model, chat template, prompts and statistics settings), every ``feature_cache/`` shard of
    last-prompt-token features (keyed by model, zeroed neurons, columns, rendering and prompt) and every trained SS-Neuron expansion with its
    ``trained.json`` (keyed by starting weights, target neurons, training data and settings; hard-linked), at
    the same relative paths. A changed setting therefore recomputes exactly what it changes; nothing else is
    carried over (other trained models, finished stages), so results are those a fresh run would give. Other
    files already in ``dest`` are kept. Returns the relative paths copied or merged and appends them, with the
    source, to ``dest/reused.json``."""
    import sqlite3
    from contextlib import closing

    from safeneurons.evaluate.cache import GenerationCache

    src, dst = Path(source), Path(dest)
    if not (src / MANIFEST).exists():
        raise ConfigError(f"--reuse {src}: not a run directory (no {MANIFEST}).")
    if src.resolve() == dst.resolve():
        return []
    copied: list[str] = []
    for db in sorted(src.rglob(rf.GENERATIONS)):
        target = dst / db.relative_to(src)
        if target.exists():
            with GenerationCache(target) as cache:
                cache.merge_from(db)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".sqlite.tmp")
            with closing(sqlite3.connect(db)) as a, closing(sqlite3.connect(tmp)) as b:
                a.backup(b)  # consistent even with an unmerged write-ahead log
            tmp.replace(target)
        copied.append(str(db.relative_to(src)))
    keyed_dirs = [p for name in (rf.PARTIAL_DIR, rf.CAPABILITY_CACHE, rf.STATS_CACHE, rf.FEATURE_CACHE)
                  for p in src.rglob(name) if p.is_dir()]
    copied += copy_missing((f for part in sorted(keyed_dirs) for f in sorted(part.rglob("*")) if f.is_file()), src, dst)
    trained = [m.parent for m in sorted(src.glob(rf.expansion_marker("*")))]
    copied += copy_missing((f for d in trained for f in sorted(d.rglob("*")) if f.is_file()), src, dst, link=True)
    record = dst / rf.REUSED
    prev = read_json(record) if record.exists() else {}
    earlier = prev.get("reused", [prev] if "source" in prev else [])  # (one source per file before)
    write_json_atomic(record, {"reused": [*earlier, {"source": str(src.resolve()), "copied": copied, "at": _now()}]})
    log.info("reused %d cache files from %s", len(copied), src)
    return copied
