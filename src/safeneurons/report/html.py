"""Build ``report.html`` for a run directory and ``compare.html`` for several.

The pages are self-contained: CSS inline, no scripts, no external fonts or images, and a
Content-Security-Policy that forbids loading anything but ``data:`` images. Every figure is written as
a PNG file under ``figures/`` next to the page *and* embedded as a base64 data URI, so the HTML file
works on its own. Jinja2 autoescaping is on: model prompts and completions are always escaped."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jinja2
from matplotlib.figure import Figure

from safeneurons import runformat as rf
from safeneurons.errors import DataError
from safeneurons.io import package_version, write_text_atomic
from safeneurons.report import plots, views
from safeneurons.report.load import (
    AsrResults,
    BrittlenessCurve,
    Missing,
    MonitorEval,
    NeuronsData,
    NeuronSetInfo,
    RunData,
    ScoreHistograms,
    TrainLog,
    load_run,
)

log = logging.getLogger("safeneurons.report")

TEMPLATES = Path(__file__).parent / "templates"
REPORT_FILE = "report.html"
COMPARE_FILE = "compare.html"
FIG_DIR = "figures"

#: Figure files a single-run report may write (removed when a rebuild no longer draws them).
REPORT_FIGURES = ("neurons_per_layer", "score_distributions", "attack_asr", "category_asr", "brittleness_curve",
                  "monitor_roc", "capability", "training_curves", "training_rounds", "language_asr", "language_overlap",
                  "language_counts")
MAX_SET_PANELS = 8  # neuron sets drawn per layer (a multilingual run has four per language)
COMPARE_FIGURES = ("compare_attack_asr", "compare_neurons_per_layer", "compare_score_distributions",
                   "compare_capability", "compare_training_curves", "compare_language_asr")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.tests["missing"] = lambda x: isinstance(x, Missing)
    return env


class FigureSet:
    """Draws figures into ``fig_dir``; a figure that fails becomes a Missing marker, never an error."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.fig_dir = out_dir / FIG_DIR
        self.made: dict[str, plots.FigureRef | Missing] = {}

    def draw(self, name: str, make: Callable[[], Figure], caption: str, alt: str) -> None:
        rel = f"{FIG_DIR}/{name}.png"
        try:
            with plots.style():
                fig = make()
                self.made[name] = plots.save_figure(fig, self.fig_dir / f"{name}.png", rel, caption, alt)
        except Exception as exc:  # noqa: BLE001 - one bad figure must not cost the whole report
            log.warning("report: figure %s failed (%s: %s)", name, type(exc).__name__, exc)
            self.made[name] = Missing(rel, f"the figure could not be drawn ({type(exc).__name__}: {exc})", "invalid")

    def remove_stale(self, names: Sequence[str]) -> None:
        for name in names:
            p = self.fig_dir / f"{name}.png"
            if name not in self.made and p.is_file():
                try:
                    p.unlink()
                except OSError:
                    pass

    def get(self, name: str) -> plots.FigureRef | Missing | None:
        return self.made.get(name)


def draw_run_figures(run: RunData, figs: FigureSet) -> None:
    if isinstance(run.neurons, NeuronsData):
        sets = {n: s for n, s in run.neurons.sets.items()
                if isinstance(s, NeuronSetInfo) and not n.startswith("RANDOM")}
        if not sets:  # only random sets survived
            sets = {n: s for n, s in run.neurons.sets.items() if isinstance(s, NeuronSetInfo)}
        identified = {n: s for n, s in sets.items() if "/" not in n}
        if identified:  # the run's identified sets; else per-language SS sets or per-category sets first
            sets = identified
        sets = dict(list(sets.items())[:MAX_SET_PANELS])
        if sets:
            figs.draw("neurons_per_layer", lambda: plots.fig_neurons_per_layer(sets),
                      "Safety neurons per layer, stacked by site, for each identified set (matched RANDOM sets have "
                      "FULL's per-layer counts).", "bar charts of neuron counts per layer")
    if isinstance(run.histograms, ScoreHistograms):
        h = run.histograms
        figs.draw("score_distributions", lambda: plots.fig_score_distributions(h),
                  "Distribution of the ES effect size and the SAS layer z-score over all neurons (log scale); dashed "
                  "lines are the thresholds, the shaded side is selected. Lower panels: the largest score in each "
                  "layer.", "histograms of ES and SAS scores with thresholds")
    if isinstance(run.asr, AsrResults):
        a = run.asr
        figs.draw("attack_asr", lambda: plots.fig_attack(a.summary),
                  f"Attack success rate (judge: {a.judge}) per condition: ORI = no pruning, ES / SAS / FULL = that "
                  "neuron set zeroed, RANDOM<seed> = a random set with FULL's per-layer counts. Error bars: 95% Wilson "
                  "intervals.", "bar chart of attack success per condition")
        if isinstance(a.by_category, dict):
            cats = a.by_category
            figs.draw("category_asr", lambda: plots.fig_categories(cats),
                      "Attack success per harm category and condition (95% Wilson intervals).",
                      "bar chart of attack success per category")
    if isinstance(run.brittleness, BrittlenessCurve):
        curve = run.brittleness
        figs.draw("brittleness_curve", lambda: plots.fig_brittleness(curve),
                  f"Attack success (judge: {curve.judge}) against the percent of {curve.site} neurons zeroed: "
                  "one-shot (the top of one identification ranking), iterative (re-identified with the chosen set "
                  "zeroed) and random sets matched to each (dashed; the band spans every seed's interval). Bands: "
                  "95% Wilson intervals; dotted: the break threshold; dash-dotted: the identified set's size. Lower "
                  "panels: the share of degenerate replies and the perplexity of benign text.",
                  "line charts of attack success, degenerate replies and perplexity against neurons zeroed")
    if isinstance(run.monitor_eval, MonitorEval) and run.monitor_eval.record.curves:
        ev = run.monitor_eval
        rates = " and ".join(f"{f:.0%}" for f in ev.record.fprs)
        figs.draw("monitor_roc", lambda: plots.fig_monitor_roc(ev),
                  "ROC curves of every readout on the held-out prompts of each scored pair (rows: conditions). Solid: "
                  "fitted on that condition; dashed: fitted on the original model and applied unchanged. Markers: the "
                  f"operating points of the thresholds chosen on validation benign prompts for {rates} FPR (circle, "
                  "square); dotted lines: those rates; cross: the model's own refusal. FPR axis: linear up to the smallest "
                  "rate, logarithmic above.",
                  "ROC curves of the monitors, random sets, residual probe and refusal")
    if isinstance(run.capability, dict):
        cap = run.capability
        figs.draw("capability", lambda: plots.fig_capability(cap),
                  "Capability per condition: multiple-choice accuracy (\u00b1 stderr) and perplexity on benign text.",
                  "bar charts of capability per condition")
    logs = {t.label: t.log for t in run.trainings if isinstance(t.log, TrainLog)}
    if not logs and isinstance(run.train_log, TrainLog):
        logs = {run.name: run.train_log}
    if logs:
        figs.draw("training_curves", lambda: plots.fig_training(logs),
                  "Training: loss, reward margin and the largest absolute change of any frozen weight (must stay 0).",
                  "training curves")
    if isinstance(run.rounds, list):
        rounds = run.rounds
        figs.draw("training_rounds", lambda: plots.fig_rounds(rounds),
                  "Iterative rounds: safety-neuron count and FULL(SN\u2212) attack success after each round.",
                  "neuron counts and attack success per round")
    if isinstance(run.ml_asr, dict):
        ml = run.ml_asr
        figs.draw("language_asr", lambda: plots.fig_languages(ml),
                  "Attack success per language for each condition (e.g. original / suppressed / expanded).",
                  "bar chart of attack success per language")
    if not isinstance(run.ml_overlap, Missing):
        ov = run.ml_overlap
        figs.draw("language_overlap", lambda: plots.fig_overlap(ov),
                  "Jaccard overlap between the languages' MS-Neuron sets.", "heatmap of set overlaps")
    if isinstance(run.ml_counts, dict):
        mc = run.ml_counts
        figs.draw("language_counts", lambda: plots.fig_ml_counts(mc),
                  "MS- and SS-Neurons per language (SS = shared with English).",
                  "bar chart of neuron counts per language")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def render_report(run: RunData, figures: Mapping[str, plots.FigureRef | Missing]) -> str:
    groups, examples_note = views.example_groups(run)
    ctx: dict[str, Any] = {
        "title": f"safeneurons report: {run.name}",
        "run": run,
        "generated": _now(),
        "version": package_version(),
        "sections": views.sections_for(run),
        "order": [s.id for s in views.SECTIONS],
        "banner": views.banner(run),
        "overview": views.overview(run),
        "figures": figures,
        "neuron_rows": views.neuron_rows(run.neurons) if isinstance(run.neurons, NeuronsData) else [],
        "attack_rows": views.attack_rows(run.asr) if isinstance(run.asr, AsrResults) else [],
        "category_table": views.category_table(run.asr.by_category)
        if isinstance(run.asr, AsrResults) and isinstance(run.asr.by_category, dict) else None,
        "capability_table": views.capability_table(run.capability) if isinstance(run.capability, dict) else None,
        "example_groups": groups,
        "examples_note": examples_note,
        "training_summary": views.training_summary(run.train_log) if isinstance(run.train_log, TrainLog) else [],
        "language_table": views.language_table(run.ml_asr) if isinstance(run.ml_asr, dict) else None,
        "subrun_links": views.subrun_links(run),
        "subrun_tables": views.subrun_tables(run),
        "robustness_table": views.robustness_table(run),
        "robustness_capability": views.robustness_capability(run),
        "over_refusal_rows": views.over_refusal_rows(run.over_refusal),
        "training_rows": views.training_rows(run),
        "training_drift": views.training_drift(run),
        "causal": views.causal_rows(run),
        "ml_overlap_grids": {k: o if isinstance(o, Missing) else views.overlap_grid(o) for k, o in run.ml_overlaps.items()},
        "ml_over_refusal_rows": views.over_refusal_rows(run.ml_over_refusal),
        "benign_check": views.benign_check_table(run),
        "brittleness_rows": views.brittleness_rows(run.brittleness)
        if isinstance(run.brittleness, BrittlenessCurve) else [],
        "brittleness_summary": views.brittleness_summary(run.brittleness)
        if isinstance(run.brittleness, BrittlenessCurve) else None,
        "monitor_tables": views.monitor_tables(run.monitor_eval) if isinstance(run.monitor_eval, MonitorEval) else [],
    }
    return environment().get_template("report.html.j2").render(**ctx)


def build_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``report.html`` (and ``figures/*.png``) for ``run_dir``; returns the HTML path.

    Missing, truncated or malformed result files never fail the build: their sections say what is
    missing and why. Only a ``run_dir`` that does not exist (or is not a folder) is an error. A train run's
    ``attack-<model>/`` runs get reports of their own (under ``out`` at the same relative paths), which
    this one links."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"run directory {root} does not exist or is not a folder; give a folder written by a "
                        "safeneurons command (it holds manifest.json).")
    out_dir = Path(out) if out is not None else root
    out_dir.mkdir(parents=True, exist_ok=True)
    run = load_run(root)
    _write_report(run, out_dir)
    for name, sub in run.subruns.items():
        _write_report(sub, out_dir / rf.attack_dir(name))
    path = out_dir / REPORT_FILE
    log.info("report written to %s", path)
    return path


def _write_report(run: RunData, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = FigureSet(out_dir)
    draw_run_figures(run, figs)
    figs.remove_stale(REPORT_FIGURES)
    return write_text_atomic(out_dir / REPORT_FILE, render_report(run, figs.made))


def _relative_link(target: Path, start: Path) -> str | None:
    try:
        return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()
    except ValueError:  # different drives on Windows
        return None


def compare_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write ``compare.html`` (and ``figures/compare_*.png``) into ``out`` for two or more run directories:
    side-by-side tables and overlaid plots. Returns the HTML path."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise DataError(f"compare needs at least two run directories, got {len(paths)}.")
    bad = [str(p) for p in paths if not p.is_dir()]
    if bad:
        raise DataError(f"not a run directory (no such folder): {', '.join(bad)}.")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p) for p in paths]
    labels = views.run_labels(runs)
    by_label = dict(zip(labels, runs))
    figs = FigureSet(out_dir)

    asr = {lab: r.asr.summary for lab, r in by_label.items() if isinstance(r.asr, AsrResults)}
    if asr:
        figs.draw("compare_attack_asr", lambda: plots.fig_compare_attack(asr),
                  "Attack success per condition, one bar per run (95% Wilson intervals).",
                  "grouped bar chart of attack success per condition and run")
    mains = {lab: s for lab, r in by_label.items() if (s := views.main_set(r.neurons)) is not None}
    if mains:
        figs.draw("compare_neurons_per_layer", lambda: plots.fig_compare_neurons(mains),
                  "Safety neurons per layer (main set of each run), overlaid.", "line chart of neurons per layer")
    hists = {lab: r.histograms for lab, r in by_label.items() if isinstance(r.histograms, ScoreHistograms)}
    if hists:
        figs.draw("compare_score_distributions", lambda: plots.fig_compare_scores(hists),
                  "ES and SAS score distributions (normalised), overlaid; dashed lines are each run's thresholds.",
                  "overlaid histograms")
    caps = {lab: r.capability for lab, r in by_label.items() if isinstance(r.capability, dict)}
    if caps:
        figs.draw("compare_capability", lambda: plots.fig_compare_capability(caps),
                  "Capability accuracy per condition and task, one bar per run.", "grouped bar chart of accuracy")
    logs = {lab: r.train_log for lab, r in by_label.items() if isinstance(r.train_log, TrainLog)}
    if logs:
        figs.draw("compare_training_curves", lambda: plots.fig_training(logs),
                  "Training curves overlaid (loss, reward margin, frozen-weight drift).", "overlaid training curves")
    mls = {lab: r.ml_asr for lab, r in by_label.items() if isinstance(r.ml_asr, dict)}
    if mls:
        figs.draw("compare_language_asr", lambda: plots.fig_compare_languages(mls),
                  "Attack success per language, one panel per condition, one bar per run.",
                  "grouped bar charts of attack success per language")
    figs.remove_stale(COMPARE_FIGURES)

    run_rows = []
    for lab, r in by_label.items():
        rep = r.path / REPORT_FILE
        run_rows.append({"label": lab, "path": str(r.path), "model": r.model_name,
                         "report": _relative_link(rep, out_dir) if rep.is_file() else None,
                         "missing": [f.file for f in r.files if f.status != "ok"]})
    ctx: dict[str, Any] = {
        "title": "safeneurons comparison: " + " vs ".join(labels),
        "generated": _now(),
        "version": package_version(),
        "labels": labels,
        "runs": run_rows,
        "sections": views.COMPARE_SECTIONS,
        "figures": figs.made,
        "tables": {
            "runs": views.compare_facts(runs),
            "attack": views.compare_asr(runs),
            "neurons": views.compare_neurons(runs),
            "scores": [],
            "capability": views.compare_capability(runs),
            "training": views.compare_training(runs),
            "multilingual": views.compare_languages(runs),
        },
        "section_figures": {
            "attack": ["compare_attack_asr"], "neurons": ["compare_neurons_per_layer"],
            "scores": ["compare_score_distributions"], "capability": ["compare_capability"],
            "training": ["compare_training_curves"], "multilingual": ["compare_language_asr"], "runs": [],
        },
        "absent": {
            "attack": "no run has asr.json", "neurons": "no run has neuron sets",
            "scores": f"no run has {rf.HISTOGRAMS}", "capability": f"no run has {rf.CAPABILITY}",
            "training": f"no run has a training log (<method>/{rf.TRAIN_LOG})",
            "multilingual": f"no run has {rf.ML_ASR}",
        },
    }
    html = environment().get_template("compare.html.j2").render(**ctx)
    path = write_text_atomic(out_dir / COMPARE_FILE, html)
    log.info("comparison written to %s", path)
    return path
