"""Where the public datasets live: ``$SAFENEURONS_DATA_DIR``, else ``../shared/datasets`` next to the
working directory or the source checkout. Nothing is copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

from safeneurons.errors import DataError

ENV_VAR = "SAFENEURONS_DATA_DIR"


def candidate_data_dirs() -> list[Path]:
    out: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        out.append(Path(env).expanduser())
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *Path.cwd().parents[:2], *here.parents[:5]):
        out.append(base / "shared" / "datasets")
        out.append(base.parent / "shared" / "datasets")
    seen: list[Path] = []
    for p in out:
        if p not in seen:
            seen.append(p)
    return seen


def find_data_dir(data_dir: str | os.PathLike[str] | None = None, required: bool = True) -> Path | None:
    """Return the dataset directory (one holding ``MANIFEST.json``).

    ``data_dir`` wins when given; then ``$SAFENEURONS_DATA_DIR`` (alone: a value without ``MANIFEST.json`` is an
    error, or ``None`` when not ``required``); then ``../shared/datasets``."""
    if data_dir is not None:
        p = Path(data_dir).expanduser()
        if not (p / "MANIFEST.json").is_file():
            raise DataError(f"data dir {p} has no MANIFEST.json; point --data-dir at the datasets folder.")
        return p
    env = os.environ.get(ENV_VAR)
    if env:  # set by the user: it alone counts, a wrong value is not silently replaced by another folder
        p = Path(env).expanduser()
        if (p / "MANIFEST.json").is_file():
            return p
        if required:
            raise DataError(f"${ENV_VAR} = {env} has no MANIFEST.json; point it at the datasets folder.")
        return None
    for p in candidate_data_dirs():
        if (p / "MANIFEST.json").is_file():
            return p
    if required:
        raise DataError(
            "No local datasets found (looked for MANIFEST.json in "
            + ", ".join(str(p) for p in candidate_data_dirs()[:3])
            + f", ...). Set {ENV_VAR} or --data-dir, or run online to use the Hugging Face Hub."
        )
    return None
