"""``safeneurons judge validate --judge NAME``: a judge's agreement with the labelled replies.

``cli/main.py`` adds the ``judge`` group with ``register(app)``."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from safeneurons.cli.common import QuietOpt, echo, friendly_errors, setup_logging

if TYPE_CHECKING:
    from safeneurons.evaluate.validation import Agreement, JudgeValidation

judge_app = typer.Typer(help="Judges: measure them on the labelled replies (data/judge_validation).",
                        no_args_is_help=True)


@judge_app.command("validate")
@friendly_errors
def validate_cmd(
    judge: Annotated[str, typer.Option("--judge", "-j", help="judge name (safeneurons ls judges)")] = "guard",
    labels: Annotated[Path, typer.Option("--labels", help="labelled-set folder (items.jsonl, labels.jsonl)")]
    = Path("data/judge_validation"),
    part: Annotated[str, typer.Option("--part", help="report (judges are reported on it) or build (fitted on)")]
    = "report",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="judge option KEY=VALUE (YAML "
                                                      "value), e.g. -o model=DIR -o rubric=comply")] = None,
    write: Annotated[bool, typer.Option("--write", help="store the record shipped with the package (the one "
                                                        "asr.md and report.html show)")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a judge on one part of the labelled set: kappa with 95 % interval, precision and recall, by
    language, and seconds per reply. Prints a table; --write stores the record beside the package's judges."""
    from safeneurons.evaluate.judges import make_judge
    from safeneurons.evaluate.validation import card_path, load_labelled, validate_judge
    from safeneurons.io import write_json_atomic

    setup_logging(quiet)
    import yaml

    from safeneurons.errors import ConfigError

    options = {}
    for text in option or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {text!r}: expected KEY=VALUE.")
        options[key.strip()] = yaml.safe_load(value)
    replies = load_labelled(labels, part=part)
    command = "safeneurons " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    record = validate_judge(make_judge(judge, **options), replies, part=part, command=command)
    echo(validation_table(record))
    if write:
        path = card_path(record.judge)
        write_json_atomic(path, record.to_dict())
        echo(f"record: {path}")
    else:
        echo(json.dumps({"judge": record.judge, "refusal_kappa": record.refusal.kappa,
                         "harmful_kappa": record.harmful.kappa}))


def _num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def validation_table(record: JudgeValidation) -> str:
    """Markdown table of one validation record: all languages, then each language."""
    lines = [record.line(), "",
             "| language | n | refusal κ [95% CI] | refusal P / R | harmful n | harmful κ [95% CI] | harmful P / R |",
             "|---|---|---|---|---|---|---|"]

    def cells(a: Agreement) -> list[str]:
        return [f"{_num(a.kappa)} [{_num(a.kappa_lo)}, {_num(a.kappa_hi)}]", f"{_num(a.precision)} / {_num(a.recall)}"]

    rows = [("all", record.refusal, record.harmful)]
    rows += [(lang, a, record.harmful_by_language.get(lang)) for lang, a in record.refusal_by_language.items()]
    for lang, ref, harm in rows:
        hc = cells(harm) if harm is not None else ["–", "–"]
        hn = str(harm.n) if harm is not None else "0"
        lines.append(f"| {lang} | {ref.n} | {' | '.join(cells(ref))} | {hn} | {' | '.join(hc)} |")
    lines += ["", f"labels κ (3 classes) {_num(record.labels_kappa, 3)}; ASR on harmful prompts: gold "
              f"{_num(record.gold_asr, 1)} %, judged {_num(record.judged_asr, 1)} %; "
              f"{_num(record.seconds_per_reply, 3)} s per reply"]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.add_typer(judge_app, name="judge")
