"""The config reference: every key of every run command's config, with its type, default and help, from one
source (the config dataclasses and their ``field(metadata={"help": ...})``).

``safeneurons config show COMMAND`` prints it for one command; ``docs/config.md`` is generated from the same
rows (:data:`REGENERATE`), and ``tests/unit/test_config_reference.py`` fails when it is stale."""

from __future__ import annotations

import dataclasses
import importlib
import textwrap
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from safeneurons.cli.common import friendly_errors
from safeneurons.errors import ConfigError

REGENERATE = "safeneurons config show --all --format md > docs/config.md"

# command (as typed after `safeneurons`) -> its top-level run config, "module:class" (imported when needed)
COMMANDS: dict[str, str] = {
    "identify": "safeneurons.pipelines.identify:IdentifyRunConfig",
    "stats": "safeneurons.pipelines.identify:IdentifyRunConfig",
    "attack": "safeneurons.pipelines.attack:AttackConfig",
    "demo": "safeneurons.pipelines.attack:AttackConfig",
    "brittleness": "safeneurons.pipelines.brittleness:BrittlenessConfig",
    "analyze": "safeneurons.pipelines.analyze:AnalyzeConfig",
    "train safeneuron": "safeneurons.pipelines.train:TrainRunConfig",
    "multilingual": "safeneurons.pipelines.multilingual:MultilingualConfig",
    "monitor fit": "safeneurons.pipelines.monitor:MonitorFitRunConfig",
    "monitor evaluate": "safeneurons.pipelines.monitor_eval:MonitorEvalConfig",
}
ALIASES = {"train": "train safeneuron", "monitor-eval": "monitor evaluate"}  # also the names run manifests record
# the keys each command's --help names (tests check that they exist)
MAIN_KEYS: dict[str, tuple[str, ...]] = {
    "identify": ("model.spec", "data.harmful", "data.harmless", "data.n_identify", "stats.position",
                 "identify.method", "identify.params.tau_es", "identify.params.tau_sas"),
    "stats": ("model.spec", "data.harmful", "data.harmless", "data.n_identify", "stats.position",
              "stats.sites"),
    "attack": ("model.spec", "data.n_eval", "identify.method", "identify.params.tau_es", "judge",
               "conditions", "capability.tasks"),
    "demo": ("data.n_eval", "identify.params.tau_es", "judge", "conditions", "generation.max_new_tokens",
             "capability.tasks"),
    "brittleness": ("model.spec", "fractions", "attackers", "random_seeds", "iterative_step", "exclude", "judge"),
    "analyze": ("model.spec", "harmful", "n_per_category", "min_per_category", "identify.params.tau_es",
                "sets"),
    "train safeneuron": ("model.spec", "methods", "rounds", "pairs.n_safety", "pairs.n_general",
                         "dpo.learning_rate", "attack.data.n_eval", "attack.capability.tasks"),
    "multilingual": ("model.spec", "languages", "n_identify", "n_eval", "importance.method", "p",
                     "conditions", "expansion.enabled"),
    "monitor fit": ("model.spec", "neurons", "harmful", "harmless", "fit.n", "fit.held_out", "fit.l2",
                    "fit.fprs"),
    "monitor evaluate": ("model.spec", "neurons", "fit_harmful", "score_harmful", "judge", "multijail_n",
                         "attack_set", "trained_model"),
}
NOTES = {
    "demo": "`demo` starts from `src/safeneurons/pipelines/configs/demo.yaml` (`--headline`: "
            "`headline.yaml`), so the defaults listed hold for the keys that file leaves out; `--set` "
            "changes any key.",
}


@dataclass(frozen=True)
class Row:
    """One key of the reference. ``when``: ``(selector, choice)`` for the keys of one choice of a variant
    field (``identify.params.tau_es`` exists when ``identify.method`` is ``safeneuron``); ``type`` is
    ``section`` for a nested config (its keys follow as their own rows)."""

    key: str
    type: str
    default: str
    help: str
    when: tuple[str, str] | None = None

    @property
    def qualifier(self) -> str:
        """`` (method: safeneuron)`` for a variant choice's key (the selector's own name), else empty."""
        return "" if self.when is None else f" ({self.when[0].rsplit('.', 1)[-1]}: {self.when[1]})"

    @property
    def label(self) -> str:
        """The key as listed: ``identify.params.tau_es (method: safeneuron)`` for a variant choice's key."""
        return self.key + self.qualifier


def canonical(command: str) -> str:
    """The command name of ``COMMANDS`` for what the user typed (``train`` is ``train safeneuron``); an
    unknown one is a ``ConfigError`` naming the choices."""
    name = " ".join(command.split())
    name = ALIASES.get(name, name)
    if name not in COMMANDS:
        raise ConfigError(f"config show: unknown command {command!r}; choose from {', '.join(COMMANDS)} "
                          "(train safeneuron may be written train).")
    return name


def epilog(command: str) -> str:
    """The line under a run command's ``--help``: its main keys and where all of them are listed."""
    return (f"Main config keys: {', '.join(MAIN_KEYS[command])}. All keys: safeneurons config show {command} "
            "(or docs/config.md).")


def config_class(command: str) -> type:
    module, _, name = COMMANDS[canonical(command)].partition(":")
    return getattr(importlib.import_module(module), name)


def type_text(tp: Any) -> str:
    """A type hint as short text: ``int | None``, ``tuple[str, ...]``, ``dict[str, int]``."""
    if tp is type(None):
        return "None"
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        inner = ", ".join("..." if a is Ellipsis else type_text(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


def default_text(value: Any) -> str:
    """A default as YAML text (``null``, ``true``, ``[ORI, FULL]``, ``{}``): what ``--set KEY=<text>`` reads
    back as the same value."""
    import yaml

    def plain(x: Any) -> Any:  # tuples as lists, which safe_dump can write
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x

    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text.removesuffix("\n...").strip()


def _section_type(tp: Any) -> type | None:
    """The config dataclass of a nested section (``X`` or ``X | None``), else None."""
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    for t in typing.get_args(tp) if union else (tp,):
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            return t
    return None


def walk(cls: type, instance: Any = None, prefix: str = "",
         when: tuple[str, str] | None = None) -> Iterator[Row]:
    """Every key of config class ``cls`` in field order, nested sections recursed into (a section's row comes
    before its keys). Defaults are read from ``instance`` (default ``cls()``), so default factories and a
    parent's customised sections (``GenerationConfig(max_new_tokens=64)``) show as they load. A variant field
    (:func:`safeneurons.config.variant_field`) lists the keys of every choice, each row marked with the
    selector value it needs."""
    from safeneurons.config import variant_choices, variant_of

    obj = cls() if instance is None else instance
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key, help_ = f"{prefix}{f.name}", str(f.metadata.get("help", "")).strip()
        value = getattr(obj, f.name)
        variant = variant_of(f)
        if variant is not None:
            selector = variant[0]
            current = getattr(obj, selector)
            yield Row(key, "section", "", help_, when)
            choices = variant_choices(f)
            for choice, choice_cls in sorted(choices.items(), key=lambda c: c[0] != current):  # current first
                settings = value if choice == current and type(value) is choice_cls else choice_cls()
                yield from walk(choice_cls, settings, f"{key}.", (f"{prefix}{selector}", choice))
            continue
        section = _section_type(hints[f.name])
        if section is not None and value is not None:
            yield Row(key, "section", "", help_, when)
            yield from walk(section, value, f"{key}.", when)
        else:
            yield Row(key, type_text(hints[f.name]), default_text(value), help_, when)


def rows(command: str) -> list[Row]:
    return list(walk(config_class(command)))


def key_change_lines(command: str) -> list[str]:
    """One line per key moved or removed from the command's config, at any depth
    (:func:`safeneurons.config.migrate_keys` applies them when a config is read)."""
    from safeneurons.config import Moved, key_changes

    def changes(cls: type, prefix: str = "") -> Iterator[str]:
        for key, change in key_changes(cls).items():
            if isinstance(change, Moved):
                yield f"`{prefix}{key}` moved to `{prefix}{change.to}` ({change.record}); still read at the old place"
            else:
                what = f"`{prefix}{key}: {change.value}`" if change.value is not None else f"`{prefix}{key}`"
                yield f"{what} removed ({change.what}; results: {change.record}; last in commit {change.commit})"
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            section = _section_type(hints[f.name])
            if section is not None:
                yield from changes(section, f"{prefix}{f.name}.")

    return list(changes(config_class(command)))


# ---------------------------------------------------------------------------------------------- rendering


def _intro(command: str) -> str:
    cls = config_class(command)
    return (f"`safeneurons {command}` reads `{cls.__module__}.{cls.__name__}`: set keys in a YAML file "
            "(`--config`, nested sections as mappings) or with `--set KEY=VALUE` (VALUE is YAML).")


def text_listing(command: str, width: int = 100) -> str:
    """An aligned listing for a terminal: one line per key (``key  type = default``), its help wrapped
    below."""
    command = canonical(command)
    rs = rows(command)
    key_w = min(max(len(r.label) for r in rs), 56)
    lines = [textwrap.fill(_intro(command).replace("`", ""), width), ""]
    if command in NOTES:
        lines += [textwrap.fill(NOTES[command].replace("`", ""), width), ""]
    for r in rs:
        head = f"{r.label:<{key_w}}  {r.type}" + (f" = {r.default}" if r.type != "section" else "")
        lines.append(head.rstrip())
        if r.help:
            lines += textwrap.wrap(r.help, width, initial_indent="    ", subsequent_indent="    ")
    changed = key_change_lines(command)
    if changed:
        lines += ["", "Keys moved or removed:"]
        lines += [textwrap.fill(c.replace("`", ""), width, initial_indent="  ", subsequent_indent="    ")
                  for c in changed]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Plain text in a markdown table cell: pipes, ``<`` (``<run>`` is not an HTML tag) and ``*`` escaped."""
    return "".join("\\" + c if c in "|<*" else c for c in text.replace("\n", " "))


def _code(text: str) -> str:
    pipe = "\\|"  # a pipe ends a table cell even inside a code span
    return f"`{text.replace('|', pipe)}`" if text else ""


def markdown_table(command: str) -> str:
    lines = ["| key | type | default | help |", "|---|---|---|---|"]
    for r in rows(command):
        cells = [_code(r.key) + r.qualifier, _cell(r.type), _code(r.default), _cell(r.help)]
        lines.append(f"| {' | '.join(cells)} |")
    return "\n".join(lines)


def markdown_section(command: str, same_as: str | None = None) -> str:
    command = canonical(command)
    parts = [f"## {command}", ""]
    if same_as is not None:
        anchor = same_as.replace(" ", "-")
        parts += [f"The keys of [{same_as}](#{anchor}) (`{config_class(command).__name__}`)."]
    else:
        parts += [_intro(command), ""]
    if command in NOTES:
        parts += ([""] if same_as else []) + [NOTES[command], ""]
    if same_as is None:
        parts += [markdown_table(command)]
        changed = key_change_lines(command)
        if changed:
            parts += ["", "Keys moved or removed:", "", *[f"- {_cell(c)}" for c in changed]]
    return "\n".join(parts).rstrip()


def markdown_all() -> str:
    """``docs/config.md``: a generated header, then one section per command (a command that shares its config
    class with an earlier one points to that section instead of repeating the table)."""
    first: dict[str, str] = {}
    sections = []
    for command, target in COMMANDS.items():
        sections.append(markdown_section(command, first.get(target)))
        first.setdefault(target, command)
    generated = (f"Generated by `{REGENERATE}` from the config dataclasses (their field help); do not edit "
                 "by hand. `tests/unit/test_config_reference.py` fails when it is stale. The same listing "
                 "for one command: `safeneurons config show COMMAND`.")
    usage = ("Precedence: defaults < `--config file.yaml` < `--set key=value` < explicit flags (`--model` "
             "is `model.spec`). A key marked (method: NAME) exists when the sibling `method` key is NAME "
             "(`safeneurons ls methods`). A `section` is a nested mapping whose keys follow it.")
    head = ["# Config reference", "", generated, "", usage, ""]
    return "\n".join([*head, "\n\n".join(sections), ""])


# ---------------------------------------------------------------------------------------------- CLI

config_app = typer.Typer(help="Config reference: every key of a command's config with type, default and "
                              "help.", no_args_is_help=True)


@config_app.command("show")
@friendly_errors
def show_cmd(
    command: Annotated[list[str] | None, typer.Argument(
        metavar="COMMAND", help=f"run command: {', '.join(COMMANDS)} (train safeneuron may be written train)",
    )] = None,
    all_: Annotated[bool, typer.Option("--all", help="every command (with --format md: docs/config.md)")]
    = False,
    format_: Annotated[str, typer.Option("--format", "-f", help="text (aligned listing) or md (markdown "
                                                              "table)")] = "text",
) -> None:
    """Print every config key of COMMAND (nested sections and each method's settings included) with its type,
    default and help."""
    if format_ not in ("text", "md"):
        raise ConfigError(f"config show: --format {format_!r}; choose text or md.")
    if all_ == bool(command):  # neither a command nor --all, or both
        raise ConfigError(f"config show: name one command ({', '.join(COMMANDS)}) or pass --all.")
    if all_:
        text = markdown_all() if format_ == "md" else "\n\n".join(text_listing(c) for c in COMMANDS)
    else:
        name = " ".join(command or [])
        text = markdown_section(name) if format_ == "md" else text_listing(name)
    typer.echo(text.rstrip("\n"))


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


if __name__ == "__main__":
    print(markdown_all(), end="")
