"""The config reference (``safeneurons config show``, docs/config.md) comes from the config dataclasses: the
committed docs/config.md is what the generator prints now, every field has help, every listed key loads, and
each run command's --help points to it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safeneurons.cli import reference
from safeneurons.cli.main import app
from safeneurons.config import load_config, variant_choices

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "config.md"


def test_docs_config_md_is_current():
    assert DOC.read_text(encoding="utf-8") == reference.markdown_all(), (
        "docs/config.md is stale (a config field, its help or default changed): regenerate it with "
        f"`{reference.REGENERATE}` (or `python -m safeneurons.cli.reference > docs/config.md`) and commit "
        "it.")


def _config_classes() -> dict[str, type]:
    """Every config dataclass reachable from a run config: nested sections and each variant choice."""
    seen: dict[str, type] = {}

    def visit(cls: type) -> None:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in seen:
            return
        seen[name] = cls
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for tp in (hints[f.name], *typing.get_args(hints[f.name])):
                if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                    visit(tp)
            for choice in variant_choices(f).values():
                visit(choice)

    for command in reference.COMMANDS:
        visit(reference.config_class(command))
    return seen


def test_every_config_field_has_help():
    classes = _config_classes()
    assert {"SafeNeuronConfig", "MeanDiffConfig", "CapabilityCheck", "SafeNeuronDPOConfig"} <= {
        c.__name__ for c in classes.values()}
    missing = [f"{name}.{f.name}" for name, cls in classes.items() for f in dataclasses.fields(cls)
               if not str(f.metadata.get("help", "")).strip()]
    assert not missing, f"fields without metadata={{'help': ...}}: {missing}"


def _doc_tables() -> dict[str, list[tuple[str, str | None, str, str]]]:
    """``{command: [(key, 'method=choice' or None, type, default)]}`` read from docs/config.md."""
    out: dict[str, list] = {}
    command = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            command = line[3:].strip()
            out[command] = []
        elif command and line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            m = re.fullmatch(r"`([\w.]+)`(?: \((\w+): (\w+)\))?", cells[0])
            assert m, f"docs/config.md: cannot read the key cell {cells[0]!r}"
            when = f"{m.group(2)}={m.group(3)}" if m.group(2) else None
            out[command].append((m.group(1), when, cells[1], cells[2].strip("`")))
    return out


def _get(cfg: object, key: str) -> object:
    for part in key.split("."):
        assert dataclasses.is_dataclass(cfg) and hasattr(cfg, part), f"no key {key!r}"
        cfg = getattr(cfg, part)
    return cfg


def test_every_listed_key_loads_with_its_default():
    """Each key of docs/config.md, set with --set to its listed default (a variant choice's key with its
    selector set to that choice), loads and reads back as that default."""
    tables = _doc_tables()
    assert set(tables) == set(reference.COMMANDS)
    checked = 0
    for command, rows in tables.items():
        cls = reference.config_class(command)
        groups: dict[tuple[str, str] | None, list[tuple[str, str, str]]] = {}
        for key, when, type_, default in rows:
            group = None
            if when:  # identify.params.tau_es (method: safeneuron): the selector is a sibling of params
                parts = key.split(".")
                assert len(parts) >= 2, key
                selector_name, choice = when.split("=")
                group = (".".join([*parts[:-2], selector_name]), choice)
            groups.setdefault(group, []).append((key, type_, default))
        for group, items in groups.items():
            overrides = [f"{group[0]}={group[1]}"] if group else []
            overrides += [f"{key}={default}" for key, type_, default in items if type_ != "section"]
            cfg = load_config(cls, None, overrides)
            for key, type_, default in items:
                value = _get(cfg, key)
                if type_ == "section":
                    assert dataclasses.is_dataclass(value), f"{command}: {key} is listed as a section"
                else:
                    shown = reference.default_text(value)
                    assert shown == default, f"{command}: {key} read back as {value!r}"
                checked += 1
    assert checked > 400


@pytest.mark.parametrize("command", list(reference.MAIN_KEYS))
def test_help_names_main_keys_and_the_reference(command):
    keys = {r.key for r in reference.rows(command)}
    assert set(reference.MAIN_KEYS[command]) <= keys
    assert 4 <= len(reference.MAIN_KEYS[command]) <= 8
    res = CliRunner().invoke(app, [*command.split(), "--help"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.replace("│", " ").split())  # help as one line, panel borders dropped
    assert f"All keys: safeneurons config show {command}" in text
    assert "safeneurons config show <command> or docs/config.md" in text  # the --set option's help


def _cli(*args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "safeneurons.cli.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_config_show_cli():
    proc = _cli("config", "show", "attack")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("identify.params.tau_es (method: safeneuron)") for line in lines)
    assert any(line.startswith("identify.params.k (method: meandiff)") for line in lines)
    assert any(re.match(r"judge +str = guard$", line) for line in lines)
    proc = _cli("config", "show", "atack")
    assert proc.returncode == 2
    out = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(out) == 1 and "unknown command 'atack'" in out[0]
    assert "choose from identify, stats, attack" in out[0] and "multilingual" in out[0]


def test_config_show_train_alias_and_markdown():
    runner = CliRunner()
    full = runner.invoke(app, ["config", "show", "train", "safeneuron", "--format", "md"])
    short = runner.invoke(app, ["config", "show", "train", "--format", "md"])
    assert full.exit_code == short.exit_code == 0 and full.output == short.output
    assert "| `attack.identify.params.tau_es` (method: safeneuron) |" in full.output
