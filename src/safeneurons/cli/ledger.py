"""``safeneurons ledger``: the test-scoring ledger's looks per evaluation set, or its lines.

``cli/main.py`` adds it with ``register(app)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from safeneurons.cli.common import echo, friendly_errors


@friendly_errors
def ledger_cmd(path: Annotated[Path | None, typer.Option(
                   "--path", help="Ledger file (default: $SAFENEURONS_LEDGER, else ./test-ledger.jsonl).")
               ] = None,
               lines: Annotated[bool, typer.Option("--lines", help="Print every line (JSON) instead of the "
                                                   "looks per evaluation set.")] = False) -> None:
    """Looks at the sealed test split per evaluation set (opened lines; how many got a result line)."""
    from safeneurons.pipelines.ledger import ledger_path, ledger_summary, read_ledger

    p = path or ledger_path()
    if lines:
        for rec in read_ledger(p):
            echo(json.dumps(rec, ensure_ascii=False, sort_keys=True))
        return
    rows = ledger_summary(p)
    if not rows:
        echo(f"{p}: no test scoring recorded.")
        return
    echo(f"{p}:")
    echo(f"{'evaluation set':28} {'split':5} {'looks':>5} {'results':>7}  {'last opened':25} hash")
    for r in rows:
        echo(f"{r['name']:28} {r['split']:5} {r['looks']:>5} {r['finished']:>7}  {r['last']:25} {r['hash']}")


def register(app: typer.Typer) -> None:
    """Add the ``ledger`` command to ``app``."""
    app.command("ledger")(ledger_cmd)
