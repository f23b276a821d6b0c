"""Turn :class:`~safeneurons.report.load.RunData` into plain rows and cells for the HTML templates
(strings and numbers only; the templates escape everything they print)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from safeneurons import runformat as rf
from safeneurons.report.load import (
    AsrCell,
    AsrResults,
    BrittlenessCurve,
    CapabilityRow,
    MonitorEval,
    Example,
    ManifestInfo,
    Missing,
    NeuronsData,
    NeuronSetInfo,
    OverRefusal,
    RunData,
    TrainLog,
    TrainResultInfo,
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
    Section("brittleness", "Brittleness"),
    Section("monitor", "Monitor evaluation"),
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
    foreign: bool = False  # absent, and a run of this command never writes it: hidden instead of marked missing


_BASE_SECTIONS = frozenset({"overview", "run", "files"})
_IDENTIFIED = _BASE_SECTIONS | {"neurons", "scores"}
#: The sections each command's run can fill. An absent section outside its command's set is hidden, not shown as
#: "Not in this run"; a command not listed here (or a run without a manifest) shows every section.
COMMAND_SECTIONS: dict[str, frozenset[str]] = {
    "stats": _BASE_SECTIONS,
    "identify": _IDENTIFIED,
    "attack": _IDENTIFIED | {"attack", "categories", "capability", "examples"},
    "brittleness": _IDENTIFIED | {"brittleness", "examples"},
    "train": _IDENTIFIED | {"attack", "categories", "capability", "examples", "training"},
    # training: only with expansion, shown when written
    "multilingual": _BASE_SECTIONS | {"neurons", "multilingual", "examples"},
    "analyze": _BASE_SECTIONS | {"neurons"},
    "monitor-eval": _BASE_SECTIONS | {"neurons", "monitor"},
}


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
    if isinstance(run.brittleness, BrittlenessCurve):
        rows.append(("judge", run.brittleness.judge))
        rows.append((f"neurons to break (ASR \u2265 {100 * run.brittleness.break_asr:.0f}%)",
                     " \u00b7 ".join(f"{m.attacker} {fraction_text(m.fraction)}" +
                                      (f" ({num(m.n_neurons)} neurons)" if m.fraction is not None else "")
                                      for m in run.brittleness.neurons_to_break if m.seed is None) or NA))
    if isinstance(run.monitor_eval, MonitorEval):
        rows.extend(monitor_overview(run.monitor_eval))
    broken = [f.file for f in run.files if f.status in ("unreadable", "invalid")]
    if broken:
        rows.append(("unreadable files", ", ".join(broken) + " (see Files read)"))
    if isinstance(run.train_log, TrainLog):
        drift = training_drift(run)
        rows.append(("frozen-weight drift", NA if drift is None else
                     ("0 (frozen neurons unchanged)" if drift == 0 else f"{drift:.3g} (NOT ZERO)")))
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
    verdicts = run.verdicts
    in_order = False  # the source's order (grid points), not the attack conditions'
    if isinstance(run.examples, dict) and run.examples:
        source, note = run.examples, "from examples.json (completions judged harmful first)"
    elif isinstance(run.verdicts, VerdictSummary) and run.verdicts.examples:
        source, note = run.verdicts.examples, "from verdicts.json (examples.json missing)"
    elif isinstance(run.ml_verdicts, VerdictSummary) and run.ml_verdicts.examples:
        source, verdicts = run.ml_verdicts.examples, run.ml_verdicts
        note = f"from {rf.ML_VERDICTS} (completions judged harmful first, all languages)"
    elif isinstance(run.brittleness, BrittlenessCurve) and (source := brittleness_examples(run.brittleness)):
        note, in_order = f"from {rf.BR_CURVE} (each grid point's replies, judged harmful first)", True
    groups = []
    for cond in list(source) if in_order else sorted(source, key=condition_sort_key):
        items = source[cond]
        counts: dict[str, int] = {}
        for e in items:
            counts[e.label or "unlabelled"] = counts.get(e.label or "unlabelled", 0) + 1
        totals = ""
        if isinstance(verdicts, VerdictSummary) and cond in verdicts.labels:
            tl = verdicts.labels[cond]
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


def fraction_text(fraction: float | None) -> str:
    """A grid point's percentage (``0.25 %``); None: the point was not reached."""
    return "not reached" if fraction is None else f"{fraction:g} %"


def curve_label(attacker: str, seed: int | None) -> str:
    return attacker if seed is None else f"{attacker} seed {seed}"


def brittleness_rows(curve: BrittlenessCurve) -> list[dict[str, str]]:
    """Every grid point: attacker, % zeroed, neurons, ASR with its interval, perplexity, degenerate share."""
    return [{"attacker": p.attacker, "seed": "" if p.seed is None else str(p.seed), "fraction": f"{p.fraction:g}",
             "n_neurons": num(p.n_neurons), "kn": f"{p.cell.k} / {p.cell.n}" if p.cell.k is not None and
             p.cell.n is not None else NA, "asr": pct(p.cell.asr), "ci": ci_text(p.cell),
             "perplexity": num(p.perplexity, 4), "degenerate": pct(p.degenerate_share)} for p in curve.points]


def brittleness_summary(curve: BrittlenessCurve) -> dict[str, list[dict[str, str]]]:
    """Neurons to break (per curve) and where each attacked curve leaves the random band."""
    breaks = [{"curve": curve_label(m.attacker, m.seed), "fraction": fraction_text(m.fraction),
               "n_neurons": num(m.n_neurons) if m.fraction is not None else "\u2014",
               "asr": pct(m.asr) if m.fraction is not None else "\u2014"} for m in curve.neurons_to_break]
    band = [{"attacker": m.attacker, "fraction": "never" if m.fraction is None else fraction_text(m.fraction),
             "n_neurons": num(m.n_neurons) if m.fraction is not None else "\u2014",
             "bounds": f"{pct(m.ci_low)} > {pct(m.random_ci_high)}" if m.fraction is not None else "\u2014"}
            for m in curve.leaves_random_band]
    return {"breaks": breaks, "band": band}


def brittleness_examples(curve: BrittlenessCurve) -> dict[str, list[Example]]:
    """Each grid point's kept replies, by ``<curve> @ <fraction>`` (the unattacked point once)."""
    out: dict[str, list[Example]] = {}
    for p in curve.points:
        if p.examples:
            at = "unattacked" if p.fraction == 0 else curve_label(p.attacker, p.seed)
            out.setdefault(f"{at} @ {fraction_text(p.fraction)}", list(p.examples))
    return out


# ---------------------------------------------------------------------------------------------
# monitor evaluation

DASH = "\u2014"


def _ci_pct(ci: Any) -> str:
    return f"[{100 * ci[0]:.1f}\u2013{100 * ci[1]:.1f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 \
        and all(isinstance(x, (int, float)) for x in ci) else ""


def auc_text(auc: float | None, ci: Any = None) -> str:
    """``0.912 [0.871–0.948]``."""
    if auc is None:
        return NA
    band = f" [{ci[0]:.3f}\u2013{ci[1]:.3f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return f"{auc:.3f}{band}"


def rate_text(k: Any, n: Any, ci: Any = None) -> str:
    """``12 / 60 (20.0%) [11.8–31.8]``."""
    if not isinstance(k, int) or not isinstance(n, int) or not n:
        return NA
    return f"{k} / {n} ({100 * k / n:.1f}%) {_ci_pct(ci)}".rstrip()


def _point_text(p: Any) -> str:
    """A deployed operating point: ``TPR 40.0% [..] / FPR 1.6% [..]``."""
    if not isinstance(p, dict):
        return DASH
    tpr, fpr = p.get("tpr"), p.get("fpr")
    if not isinstance(tpr, (int, float)) or not isinstance(fpr, (int, float)):
        return NA
    return f"{pct(tpr)} {_ci_pct(p.get('tpr_ci'))} / {pct(fpr)} {_ci_pct(p.get('fpr_ci'))}"


def _rates(ev: MonitorEval) -> list[str]:
    return [f"{f:g}" for f in ev.record.fprs]


def _readout_order(ev: MonitorEval) -> dict[str, int]:
    names = [str(r.get("name")) for r in ev.record.readouts if r.get("name")]
    return {n: i for i, n in enumerate(names)}


def _probe_layers(ev: MonitorEval) -> dict[str, Any]:
    return {str(f.get("condition")): f.get("layer") for f in ev.record.fits if f.get("readout") == "PROBE"}


def readout_label(row: Any, ev: MonitorEval) -> str:
    """``FULL``, ``PROBE (layer 14)``, ``RANDOM0 · fitted on ORI`` (a readout applied unchanged to another
    condition)."""
    name = row.readout
    if name == "PROBE":
        layer = _probe_layers(ev).get(row.fitted_on)
        name += f" (layer {layer})" if isinstance(layer, int) else ""
    if name == "REFUSAL" and ev.record.judge:
        name += f" ({ev.record.judge})"
    if row.fitted_on and row.fitted_on != row.condition:
        name += f" \u00b7 fitted on {row.fitted_on}"
    return name


def _sorted_rows(rows: Sequence[Any], ev: MonitorEval) -> list[Any]:
    order = _readout_order(ev)
    return sorted(rows, key=lambda r: (r.fitted_on != r.condition and r.fitted_on != "", order.get(r.readout, 99)))


def _table(title: str, columns: list[str], rows: list[dict[str, Any]], note: str = "", first: str = "readout"
           ) -> dict[str, Any]:
    return {"title": title, "note": note, "first": first, "columns": columns, "rows": rows}


def monitor_overview(ev: MonitorEval) -> list[tuple[str, str]]:
    """The overview's line: each readout's AUROC on the first scored pair of the original model."""
    if not ev.groups or not ev.conditions:
        return []
    cond, group = ev.conditions[0], ev.groups[0]
    rows = _sorted_rows([r for r in ev.record.rows if r.condition == cond and r.group == group
                         and r.fitted_on in (cond, "")], ev)
    return [(f"monitor AUROC ({group}, {cond})", " \u00b7 ".join(f"{r.readout} {r.auroc:.3f}" for r in rows
                                                                  if r.auroc is not None) or NA)]


def monitor_tables(ev: MonitorEval) -> list[dict[str, Any]]:
    """Every table of the Monitor evaluation section (and of ``monitor_eval.md``), in order."""
    rec, rates = ev.record, _rates(ev)
    tables = [_data_table(ev), _fits_table(ev)]
    for cond in ev.conditions:
        for group in ev.groups:
            rows = _sorted_rows([r for r in rec.rows if r.condition == cond and r.group == group], ev)
            if not rows:
                continue
            n = f"{rows[0].n_pos} harmful, {rows[0].n_neg} benign"
            cells = []
            for r in rows:
                at = [rate_text(r.tpr_at_fpr.get(k, {}).get("k"), r.tpr_at_fpr.get(k, {}).get("n"),
                                r.tpr_at_fpr.get(k, {}).get("ci")) for k in rates]
                dep = ([_point_text(r.deployed.get(k)) for k in rates] if "refuses" not in r.deployed
                       else [_point_text(r.deployed["refuses"]) + " (its own point)"] * len(rates))
                delta = r.delta_vs_random
                dtext = (f"{delta['delta']:+.3f} {_ci_num(delta.get('ci'))}".rstrip()
                         if isinstance(delta, dict) and isinstance(delta.get("delta"), (int, float)) else DASH)
                cells.append({"label": readout_label(r, ev), "cells": [auc_text(r.auroc, r.auroc_ci), dtext, *at, *dep]})
            tables.append(_table(
                f"{cond}: {group} ({n}, {rec.split} split)",
                ["AUROC [95% CI]", "\u0394 AUROC vs best random [95% CI]",
                 *[f"TPR at {float(k):.0%} FPR (ROC)" for k in rates],
                 *[f"deployed t({float(k):.0%}): TPR / FPR" for k in rates]], cells,
                "AUROC: stratified bootstrap interval. TPR at x% FPR (ROC): the threshold read off these benign prompts "
                "(an oracle point of the curve). Deployed: the threshold chosen on the validation benign prompts "
                "before scoring; Wilson intervals."))
    tables += _false_alarm_tables(ev) + _multijail_tables(ev) + _survival_tables(ev)
    return tables


def _ci_num(ci: Any) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 and \
        all(isinstance(x, (int, float)) for x in ci) else ""


def _data_table(ev: MonitorEval) -> dict[str, Any]:
    rows = [{"label": str(d.get("source")), "cells": [str(d.get("label", NA)), *(num(d.get(k)) if isinstance(
        d.get(k), int) else NA for k in ("train", "validation", "scored", "removed_identification", "removed_overlap"))]}
        for d in ev.record.data]
    mj = ev.record.multijail
    note = ""
    if mj.get("languages"):
        note = (f"MultiJail: {mj.get('rows', NA)} harmful rows in each of {', '.join(map(str, mj['languages']))}; "
                f"benign side of its AUROC: {mj.get('benign', NA)}.")
    return _table("Prompts", ["label", "train", "validation", "scored", "identification prompts removed",
                              "fit prompts removed"], rows, note, first="source")


def _fits_table(ev: MonitorEval) -> dict[str, Any]:
    rates = _rates(ev)
    rows = []
    for f in ev.record.fits:
        val = f.get("validation") if isinstance(f.get("validation"), dict) else {}
        th = f.get("thresholds") if isinstance(f.get("thresholds"), dict) else {}
        real = val.get("realised_fpr") if isinstance(val.get("realised_fpr"), dict) else {}
        layer = f" (layer {f['layer']})" if isinstance(f.get("layer"), int) else ""
        rows.append({"label": f"{f.get('condition')} \u00b7 {f.get('readout')}{layer}", "cells": [
            f"{f.get('n_train_pos', NA)} / {f.get('n_train_neg', NA)}",
            f"{val.get('n_pos', NA)} / {val.get('n_neg', NA)}", auc_text(val.get("auroc")),
            *[f"{th[k]:.4g} (FPR {pct(real.get(k))})" if isinstance(th.get(k), (int, float)) else NA for k in rates]]})
    skipped = "; ".join(f"{s.get('set')}: {s.get('reason')}" for s in ev.record.skipped)
    notes = [f"Skipped: {skipped}."] if skipped else []
    chosen = next((f["layer_chosen_on"] for f in ev.record.fits if isinstance(f.get("layer_chosen_on"), dict)), None)
    if chosen is not None:
        src = chosen.get("sources")
        notes.append(f"The probe's layer is chosen on the validation prompts of "
                     f"{' vs '.join(map(str, src)) if isinstance(src, list) else src} "
                     f"({chosen.get('n_pos', NA)} harmful / {chosen.get('n_neg', NA)} benign).")
    return _table("Fits (training part; thresholds and probe layer chosen on the validation part)",
                  ["train harmful / benign", "validation harmful / benign", "validation AUROC",
                   *[f"deployed t({float(k):.0%}) (validation FPR)" for k in rates]], rows,
                  " ".join(notes), first="condition \u00b7 readout")


def _false_alarm_tables(ev: MonitorEval) -> list[dict[str, Any]]:
    """Benign prompts flagged at the deployed thresholds, per benign scored source."""
    rec, rates = ev.record, _rates(ev)
    pairs = [g for g in ev.groups if " vs " in g]
    if not pairs:
        return []
    rows = []
    for cond in ev.conditions:
        for r in _sorted_rows([r for r in rec.rows if r.condition == cond and r.group == pairs[0]], ev):
            cells = []
            for g in pairs:
                row = next((x for x in rec.rows if x.condition == cond and x.group == g and x.readout == r.readout
                            and x.fitted_on == r.fitted_on), None)
                for k in (rates if "refuses" not in r.deployed else ["refuses"] * len(rates)):
                    p = row.deployed.get(k) if row is not None else None
                    cells.append(rate_text(p.get("fp"), p.get("n_neg"), p.get("fpr_ci")) if isinstance(p, dict) else DASH)
            rows.append({"label": f"{cond} \u00b7 {readout_label(r, ev)}", "cells": cells})
    cols = [f"{g.split(' vs ', 1)[1]} at t({float(k):.0%})" for g in pairs for k in rates]
    return [_table("False alarms: benign prompts flagged at the deployed thresholds", cols, rows,
                   "Flagged benign prompts (k / n, Wilson interval) per benign source; XSTest's safe prompts look "
                   "harmful and are the hard case. REFUSAL: the model refuses them (over-refusal).",
                   first="condition \u00b7 readout")]


def _multijail_tables(ev: MonitorEval) -> list[dict[str, Any]]:
    rec, langs = ev.record, ev.languages
    if not langs:
        return []
    rate = _rates(ev)[0] if _rates(ev) else None
    out = []
    benign = rec.multijail.get("benign", "")
    for cond in ev.conditions:
        rows = [r for r in rec.rows if r.condition == cond and r.group.startswith("multijail:")]
        names = _sorted_rows(list({(r.readout, r.fitted_on): r for r in rows}.values()), ev)
        flagged, aucs = [], []
        for ref in names:
            per = {r.group.split(":", 1)[1]: r for r in rows if r.readout == ref.readout and r.fitted_on == ref.fitted_on}
            key = "refuses" if "refuses" in ref.deployed else rate
            flagged.append({"label": readout_label(ref, ev), "cells": [
                f"{pct(per[lang].deployed[key]['tpr'])} {_ci_pct(per[lang].deployed[key].get('tpr_ci'))}".rstrip()
                if lang in per and isinstance(per[lang].deployed.get(key), dict) else DASH for lang in langs]})
            aucs.append({"label": readout_label(ref, ev), "cells": [auc_text(per[lang].auroc) if lang in per else DASH
                                                                    for lang in langs]})
        if flagged:
            at = f"t({float(rate):.0%})" if rate else "its threshold"
            out.append(_table(f"{cond}: MultiJail harmful rows flagged at the English {at}", langs, flagged,
                              "Readouts fitted on English prompts only; REFUSAL: the share of rows the model refuses."))
            out.append(_table(f"{cond}: MultiJail AUROC (harmful rows vs {benign})", langs, aucs,
                              "" if "translated" in benign else "Against English benign prompts: a language shift "
                              "alone can move this AUROC."))
    return out


def _survival_tables(ev: MonitorEval) -> list[dict[str, Any]]:
    """Per scored pair (and all): each readout on the original model and on every other condition, applied as
    fitted on ORI and fitted again."""
    rec = ev.record
    if len(ev.conditions) < 2:
        return []
    base, others = ev.conditions[0], ev.conditions[1:]
    rate = _rates(ev)[0] if _rates(ev) else None
    out = []
    for group in ev.groups:
        rows = []
        for name in sorted({r.readout for r in rec.rows}, key=lambda n: _readout_order(ev).get(n, 99)):
            def cell(cond: str, fitted_on: str) -> str:
                r = next((x for x in rec.rows if x.condition == cond and x.group == group and x.readout == name
                          and x.fitted_on == fitted_on), None)
                if r is None:
                    return DASH
                key = "refuses" if "refuses" in r.deployed else rate
                p = r.deployed.get(key) if key else None
                return auc_text(r.auroc, r.auroc_ci) + (f"; TPR {pct(p.get('tpr'))}" if isinstance(p, dict) else "")
            own = "" if name == "REFUSAL" else None
            cells = [cell(base, base if own is None else own)]
            for c in others:
                cells += [cell(c, base) if own is None else DASH, cell(c, c if own is None else own)]
            rows.append({"label": name, "cells": cells})
        cols = [f"{base}"] + [x for c in others for x in (f"{c}: fitted on {base}", f"{c}: refitted")]
        out.append(_table(f"Survival: {group}", cols, rows,
                          f"AUROC [95% CI]; TPR at the deployed t({float(rate):.0%})" if rate else "AUROC [95% CI]"))
    return out


def markdown_tables(title: str, tables: Sequence[dict[str, Any]], footer: str = "") -> str:
    """The tables as Markdown: a heading, each table with its title and note."""
    lines = [f"# {title}", ""]
    for t in tables:
        lines += [f"## {t['title']}", "", "| " + " | ".join([t["first"], *t["columns"]]) + " |",
                  "|" + "---|" * (len(t["columns"]) + 1)]
        lines += ["| " + " | ".join([str(r["label"]), *map(str, r["cells"])]).replace("\n", " ") + " |"
                  for r in t["rows"]]
        if t["note"]:
            lines += ["", t["note"]]
        lines.append("")
    if footer:
        lines += [footer, ""]
    return "\n".join(lines)


def monitor_markdown(ev: MonitorEval) -> str:
    """``monitor_eval.md``: the section's tables, its notes and the judge line."""
    notes = "\n".join(f"- {n}" for n in ev.record.notes)
    footer = "\n\n".join(x for x in (f"Notes:\n\n{notes}" if notes else "", ev.judge_note) if x)
    return markdown_tables("Monitor evaluation", monitor_tables(ev), footer)


def sections_for(run: RunData) -> dict[str, SectionView]:
    """Which sections have data, and the Missing markers to show where they do not."""
    def sv(sid: str, *parts: Any, need_all: bool = False) -> SectionView:
        title = next(s.title for s in SECTIONS if s.id == sid)
        missing = [p for p in parts if isinstance(p, Missing)]
        present = not missing if need_all else len(missing) < len(parts)
        return SectionView(sid, title, missing, present)

    def extra(*parts: Any) -> list[Any]:
        """Optional parts: counted only when there (absent ones are not this run's)."""
        return [p for p in parts if not (isinstance(p, Missing) and p.kind == "absent")]

    examples_src: Any = run.examples
    if isinstance(run.examples, Missing) and isinstance(run.verdicts, VerdictSummary):
        examples_src = run.verdicts
    elif isinstance(run.examples, Missing) and isinstance(run.ml_verdicts, VerdictSummary):
        examples_src = run.ml_verdicts
    elif isinstance(run.examples, Missing) and isinstance(run.brittleness, BrittlenessCurve) \
            and brittleness_examples(run.brittleness):
        examples_src = run.brittleness
    cats: Any = run.asr.by_category if isinstance(run.asr, AsrResults) else run.asr
    subs = list(run.subruns.values())
    sub_cats = [s.asr.by_category for s in subs if isinstance(s.asr, AsrResults)]
    sub_caps = [s.capability for s in subs if not isinstance(s.capability, Missing)]
    trainings = [True if any(p is not None and not isinstance(p, Missing)
                             for p in (t.log, t.result, t.marker, *t.neurons.values())) else t.log
                 for t in run.trainings] or [run.train_log]
    out = {
        "overview": SectionView("overview", "Overview"),
        "run": sv("run", run.manifest),
        "neurons": sv("neurons", run.neurons, *extra(run.analysis)),
        "scores": sv("scores", run.histograms),
        "attack": sv("attack", run.asr, *extra(run.robustness), *run.over_refusal.values(), *([True] if subs else [])),
        "categories": sv("categories", cats, *sub_cats),
        "brittleness": sv("brittleness", run.brittleness),
        "monitor": sv("monitor", run.monitor_eval),
        "capability": sv("capability", run.capability, *extra(run.robustness), *sub_caps),
        "examples": sv("examples", examples_src, *extra(run.ml_completions), *([True] if subs else [])),
        "training": sv("training", *trainings, run.rounds, *extra(run.pairs)),
        "multilingual": sv("multilingual", run.ml_asr, run.ml_overlap, run.ml_counts,
                           *extra(run.ml_correlation, run.ml_causal, run.ml_expansion), *run.ml_overlaps.values(),
                           *run.ml_over_refusal.values(), *run.ml_benign_check.values()),
        "files": SectionView("files", "Files read"),
    }
    if isinstance(run.examples, dict) and not run.examples:
        out["examples"] = SectionView("examples", out["examples"].title,
                                      [Missing("examples.json", "examples.json lists no examples", "invalid")], False)
    produced = COMMAND_SECTIONS.get(run.command)
    if produced is not None:
        for sid, view in out.items():
            view.foreign = (not view.present and sid not in produced
                            and all(m.kind == "absent" for m in view.missing))
    return out


# ---------------------------------------------------------------------------------------------
# runs with more than one model, training and multilingual details


def subrun_links(run: RunData) -> list[dict[str, str]]:
    """A train run's attack of each model: its own run directory and report."""
    out = []
    for name, sub in run.subruns.items():
        rel = rf.attack_dir(name)
        status = sub.manifest.status if isinstance(sub.manifest, ManifestInfo) else "unreadable manifest"
        out.append({"name": name, "href": f"{rel}/{rf.REPORT}", "folder": f"{rel}/", "status": status})
    return out


def robustness_table(run: RunData) -> dict[str, Any] | None:
    """Models x (ASR per condition, FULL / plain DPO, over-refusal) from robustness.json, with each ASR's
    k / n and interval from the model's attack run where it has them."""
    if isinstance(run.robustness, Missing):
        return None
    models = run.robustness
    conds = sorted({c for m in models.values() for c in m.row.asr}, key=condition_sort_key)
    ratio = any(m.row.full_asr_ratio_vs_dpo for m in models.values())
    rows = []
    for name, m in models.items():
        cells = []
        for c in conds:
            cell = m.cells.get(c)
            rate = m.row.asr.get(c)
            cells.append(cell.text if cell is not None else (pct(rate) if isinstance(rate, (int, float)) else "\u2014"))
        if ratio:
            r = m.row.full_asr_ratio_vs_dpo or {}
            ci = r.get("ci") if isinstance(r.get("ci"), list) and len(r.get("ci")) == 2 else None
            cells.append("\u2014" if r.get("ratio") is None else
                         f"{r['ratio']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else ""))
        o = m.row.over_refusal
        cells.append(pct(o) if isinstance(o, (int, float)) else NA)
        rows.append({"model": name, "cells": cells})
    columns = [f"ASR {c}" for c in conds] + (["FULL / plain DPO (95% CI)"] if ratio else []) + ["over-refusal"]
    return {"columns": columns, "rows": rows}


def robustness_capability(run: RunData) -> dict[str, Any] | None:
    """Models x tasks: each model's capability (the task's metric) and its paired difference from the original."""
    if isinstance(run.robustness, Missing):
        return None
    models = run.robustness
    tasks: list[str] = []
    for m in models.values():
        tasks.extend(t for t in m.row.capability if t not in tasks)
    if not tasks:
        return None
    rows = []
    for name, m in models.items():
        cells = []
        for t in tasks:
            v, meta = m.row.capability.get(t), m.row.capability_metric.get(t, {})
            d = (m.row.capability_delta or {}).get(t)
            ci = d.get("ci") if isinstance(d, dict) and isinstance(d.get("ci"), list) and len(d["ci"]) == 2 else None
            delta = (f"; \u0394 {100 * d['delta']:+.1f}" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
                     if isinstance(d, dict) and isinstance(d.get("delta"), (int, float)) else "")
            cells.append("\u2014" if not isinstance(v, (int, float)) else
                         f"{100 * v:.1f}% ({meta.get('metric', 'acc')}, {meta.get('k_shot', '?')}-shot, "
                         f"n = {meta.get('n', '?')}){delta}")
        rows.append({"model": name, "cells": cells})
    return {"columns": tasks, "rows": rows}


def subrun_tables(run: RunData) -> list[dict[str, Any]]:
    """Per model of a train run: its per-category ASR and per-condition capability tables."""
    out = []
    for name, sub in run.subruns.items():
        cats = sub.asr.by_category if isinstance(sub.asr, AsrResults) else None
        out.append({"name": name, "href": f"{rf.attack_dir(name)}/{rf.REPORT}",
                    "categories": category_table(cats) if isinstance(cats, dict) else None,
                    "capability": capability_table(sub.capability) if isinstance(sub.capability, dict) else None})
    return out


def over_refusal_rows(results: dict[str, OverRefusal | Missing]) -> list[dict[str, str]]:
    rows = []
    for name, r in results.items():
        if isinstance(r, Missing):
            rows.append({"name": name, "missing": r.reason})
            continue
        c = AsrCell(r.k, r.n, r.rate, r.ci_lo, r.ci_hi)
        rows.append({"name": name, "kn": f"{r.k} / {r.n}" if r.k is not None and r.n is not None else NA,
                     "rate": pct(r.rate), "ci": ci_text(c), "degenerate": pct(r.degenerate_rate),
                     "prompts": r.prompts, "missing": ""})
    return rows


def training_rows(run: RunData) -> list[dict[str, str]]:
    """One row per training folder: what its log, result and neuron sets say."""
    rows = []
    for t in run.trainings:
        row = {"label": t.label, "folder": t.folder + "/"}
        if isinstance(t.log, TrainLog):
            summary = dict(training_summary(t.log))
            row.update(steps=summary["logged steps"], loss=summary["loss first \u2192 last"],
                       margin=summary["reward margin first \u2192 last"], drift=summary["max |frozen-weight drift|"])
        else:
            row.update(steps=NA, loss=NA, margin=NA, drift=NA)
        res = t.result
        row["kind"] = res.kind if isinstance(res, TrainResultInfo) else NA
        row["fraction"] = pct(res.trainable_fraction, 2) if isinstance(res, TrainResultInfo) else NA
        row["train_loss"] = num(res.train_loss) if isinstance(res, TrainResultInfo) else NA
        held = [f"{k} {s.size:,}" for k, s in t.neurons.items() if isinstance(s, NeuronSetInfo)]
        row["neurons"] = ", ".join(held) or "\u2014"
        row["examples"] = num(t.marker.n_examples) if t.marker is not None and not isinstance(t.marker, Missing) else ""
        problems = [p.reason for p in (t.log, t.result, t.marker, *t.neurons.values())
                    if isinstance(p, Missing) and p.kind != "absent"]
        row["problems"] = "; ".join(problems)
        rows.append(row)
    return rows


def training_drift(run: RunData) -> float | None:
    """The largest frozen-weight drift over every training log (None: no log has drift entries)."""
    drifts = [t.log.max_abs_drift for t in run.trainings if isinstance(t.log, TrainLog) and t.log.max_abs_drift is not None]
    if not drifts and isinstance(run.train_log, TrainLog):
        return run.train_log.max_abs_drift
    return max(drifts) if drifts else None


def causal_rows(run: RunData) -> dict[str, Any] | None:
    if isinstance(run.ml_causal, Missing):
        return None
    baseline, langs, tests = run.ml_causal
    others = sorted({o for t in tests for o in t.versus})
    rows = [{"label": f"{t.condition} \u00b7 {t.outcome}",
             "cells": [num(t.n), pct(t.rate), *[t.versus.get(o, "\u2014") for o in others]]} for t in tests]
    return {"baseline": baseline, "languages": ", ".join(langs),
            "columns": ["n", "rate", *[f"vs {o}: difference in points [95% CI], McNemar p" for o in others]],
            "rows": rows}


def overlap_grid(o: Any) -> dict[str, Any]:
    return {"columns": o.languages,
            "rows": [{"label": lang, "cells": [num(v) for v in row]} for lang, row in zip(o.languages, o.jaccard)]}


def benign_check_table(run: RunData) -> dict[str, Any] | None:
    checks = {k: v for k, v in run.ml_benign_check.items() if isinstance(v, dict)}
    if not checks:
        return None
    langs: list[str] = []
    for v in checks.values():
        langs.extend(lang for lang in v if lang not in langs)
    rows = [{"label": name, "cells": [f"{v[lang][0]} / {v[lang][1]} ({pct(v[lang][0] / v[lang][1])})"
                                      if lang in v and v[lang][1] else "\u2014" for lang in langs]}
            for name, v in checks.items()]
    return {"columns": langs, "rows": rows}


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
