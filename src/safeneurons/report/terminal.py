"""The few lines an attack command prints when it ends: a short attack-success table and one line per
capability measure, never a raw results file (those are in the run folder and its report).

Table columns: condition, neurons zeroed, their share of the neurons of the sites they use (for the
SafeNeuron sets: of all MLP neurons), ASR as ``k / n`` and in percent with its 95% Wilson interval
(:func:`safeneurons.evaluate.asr.wilson_interval`, as written in ``asr.json``). Under it: the held-out prompt
set, the judge line stored with the table (judge, version, agreement with labelled replies), and for each
capability task and the perplexity figure one line across the conditions scored.

Read through :mod:`safeneurons.report.load`, so a missing or broken file gives one line saying so instead
of an error: the run has finished by the time this is printed."""

from __future__ import annotations

from pathlib import Path

from safeneurons import runformat as rf
from safeneurons.report.load import (
    AsrCell,
    CapabilityRow,
    ManifestInfo,
    Missing,
    load,
    parse_asr,
    parse_capability,
    parse_manifest,
)

HEADER = ("condition", "neurons zeroed", "% of neurons", "ASR k / n", "ASR % [95% CI]")


def _row(cond: str, c: AsrCell) -> tuple[str, ...]:
    neurons = f"{c.n_neurons:,}" if c.n_neurons is not None else "n/a"
    share = f"{100 * c.fraction_of_neurons:.2f}" if c.fraction_of_neurons is not None else "n/a"
    kn = f"{c.k} / {c.n}" if c.k is not None and c.n is not None else "n/a"
    if c.asr is None:
        pct = "n/a"
    elif c.has_ci:
        pct = f"{100 * c.asr:.1f} [{100 * c.ci_lo:.1f}\u2013{100 * c.ci_hi:.1f}]"  # type: ignore[operator]
    else:
        pct = f"{100 * c.asr:.1f}"
    return cond, neurons, share, kn, pct


def text_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Rows as aligned plain-text columns (first column left-aligned, the others right-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _eval_line(manifest: ManifestInfo | Missing) -> str:
    if isinstance(manifest, Missing):
        return ""
    ev = manifest.data.get("eval") or {}
    name, n = ev.get("name"), ev.get("n")
    return f"Held-out prompts: {n} of {name}." if name and n else ""


def _capability_lines(cap: dict[str, CapabilityRow]) -> list[str]:
    conds = list(cap)
    tasks = sorted({t for row in cap.values() for t in row.tasks})
    lines = []
    for task in tasks:
        parts = []
        for cond in conds:
            s = cap[cond].tasks.get(task)
            value = None if s is None else (s.acc_norm if s.metric == "acc_norm" else s.acc)
            parts.append(f"{cond} {value:.2f}" if value is not None else f"{cond} n/a")
        first = next((cap[c].tasks[task] for c in conds if task in cap[c].tasks), None)
        about = f"{first.metric}, n = {first.n}" if first is not None and first.n is not None else "accuracy"
        lines.append(f"{task} ({about}): " + ", ".join(parts))
    ppl = [(c, row.perplexity) for c, row in cap.items() if row.perplexity is not None]
    if ppl:
        lines.append("perplexity on benign text: " + ", ".join(f"{c} {p:.2f}" for c, p in ppl))
    return lines


def attack_summary(path: str | Path) -> str:
    """The attack-success table of the run directory ``path`` with the lines described in the module text."""
    root = Path(path)
    asr = load(root, rf.ASR, parse_asr)
    if isinstance(asr, Missing):
        return f"no attack-success table: {asr.reason}"
    rows = [_row(cond, asr.summary[cond]) for cond in asr.conditions]
    out = [text_table(rows, HEADER)]
    out += [line for line in (_eval_line(load(root, rf.MANIFEST, parse_manifest)), asr.judge_note) if line]
    cap = load(root, rf.CAPABILITY, parse_capability)
    if not isinstance(cap, Missing):
        out += _capability_lines(cap)
    return "\n".join(out)
