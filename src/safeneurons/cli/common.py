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

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help=(
    "YAML config file, nested sections as mappings; all keys: safeneurons config show <command> or "
    "docs/config.md."))]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help=(
    "Override a config key: --set identify.params.tau_sas=2.5 (repeatable); all keys: safeneurons config "
    "show <command> or docs/config.md."))]
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


DEBUG_ENV = "SAFENEURONS_DEBUG"


def debugging() -> bool:
    """``--debug`` (which sets ``$SAFENEURONS_DEBUG``) or the variable set by hand: show tracebacks."""
    import os

    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def failure_line(exc: BaseException) -> tuple[str, int]:
    """The one line a failure is reported as, and the exit code: 2 for what the user can fix (a bad config,
    file, model folder, an unreadable or unwritable path), 1 for anything else (a bug: ``--debug`` shows it)."""
    import json

    if isinstance(exc, SafeneuronsError):
        return str(exc), 2
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        also = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
        return f"{exc.strerror or type(exc).__name__}:{where}{also}", 2
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})", 2
    if type(exc).__name__ == "SafetensorError":
        return f"unreadable safetensors file ({exc}); delete it to recompute, or restore it", 2
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}{'…' if len(text) > 400 else ''} (--debug shows the traceback)", 1


def friendly_errors(fn: F) -> F:
    """Every failure of a command is one red line (:func:`failure_line`) and an exit code; the traceback only
    with ``--debug``. Ctrl-C says that finished stages are kept and that the same command resumes (exit 130)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err.print("[yellow]interrupted:[/yellow] every finished stage is saved in the run directory "
                      "(manifest.json says which); run the same command again to resume from there.",
                      highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the CLI boundary: one line per failure
            if debugging():
                raise
            from rich.markup import escape

            line, code = failure_line(exc)
            err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def explicit(**pairs: Any) -> dict[str, Any]:
    """Config keys given as explicit CLI options (only those actually given)."""
    return {k: v for k, v in pairs.items() if v is not None}


def load_run_config(cls: type[C], config: str | None, overrides: list[str] | None,
                    explicit_keys: Mapping[str, Any]) -> C:
    """Load a command's config (defaults < ``--config`` < ``--set`` < explicit options) and check what can be
    checked before any work: every key, type and range (the config classes), then the model spec (a local
    folder's config.json). A failure here leaves no run folder behind."""
    from safeneurons.config import load_config
    from safeneurons.models.loading import check_model_spec

    cfg = load_config(cls, config, overrides, explicit_keys)
    model = getattr(cfg, "model", None)
    if model is not None:
        check_model_spec(model.spec, model.trust_remote_code)
    for data in (getattr(cfg, "data", None), getattr(getattr(cfg, "attack", None), "data", None)):
        _check_prompt_files(data)
    return cfg


def _check_prompt_files(data: Any) -> None:
    """Read every prompt set a ``DataConfig`` names (strictly: a bad row fails naming file and row), so a
    broken prompt file fails before the model loads and before the run folder exists."""
    from safeneurons.data import load_prompts

    if data is None:
        return
    for key in ("harmful", "harmless", "eval"):
        spec = getattr(data, key, None)
        if spec:
            load_prompts(spec, data_dir=data.data_dir)


def load_scoring_config(cls: type[C], config: str | None, overrides: list[str] | None,
                        explicit_keys: Mapping[str, Any], split: str | None, split_key: str) -> C:
    """Load a config for a command that scores evaluation prompts (defaults < ``--config`` < ``--set`` <
    explicit options, ``--split`` among them). Only the ``--split`` flag may select a split other than dev:
    a ``split_key`` of test (or all) that came from the config file or ``--set`` is refused, so a recipe
    cannot score the sealed test half silently."""
    from safeneurons.config import parse_override

    keys = dict(explicit_keys)
    if split is not None:
        keys[split_key] = split
    cfg = load_run_config(cls, config, overrides, keys)
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
    out.print(text, highlight=False, soft_wrap=True, markup=False)  # verbatim: "[...]" in results is not markup


def isatty() -> bool:
    return sys.stderr.isatty()
