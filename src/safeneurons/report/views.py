"""Turn :class:`~safeneurons.report.load.RunData` into plain rows and cells for the HTML templates
(strings and numbers only; the templates escape everything they print)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from safeneurons.report.load import (
    AsrCell,
    AsrResults,
    CapabilityRow,
    Example,
    ManifestInfo,
    Missing,
    NeuronsData,
    NeuronSetInfo,
    RunData,
    TrainLog,
    VerdictSummary,
    condition_sort_key,
)

NA = "n/a"


@dataclass(frozen=True)
class Section:
    id: str
    title: str


#: Every section of a single-run report, in page order (each is shown, or marked missing).
SECTIONS: tuple[Section, ...] = (
    Section("overview", "Overview"),
    Section("run", "Run manifest"),
    Section("neurons", "Safety neurons"),
    Section("scores", "Score distributions"),
    Section("attack", "Attack success"),
    Section("categories", "Attack success per category"),
    Section("capability", "Capability"),
    Section("examples", "Example completions"),
    Section("training", "Training"),
    Section("multilingual", "Multilingual"),
    Section("files", "Files read"),
)
COMPARE_SECTIONS: tuple[Section, ...] = (
    Section("runs", "Runs compared"),
    Section("attack", "Attack success"),
    Section("neurons", "Safety neurons"),
    Section("scores", "Score distributions"),
    Section("capability", "Capability"),
    Section("training", "Training"),
    Section("multilingual", "Multilingual"),
)


@dataclass
class SectionView:
    id: str
    title: str
    missing: list[Missing] = field(default_factory=list)
    present: bool = True


def pct(x: float | None, digits: int = 1) -> str:
    return NA if x is None else f"{100 * x:.{digits}f}%"


def num(x: float | int | None, digits: int = 3) -> str:
    if x is None:
        return NA
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e15 and digits > 4):
        return f"{int(x):,}"
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or (x != 0 and abs(x) < 1e-3) else f"{x:.{digits}f}"


def ci_text(c: AsrCell | None) -> str:
    if c is None or not c.has_ci:
        return NA
    return f"{100 * c.ci_lo:.1f}\u2013{100 * c.ci_hi:.1f}"  # type: ignore[operator]


def cell_text(c: AsrCell | None) -> str:
    return "\u2014" if c is None else c.text


def main_set(neurons: NeuronsData | Missing) -> NeuronSetInfo | None:
    """The set the attack zeroes in FULL (or the first identified set)."""
    if not isinstance(neurons, NeuronsData):
        return None
    ok = {n: s for n, s in neurons.sets.items() if isinstance(s, NeuronSetInfo)}
    if "FULL" in ok:
        return ok["FULL"]
    return next((s for n, s in ok.items() if not n.startswith("RANDOM")), None)


# ---------------------------------------------------------------------------------------------
# single run


def banner(run: RunData) -> dict[str, str] | None:
    m = run.manifest
    if isinstance(m, Missing):
        return {"level": "warn", "text": f"{m.title}: {m.reason}. The sections below show what else was found."}
    if m.status == "done":
        return None
    if m.status == "failed":
        stage = next((s for s in m.stages if s["status"] == "failed"), None)
        detail = f" at stage '{stage['name']}': {stage['error']}" if stage else ""
        return {"level": "error", "text": f"This run failed{detail}. Results below are partial."}
    return {"level": "warn", "text": f"This run has status '{m.status}' (not finished, or still running): "
                                     "results below may be partial."}


def overview(run: RunData) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("run directory", str(run.path))]
    m = run.manifest
    if isinstance(m, ManifestInfo):
        spec = m.model.get("spec", "")
        name = m.model.get("name", "")
        rows.append(("model", f"{name} ({spec})" if name and spec and name != spec else (name or spec or NA)))
        rows.append(("command / status", f"{m.command} / {m.status}"))
        rows.append(("created / finished", f"{m.created or NA} / {m.finished or NA}"))
        ev = m.data.get("eval")
        if ev:
            rows.append(("evaluation prompts", f"{ev.get('name', NA)} (n = {ev.get('n', NA)})"))
    s = main_set(run.neurons)
    if s is not None:
        rows.append((f"safety neurons ({s.name})", f"{s.size:,}" + (f" = {pct(s.fraction, 2)} of neurons"
                                                                      if s.fraction is not None else "")))
    if isinstance(run.asr, AsrResults):
        rows.append(("judge", run.asr.judge))
        parts = [f"{c} {pct(run.asr.summary[c].asr)}" for c in run.asr.conditions]
        rows.append(("attack success", " \u00b7 ".join(parts)))
    broken = [f.file for f in run.files if f.status in ("unreadable", "invalid")]
    if broken:
        rows.append(("unreadable files", ", ".join(broken) + " (see Files read)"))
    if isinstance(run.train_log, TrainLog):
        ok = run.train_log.drift_ok
        rows.append(("frozen-weight drift", NA if ok is None else
                     ("0 (frozen neurons unchanged)" if ok else f"{run.train_log.max_abs_drift:.3g} (NOT ZERO)")))
    return rows


def neuron_rows(neurons: NeuronsData) -> list[dict[str, str]]:
    rows = []
    for name, s in neurons.sets.items():
        if isinstance(s, Missing):
            rows.append({"name": name, "missing": s.reason})
            continue
        p = s.provenance
        sizes = ", ".join(f"{site}: {s.n_layers}\u00d7{w:,}" for site, w in s.site_sizes.items()) or NA
        rows.append({"name": name, "size": f"{s.size:,}", "fraction": pct(s.fraction, 3),
                     "layers": f"{sum(1 for c in s.per_layer() if c)} / {s.n_layers}",
                     "method": s.method or NA, "criterion": p.get("criterion", p.get("matched_to", "")),
                     "tau_es": p.get("tau_es", ""), "tau_sas": p.get("tau_sas", ""),
                     "position": p.get("position", ""), "sizes": sizes, "missing": ""})
    return rows


def attack_rows(asr: AsrResults) -> list[dict[str, str]]:
    rows = []
    for c in asr.conditions:
        cell = asr.summary[c]
        rows.append({"condition": c, "n_neurons": num(cell.n_neurons) if cell.n_neurons is not None else NA,
                     "fraction": pct(cell.fraction_of_neurons, 3) if cell.fraction_of_neurons is not None else NA,
                     "kn": f"{cell.k} / {cell.n}" if cell.k is not None and cell.n is not None else NA,
                     "asr": pct(cell.asr), "ci": ci_text(cell), "degenerate": num(cell.n_degenerate),
                     "unjudged": num(cell.n_unjudged), "refusal": num(cell.n_refusal)})
    return rows


def category_table(by_cat: dict[str, dict[str, AsrCell]]) -> dict[str, Any]:
    conds = sorted({c for per in by_cat.values() for c in per}, key=condition_sort_key)
    rows = [{"category": cat, "cells": [cell_text(by_cat[cat].get(c)) for c in conds]} for cat in sorted(by_cat)]
    return {"conditions": conds, "rows": rows}


def capability_table(cap: dict[str, CapabilityRow]) -> dict[str, Any]:
    tasks: list[str] = []
    for row in cap.values():
        tasks.extend(t for t in row.tasks if t not in tasks)
    has_ppl = any(r.perplexity is not None for r in cap.values())
    rows = []
    for cond, row in cap.items():
        cells = []
        for t in tasks:
            s = row.tasks.get(t)
            if s is None or s.acc is None:
                cells.append("\u2014")
            else:
                se = f" \u00b1 {s.stderr:.4f}" if s.stderr is not None else ""
                norm = f" (norm {s.acc_norm:.4f})" if s.acc_norm is not None else ""
                n = f", n = {s.n}" if s.n is not None else ""
                metric = f" [{s.metric}]" if s.metric != "acc" else ""
                cells.append(f"{s.acc:.4f}{se}{norm}{metric}{n}")
        if has_ppl:
            cells.append(num(row.perplexity, 4) if row.perplexity is not None else "\u2014")
        rows.append({"condition": cond, "cells": cells})
    return {"columns": tasks + (["perplexity"] if has_ppl else []), "rows": rows}


@dataclass(frozen=True)
class ExampleGroup:
    condition: str
    items: list[Example]
    labels: str  # e.g. "3 shown; compliance 2, refusal 1"


def example_groups(run: RunData) -> tuple[list[ExampleGroup], str]:
    """Examples per condition and where they came from."""
    source: dict[str, list[Example]] = {}
    note = ""
    if isinstance(run.examples, dict) and run.examples:
        source, note = run.examples, "from examples.json (completions judged harmful first)"
    elif isinstance(run.verdicts, VerdictSummary) and run.verdicts.examples:
        source, note = run.verdicts.examples, "from verdicts.json (examples.json missing)"
    groups = []
    for cond in sorted(source, key=condition_sort_key):
        items = source[cond]
        counts: dict[str, int] = {}
        for e in items:
            counts[e.label or "unlabelled"] = counts.get(e.label or "unlabelled", 0) + 1
        totals = ""
        if isinstance(run.verdicts, VerdictSummary) and cond in run.verdicts.labels:
            tl = run.verdicts.labels[cond]
            totals = "; all judged: " + ", ".join(f"{k} {v}" for k, v in sorted(tl.items()))
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        groups.append(ExampleGroup(cond, items, f"{len(items)} shown ({shown}){totals}"))
    return groups, note


def training_summary(log: TrainLog) -> list[tuple[str, str]]:
    last = log.steps[-1]
    losses = [s.loss for s in log.steps if s.loss is not None]
    margins = [s.margin for s in log.steps if s.margin is not None]
    return [("logged steps", f"{len(log.steps)} (last step {num(last.step, 6)})"),
            ("loss first \u2192 last", f"{num(losses[0])} \u2192 {num(losses[-1])}" if losses else NA),
            ("reward margin first \u2192 last", f"{num(margins[0])} \u2192 {num(margins[-1])}" if margins else NA),
            ("max |frozen-weight drift|", NA if log.max_abs_drift is None else
             (f"{log.max_abs_drift:.3g} \u2014 must be 0" if log.max_abs_drift else "0 (bit-identical)"))]


def language_table(ml: dict[str, dict[str, AsrCell]]) -> dict[str, Any]:
    conds = list(ml)
    langs: list[str] = []
    for per in ml.values():
        langs.extend(lang for lang in per if lang not in langs)
    return {"conditions": conds,
            "rows": [{"language": lang, "cells": [cell_text(ml[c].get(lang)) for c in conds]} for lang in langs]}


def sections_for(run: RunData) -> dict[str, SectionView]:
    """Which sections have data, and the Missing markers to show where they do not."""
    def sv(sid: str, *parts: Any, need_all: bool = False) -> SectionView:
        title = next(s.title for s in SECTIONS if s.id == sid)
        missing = [p for p in parts if isinstance(p, Missing)]
        present = not missing if need_all else len(missing) < len(parts)
        return SectionView(sid, title, missing, present)

    examples_src: Any = run.examples
    if isinstance(run.examples, Missing) and isinstance(run.verdicts, VerdictSummary):
        examples_src = run.verdicts
    cats: Any = run.asr.by_category if isinstance(run.asr, AsrResults) else run.asr
    out = {
        "overview": SectionView("overview", "Overview"),
        "run": sv("run", run.manifest),
        "neurons": sv("neurons", run.neurons),
        "scores": sv("scores", run.histograms),
        "attack": sv("attack", run.asr),
        "categories": sv("categories", cats),
        "capability": sv("capability", run.capability),
        "examples": sv("examples", examples_src),
        "training": sv("training", run.train_log, run.rounds),
        "multilingual": sv("multilingual", run.ml_asr, run.ml_overlap, run.ml_counts),
        "files": SectionView("files", "Files read"),
    }
    if isinstance(run.examples, dict) and not run.examples:
        out["examples"] = SectionView("examples", out["examples"].title,
                                      [Missing("examples.json", "examples.json lists no examples", "invalid")], False)
    return out


# ---------------------------------------------------------------------------------------------
# comparison


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Directory names, made unique with the parent folder (then a number) where they clash."""
    labels = [r.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.path.resolve().parent.name}/{r.name}" for r in runs]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} ({seen[lab]})")
    return out


def compare_facts(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    keys = ["model", "command / status", "created / finished", "evaluation prompts", "judge"]
    per_run = [dict(overview(r)) for r in runs]
    rows = [{"label": k, "cells": [p.get(k, NA) for p in per_run]} for k in keys]
    sets = []
    for r in runs:
        s = main_set(r.neurons)
        sets.append(f"{s.name}: {s.size:,} ({pct(s.fraction, 2)})" if s else NA)
    rows.append({"label": "safety neurons", "cells": sets})
    env = []
    for r in runs:
        e = r.manifest.environment if isinstance(r.manifest, ManifestInfo) else {}
        keys = ("safeneurons", "libraries.torch", "machine")
        env.append(" \u00b7 ".join(f"{k} {e[k]}" for k in keys if k in e) or NA)
    rows.append({"label": "versions", "cells": env})
    return rows


def compare_asr(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    conds = sorted({c for r in runs if isinstance(r.asr, AsrResults) for c in r.asr.summary}, key=condition_sort_key)
    def cell(r: RunData, c: str) -> str:
        if isinstance(r.asr, AsrResults):
            return cell_text(r.asr.summary.get(c))
        return "not in run" if r.asr.kind == "absent" else "unreadable"

    return [{"label": c, "cells": [cell(r, c) for r in runs]} for c in conds]


def compare_neurons(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    names: list[str] = []
    for r in runs:
        if isinstance(r.neurons, NeuronsData):
            names.extend(n for n in r.neurons.sets if n not in names)
    rows = []
    for n in names:
        cells = []
        for r in runs:
            s = r.neurons.sets.get(n) if isinstance(r.neurons, NeuronsData) else None
            cells.append(f"{s.size:,} ({pct(s.fraction, 3)})" if isinstance(s, NeuronSetInfo) else "\u2014")
        rows.append({"label": n, "cells": cells})
    return rows


def compare_capability(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    keys: list[tuple[str, str]] = []
    for r in runs:
        if isinstance(r.capability, dict):
            for cond, row in r.capability.items():
                keys.extend((cond, t) for t in row.tasks if (cond, t) not in keys)
                if row.perplexity is not None and (cond, "perplexity") not in keys:
                    keys.append((cond, "perplexity"))
    rows = []
    for cond, task in keys:
        cells = []
        for r in runs:
            row = r.capability.get(cond) if isinstance(r.capability, dict) else None
            if row is None:
                cells.append("\u2014")
            elif task == "perplexity":
                cells.append(num(row.perplexity, 4))
            else:
                s = row.tasks.get(task)
                cells.append("\u2014" if s is None or s.acc is None else
                             f"{s.acc:.4f}" + (f" \u00b1 {s.stderr:.4f}" if s.stderr is not None else ""))
        rows.append({"label": f"{cond} \u00b7 {task}", "cells": cells})
    return rows


def compare_training(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    per = [dict(training_summary(r.train_log)) if isinstance(r.train_log, TrainLog) else {} for r in runs]
    keys: list[str] = []
    for p in per:
        keys.extend(k for k in p if k not in keys)
    return [{"label": k, "cells": [p.get(k, "\u2014") for p in per]} for k in keys]


def compare_languages(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    keys: list[tuple[str, str]] = []
    for r in runs:
        if isinstance(r.ml_asr, dict):
            for cond, per in r.ml_asr.items():
                keys.extend((cond, lang) for lang in per if (cond, lang) not in keys)
    return [{"label": f"{cond} \u00b7 {lang}",
             "cells": [cell_text(r.ml_asr.get(cond, {}).get(lang)) if isinstance(r.ml_asr, dict) else "\u2014"
                       for r in runs]} for cond, lang in keys]
