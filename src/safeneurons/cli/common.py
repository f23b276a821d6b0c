"""Shared CLI pieces: option types, error handling and logging set-up (the only place that prints)."""

from __future__ import annotations

import logging
import sys
from functools import wraps
from typing import Annotated, Any, Callable, Mapping, TypeVar

import typer
from rich.console import Console

from safeneurons.errors import ConfigError, SafeneuronsError

err = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="YAML config file (keys as in `--help` of the config).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: --set identify.params.tau_sas=2.5 (repeatable).")]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", help="Run directory (default runs/<command>-<time>); re-run to resume.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model: local dir, offline registry name (safeneurons model list) or hub id.")]
ReuseOpt = Annotated[list[str] | None, typer.Option("--reuse", help="Earlier run directory whose content-keyed caches "
                                                  "(generations, importance cells) seed this run; changed settings are "
                                                  "recomputed. Repeatable: the caches of every run given are merged. "
                                                  "train: its trained models are adopted when only evaluation settings changed.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
SplitOpt = Annotated[str | None, typer.Option("--split", help=(
    "Evaluation prompts to score: dev (default; for choosing recipes), test (the sealed half: only this flag "
    "selects it, never a config file or --set; every test scoring is logged to the ledger "
    "$SAFENEURONS_LEDGER, default ./test-ledger.jsonl) or all (every prompt, as the runs published before "
    "the split; logged like test)."))]
C = TypeVar("C")


def setup_logging(quiet: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def friendly_errors(fn: F) -> F:
    """Print a :class:`SafeneuronsError` as one red line and exit 2; other errors keep their traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SafeneuronsError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def explicit(**pairs: Any) -> dict[str, Any]:
    """Config keys given as explicit CLI options (only those actually given)."""
    return {k: v for k, v in pairs.items() if v is not None}


def load_scoring_config(cls: type[C], config: str | None, overrides: list[str] | None,
                        explicit_keys: Mapping[str, Any], split: str | None, split_key: str) -> C:
    """Load a config for a command that scores evaluation prompts (defaults < ``--config`` < ``--set`` <
    explicit options, ``--split`` among them). Only the ``--split`` flag may select a split other than dev:
    a ``split_key`` of test (or all) that came from the config file or ``--set`` is refused, so a recipe
    cannot score the sealed test half silently."""
    from safeneurons.config import load_config, parse_override

    keys = dict(explicit_keys)
    if split is not None:
        keys[split_key] = split
    cfg = load_config(cls, config, overrides, keys)
    value: Any = cfg
    for part in split_key.split("."):
        value = getattr(value, part)
    if split is None and value != "dev":
        from_set = any(parse_override(item)[0] == split_key for item in overrides or [])
        where = f"--set {split_key}" if from_set or config is None else config
        raise ConfigError(f"{where}: {split_key} = {value!r} selects the {value} split, which only the "
                          f"command-line flag can: pass --split {value} (the run is logged to the test "
                          "ledger) or drop the key.")
    return cfg


def run_dir_for(command: str, out: str | None, reuse: list[str] | None) -> str | None:
    """The run directory, seeded from each ``--reuse`` run in turn when given (which then needs a fixed
    directory)."""
    if not reuse:
        return out
    from safeneurons.pipelines.rundir import default_run_dir, seed_caches

    path = str(out or default_run_dir(command))
    for source in reuse:
        copied = seed_caches(source, path)
        echo(f"reused {len(copied)} cache files from {source}")
    return path


def echo(text: str) -> None:
    out.print(text, highlight=False, soft_wrap=True)


def isatty() -> bool:
    return sys.stderr.isatty()
