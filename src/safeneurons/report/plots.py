"""Report figures (matplotlib, Agg, no pyplot state): each ``fig_*`` takes typed data from
:mod:`safeneurons.report.load` and returns a :class:`matplotlib.figure.Figure`; :func:`save_figure`
writes it as a PNG file and returns its base64 data URI as well.

Text from run files (condition, category and language names) is drawn literally: mathtext is
switched off, so a ``$`` in a category name cannot break a figure."""

from __future__ import annotations

import base64
import io
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from safeneurons.io import atomic_path
from safeneurons.report.load import (
    AsrCell,
    BrittlenessCurve,
    CapabilityRow,
    LanguageCounts,
    Missing,
    MonitorEval,
    NeuronSetInfo,
    Overlap,
    Round,
    ScoreHistograms,
    TrainLog,
    condition_family,
    condition_sort_key,
)

log = logging.getLogger("safeneurons.report")

DPI = 110
BASE_COLORS = {"ORI": "#4C72B0", "ES": "#DD8452", "SAS": "#55A868", "FULL": "#C44E52", "RANDOM": "#8172B3"}
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
           "#64B5CD")
SITE_COLORS = {"mlp": "#4C72B0", "q": "#DD8452", "k": "#55A868", "v": "#C44E52", "o": "#8172B3"}
RC = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 10, "axes.spines.top": False,
      "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "axes.axisbelow": True,
      "figure.dpi": DPI, "savefig.dpi": DPI, "legend.fontsize": 8, "legend.frameon": False}


@dataclass(frozen=True)
class FigureRef:
    """A written figure: ``file`` relative to the HTML page, plus the same PNG as a data URI."""

    name: str
    file: str
    data_uri: str
    caption: str
    alt: str


@contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(RC):
        yield


def color_for(name: str, i: int = 0) -> str:
    fam = condition_family(name)
    if fam in BASE_COLORS and fam != "RANDOM":
        return BASE_COLORS[fam]
    if fam == "RANDOM":
        shades = ("#8172B3", "#A89BD0", "#5F4F96", "#C3B9E3")
        digits = name[len("RANDOM"):]
        return shades[int(digits) % len(shades)] if digits.isdigit() else shades[0]
    return PALETTE[i % len(PALETTE)]


KEYWORD_COLORS = (("orig", "#4C72B0"), ("base", "#4C72B0"), ("suppress", "#C44E52"), ("ablat", "#C44E52"),
                  ("expand", "#55A868"), ("reinforc", "#55A868"), ("scale", "#55A868"), ("random", "#8172B3"))


def series_colors(names: Sequence[str]) -> dict[str, str]:
    """Fixed colours for the attack conditions; by keyword (original / suppressed / expanded) otherwise."""
    out: dict[str, str] = {}
    others = 0
    used: set[str] = set()
    for n in names:
        kw = next((c for k, c in KEYWORD_COLORS if k in n.lower()), None)
        if condition_family(n) in BASE_COLORS:
            out[n] = color_for(n)
        elif kw is not None and kw not in used:
            out[n] = kw
            used.add(kw)
        else:
            out[n] = PALETTE[(others + 5) % len(PALETTE)]
            others += 1
    return out


def run_colors(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


#: colours kept per figure: plots hold a few line and fill colours plus their anti-aliasing, so an adaptive palette
#: of this size looks the same and makes each PNG (and its copy embedded in report.html) about a third as large
PALETTE_COLORS = 128


def _palette_png(data: bytes) -> bytes:
    """``data`` (an RGBA PNG from matplotlib) as an optimised palette PNG (median-cut, deterministic)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB").quantize(colors=PALETTE_COLORS,
                                                                  method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def save_figure(fig: Figure, path: Path, rel: str, caption: str, alt: str) -> FigureRef:
    """Write ``fig`` to ``path`` atomically (a palette PNG, :func:`_palette_png`) and return a reference with its
    data URI."""
    buf = io.BytesIO()
    with style():
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    data = _palette_png(buf.getvalue())
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return FigureRef(path.stem, rel, "data:image/png;base64," + base64.b64encode(data).decode("ascii"), caption, alt)


def _short(s: str, n: int = 28) -> str:
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def log_y(ax) -> None:
    """Log y axis with plain tick labels (mathtext is off, so the default 10^k labels would not render)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _pct_axis(ax, axis: str = "y", top: float = 112.0) -> None:
    """0-100 % ticks, with headroom above 100 for the k/n labels."""
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, top)
    (ax.set_yticks if axis == "y" else ax.set_xticks)(range(0, 101, 20))
    (ax.set_ylabel if axis == "y" else ax.set_xlabel)("attack success rate (%)")


def _int_x(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ---------------------------------------------------------------------------------------------
# grouped bars with Wilson intervals (attack, categories, languages, comparisons)


def grouped_asr_bars(ax, groups: Sequence[str], series: Mapping[str, Mapping[str, AsrCell]],
                     colors: Mapping[str, str], horizontal: bool = False, annotate: bool = True) -> None:
    """``series[name][group]`` -> one bar per (group, series) with its 95% interval as error bar."""
    names = list(series)
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        pos, val, err_lo, err_hi, texts = [], [], [], [], []
        for i, g in enumerate(groups):
            cell = series[name].get(g)
            if cell is None or cell.asr is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            pos.append(x)
            val.append(100 * cell.asr)
            lo = cell.ci_lo if cell.ci_lo is not None else cell.asr
            hi = cell.ci_hi if cell.ci_hi is not None else cell.asr
            err_lo.append(max(0.0, 100 * (cell.asr - lo)))
            err_hi.append(max(0.0, 100 * (hi - cell.asr)))
            texts.append(f"{cell.k}/{cell.n}" if cell.k is not None and cell.n is not None else "")
        if not pos:
            continue
        kw = dict(color=colors.get(name, "#888"), label=_short(name, 40), edgecolor="white", linewidth=0.5)
        if horizontal:
            ax.barh(pos, val, height=width, xerr=[err_lo, err_hi], capsize=2, ecolor="#333", **kw)
        else:
            ax.bar(pos, val, width=width, yerr=[err_lo, err_hi], capsize=2, ecolor="#333", **kw)
        if annotate and len(groups) * len(names) <= 24:
            for x, v, eh, t in zip(pos, val, err_hi, texts):
                if t:
                    if horizontal:
                        ax.text(min(v + eh + 1, 103), x, t, va="center", fontsize=7, color="#333")
                    else:
                        ax.text(x, min(v + eh + 1.5, 102), t, ha="center", va="bottom", fontsize=7, color="#333")
    ticks = list(range(len(groups)))
    labels = [_short(g, 40 if horizontal else 28) for g in groups]
    if horizontal:
        ax.set_yticks(ticks, labels)
        ax.invert_yaxis()
        _pct_axis(ax, "x")
        ax.grid(axis="y", visible=False)
    else:
        ax.set_xticks(ticks, labels, rotation=30 if max((len(x) for x in labels), default=0) > 8 else 0,
                      ha="right" if max((len(x) for x in labels), default=0) > 8 else "center")
        _pct_axis(ax, "y")
        ax.grid(axis="x", visible=False)


def fig_attack(summary: Mapping[str, AsrCell]) -> Figure:
    """ASR per condition (ORI / ES / SAS / FULL / RANDOM...) with Wilson 95% intervals."""
    conds = sorted(summary, key=condition_sort_key)
    fig = Figure(figsize=(max(5.0, 1.1 * len(conds) + 2), 3.6))
    ax = fig.add_subplot()
    colors = series_colors(conds)
    for i, c in enumerate(conds):
        cell = summary[c]
        grouped_asr_bars_single(ax, i, cell, colors[c])
    labels = []
    for c in conds:
        cell = summary[c]
        sub = ""
        if cell.n_neurons:
            sub = f"\n{cell.n_neurons:,} zeroed"
            if cell.fraction_of_neurons:
                sub += f"\n({100 * cell.fraction_of_neurons:.2f}%)"
        labels.append(_short(c, 14) + sub)
    ax.set_xticks(range(len(conds)), labels)
    _pct_axis(ax)
    ax.grid(axis="x", visible=False)
    ax.set_title("Attack success rate per condition (95% Wilson interval; k/n above bars)")
    fig.tight_layout()
    return fig


def grouped_asr_bars_single(ax, x: float, cell: AsrCell, color: str) -> None:
    if cell.asr is None:
        ax.text(x, 2, "n/a", ha="center", fontsize=8, color="#666")
        return
    lo = cell.ci_lo if cell.ci_lo is not None else cell.asr
    hi = cell.ci_hi if cell.ci_hi is not None else cell.asr
    ax.bar([x], [100 * cell.asr], width=0.65, color=color, yerr=[[100 * (cell.asr - lo)], [100 * (hi - cell.asr)]],
           capsize=4, ecolor="#333", edgecolor="white")
    if cell.k is not None and cell.n is not None:
        ax.text(x, min(100 * hi + 1.5, 102), f"{cell.k}/{cell.n}", ha="center", va="bottom", fontsize=8)


def fig_categories(by_cat: Mapping[str, Mapping[str, AsrCell]]) -> Figure:
    cats = sorted(by_cat)
    conds = sorted({c for per in by_cat.values() for c in per}, key=condition_sort_key)
    series = {c: {cat: by_cat[cat][c] for cat in cats if c in by_cat[cat]} for c in conds}
    fig = Figure(figsize=(7.5, max(2.5, 0.28 * len(cats) * max(1, len(conds)) ** 0.7 + 1.2)))
    ax = fig.add_subplot()
    grouped_asr_bars(ax, cats, series, series_colors(conds), horizontal=True, annotate=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="condition")
    ax.set_title("Attack success rate per category (95% Wilson interval)")
    fig.tight_layout()
    return fig


def fig_languages(ml: Mapping[str, Mapping[str, AsrCell]], title: str = "Attack success rate per language") -> Figure:
    conds = list(ml)
    langs: list[str] = []
    for per in ml.values():
        langs.extend(lang for lang in per if lang not in langs)
    fig = Figure(figsize=(max(6.0, 0.35 * len(langs) * max(1, len(conds)) + 2), 3.6))
    ax = fig.add_subplot()
    grouped_asr_bars(ax, langs, ml, series_colors(conds), annotate=len(langs) * len(conds) <= 16)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="condition")
    ax.set_title(title + " (95% Wilson interval)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# neurons


def fig_neurons_per_layer(sets: Mapping[str, NeuronSetInfo]) -> Figure:
    """One panel per set: neurons per layer, stacked by site."""
    names = list(sets)
    fig = Figure(figsize=(8.0, 1.9 * len(names) + 0.6))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        s = sets[name]
        bottom = [0] * s.n_layers
        for site, per in s.counts.items():
            ax.bar(range(s.n_layers), per, bottom=bottom, color=SITE_COLORS.get(site, "#888"), label=site,
                   width=0.85, edgecolor="white", linewidth=0.3)
            bottom = [b + c for b, c in zip(bottom, per)]
        if not s.size:
            ax.text(0.5, 0.5, "no neurons selected", transform=ax.transAxes, ha="center", va="center", color="#666")
        frac = f" ({100 * s.fraction:.2f}% of neurons)" if s.fraction is not None else ""
        ax.set_title(f"{name}: {s.size:,} neurons{frac}", loc="left")
        ax.set_ylabel("neurons")
        ax.grid(axis="x", visible=False)
        if s.size and (len(s.counts) > 1 or name == names[0]):
            ax.legend(title="site", loc="upper left", ncols=5)
    axes[-1].set_xlabel("layer")
    n_layers = max((s.n_layers for s in sets.values()), default=1)
    step = max(1, math.ceil(n_layers / 30))
    axes[-1].set_xticks(range(0, n_layers, step))
    fig.tight_layout()
    return fig


def _hist_panel(ax, h, tau: float | None, title: str, xlabel: str, color: str) -> None:
    ax.stairs(h.counts, h.edges, fill=True, color=color, alpha=0.75)
    log_y(ax)
    ax.set_ylim(bottom=0.8, top=max(h.counts + [1.0]) * 3)
    if tau is not None:
        ax.axvline(tau, color="#C44E52", linestyle="--", linewidth=1.4)
        if tau < h.edges[-1]:
            ax.axvspan(tau, h.edges[-1], color="#C44E52", alpha=0.08)
        above = sum(c for c, lo in zip(h.counts, h.edges[:-1]) if lo >= tau)
        ax.text(0.98, 0.95, f"threshold {tau:g}\n\u2248{above:,.0f} neurons above", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="#C44E52")
    ax.set_title(title, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("neurons (log)")


def fig_score_distributions(h: ScoreHistograms) -> Figure:
    panels = [(h.effect_size, h.tau_es, f"ES: effect size ({'Cohen d' if h.statistic == 'd' else 'pooled t'})",
               "effect size", "#DD8452"),
              (h.sas_z, h.tau_sas, "SAS: layer z-score of the mean shift", "z-score", "#55A868")]
    panels = [p for p in panels if not isinstance(p[0], Missing)]
    with_layers = any(p[0].max_per_layer for p in panels)
    fig = Figure(figsize=(4.2 * len(panels), 5.6 if with_layers else 3.0))
    axes = fig.subplots(2 if with_layers else 1, len(panels), squeeze=False)
    for j, (hist, tau, title, xlabel, color) in enumerate(panels):
        _hist_panel(axes[0, j], hist, tau, title, xlabel, color)
        if with_layers:
            ax = axes[1, j]
            if hist.max_per_layer:
                ax.plot(range(len(hist.max_per_layer)), hist.max_per_layer, marker="o", ms=3, color=color)
                if tau is not None:
                    ax.axhline(tau, color="#C44E52", linestyle="--", linewidth=1.2)
            ax.set_title(f"largest {xlabel} per layer", loc="left")
            ax.set_xlabel("layer")
            _int_x(ax)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# capability, training, multilingual


def fig_capability(cap: Mapping[str, CapabilityRow]) -> Figure:
    conds = list(cap)
    tasks: list[str] = []
    for row in cap.values():
        tasks.extend(t for t in row.tasks if t not in tasks)
    has_ppl = any(r.perplexity is not None for r in cap.values())
    n_panels = len(tasks) + (1 if has_ppl else 0)
    fig = Figure(figsize=(max(4.0, 3.2 * n_panels), 3.2))
    axes = fig.subplots(1, max(1, n_panels), squeeze=False)[0]
    colors = series_colors(conds)
    for ax, task in zip(axes, tasks):
        for i, c in enumerate(conds):
            s = cap[c].tasks.get(task)
            if s is None or s.acc is None:
                continue
            ax.bar([i], [s.acc], color=colors[c], yerr=[[s.stderr or 0], [s.stderr or 0]], capsize=3, width=0.65)
            ax.text(i, s.acc + (s.stderr or 0) + 0.01, f"{s.acc:.3f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(conds)), [_short(c, 10) for c in conds])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task}: accuracy (\u00b1 stderr)", loc="left")
        ax.grid(axis="x", visible=False)
    if has_ppl:
        ax = axes[-1]
        for i, c in enumerate(conds):
            p = cap[c].perplexity
            if p is not None:
                ax.bar([i], [p], color=colors[c], width=0.65)
                ax.text(i, p, f"{p:.2f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(conds)), [_short(c, 10) for c in conds])
        ax.set_title("perplexity on benign text (lower is better)", loc="left")
        ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig


def fig_training(logs: Mapping[str, TrainLog]) -> Figure:
    """Loss, reward margin and frozen-weight drift against step; one line per log (run)."""
    fig = Figure(figsize=(11.0, 3.2))
    axes = fig.subplots(1, 3)
    colors = run_colors(list(logs))
    worst = max((lg.max_abs_drift for lg in logs.values() if lg.max_abs_drift is not None), default=None)
    for name, lg in logs.items():
        for ax, attr in zip(axes, ("loss", "margin", "drift")):
            pts = [(s.step, getattr(s, attr)) for s in lg.steps if getattr(s, attr) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[name], label=_short(name, 30),
                        marker="." if len(pts) < 40 else None)
    axes[0].set_title("DPO loss", loc="left")
    axes[1].set_title("reward margin (chosen \u2212 rejected)", loc="left")
    if worst is None:
        axes[2].set_title("frozen-weight drift: not logged", loc="left")
    elif worst == 0:
        axes[2].set_title("frozen-weight drift: max |\u0394| = 0 \u2713", loc="left", color="#2E7D32")
    else:
        axes[2].set_title(f"frozen-weight drift: max |\u0394| = {worst:.3g} \u2717", loc="left", color="#C62828")
    axes[2].axhline(0, color="#2E7D32", linewidth=1, linestyle=":")
    for ax in axes:
        ax.set_xlabel("step")
    if len(logs) > 1:
        axes[0].legend()
    fig.tight_layout()
    return fig


def fig_rounds(rounds: Sequence[Round]) -> Figure:
    fig = Figure(figsize=(8.0, 3.0))
    ax1, ax2 = fig.subplots(1, 2)
    names = [r.round for r in rounds]
    ax1.bar(range(len(rounds)), [r.n_neurons or 0 for r in rounds], color="#4C72B0", width=0.6)
    ax1.set_xticks(range(len(rounds)), names)
    ax1.set_title("safety neurons per round", loc="left")
    ax1.grid(axis="x", visible=False)
    xs = [i for i, r in enumerate(rounds) if r.asr is not None and r.asr.asr is not None]
    if xs:
        cells = [rounds[i].asr for i in xs]
        vals = [100 * c.asr for c in cells]  # type: ignore[union-attr,operator]
        lo = [100 * (c.asr - (c.ci_lo if c.ci_lo is not None else c.asr)) for c in cells]  # type: ignore[union-attr,operator]
        hi = [100 * ((c.ci_hi if c.ci_hi is not None else c.asr) - c.asr) for c in cells]  # type: ignore[union-attr,operator]
        ax2.errorbar(xs, vals, yerr=[lo, hi], marker="o", color="#C44E52", capsize=3)
    ax2.set_xticks(range(len(rounds)), names)
    _pct_axis(ax2)
    ax2.set_title("FULL(SN\u2212) attack success after each round", loc="left")
    fig.tight_layout()
    return fig


def fig_overlap(o: Overlap) -> Figure:
    n = len(o.languages)
    fig = Figure(figsize=(1.0 + 0.55 * n, 0.6 + 0.5 * n))
    ax = fig.add_subplot()
    mat = [[v if v is not None else float("nan") for v in row] for row in o.jaccard]
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    for i in range(n):
        for j in range(n):
            v = o.jaccard[i][j]
            if v is not None and n <= 16:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(n), o.languages)
    ax.set_yticks(range(n), o.languages)
    ax.grid(False)
    ax.set_title("Jaccard overlap of MS-Neuron sets", loc="left")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def fig_ml_counts(counts: Mapping[str, LanguageCounts]) -> Figure:
    langs = list(counts)
    has_layers = any(c.per_layer for c in counts.values())
    fig = Figure(figsize=(9.0 if has_layers else 5.0, 3.0))
    axes = fig.subplots(1, 2 if has_layers else 1, squeeze=False)[0]
    ax = axes[0]
    w = 0.4
    ax.bar([i - w / 2 for i in range(len(langs))], [counts[lang].ms or 0 for lang in langs], width=w,
           color="#4C72B0", label="MS (monolingual safety)")
    ax.bar([i + w / 2 for i in range(len(langs))], [counts[lang].ss or 0 for lang in langs], width=w,
           color="#C44E52", label="SS (shared with English)")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_title("MS- and SS-Neurons per language", loc="left")
    ax.legend()
    ax.grid(axis="x", visible=False)
    if has_layers:
        colors = run_colors(langs)
        for lang in langs:
            if counts[lang].per_layer:
                axes[1].plot(counts[lang].per_layer, label=lang, color=colors[lang])
        axes[1].set_title("SS-Neurons per layer", loc="left")
        axes[1].set_xlabel("layer")
        _int_x(axes[1])
        axes[1].legend(ncols=2)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# brittleness

ATTACKER_COLORS = {"one-shot": "#C44E52", "iterative": "#4C72B0"}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def fig_brittleness(curve: BrittlenessCurve) -> Figure:
    """ASR with its 95% interval band per attacker (a random control: the mean over its seeds, the band
    spanning all their intervals), the degenerate share and the perplexity against the percent zeroed, on a
    symmetric-log axis so the unattacked point 0 shows. Dotted: the break threshold; dash-dotted: the size
    of the identified set (where it lies on the grid's axis)."""
    fig = Figure(figsize=(7.5, 8))
    ax_asr, ax_deg, ax_ppl = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 1.2]})
    positive = [f for f in (curve.fractions or sorted({p.fraction for p in curve.points})) if f > 0]
    for attacker in curve.attackers:
        mine = [p for p in curve.points if p.attacker == attacker]
        random = attacker.startswith("random/")
        color = ATTACKER_COLORS.get(attacker.split("/", 1)[-1], "#8172B3")
        xs = sorted({p.fraction for p in mine})
        at = {x: [p for p in mine if p.fraction == x] for x in xs}
        asr = [100 * _mean([p.cell.asr or 0.0 for p in at[x]]) for x in xs]
        lo = [100 * min(p.cell.ci_lo or 0.0 for p in at[x]) for x in xs]
        hi = [100 * max(p.cell.ci_hi or 0.0 for p in at[x]) for x in xs]
        deg = [100 * _mean([p.degenerate_share or 0.0 for p in at[x]]) for x in xs]
        ppl = [_mean([p.perplexity for p in at[x] if p.perplexity is not None]) for x in xs]
        style = {"color": color, "linestyle": "--" if random else "-", "marker": "s" if random else "o",
                 "markersize": 3.5, "alpha": 0.8 if random else 1.0}
        seeds = len({p.seed for p in mine})
        label = f"{attacker} ({seeds} seed{'s' if seeds != 1 else ''}, band: all intervals)" if random else attacker
        ax_asr.plot(xs, asr, label=_short(label, 60), **style)
        ax_asr.fill_between(xs, lo, hi, color=color, alpha=0.10 if random else 0.18, linewidth=0)
        ax_deg.plot(xs, deg, **style)
        ax_ppl.plot(xs, ppl, **style)
    ax_asr.axhline(100 * curve.break_asr, color="#555555", linewidth=0.8, linestyle=":")
    right = 1.15 * max(positive) if positive else 1.0
    if curve.identified_fraction and curve.identified_fraction <= right:
        for ax in (ax_asr, ax_deg, ax_ppl):
            ax.axvline(curve.identified_fraction, color="#999999", linewidth=0.8, linestyle="-.")
        ax_asr.text(curve.identified_fraction, 101, f" {curve.identified_set}", fontsize=7, color="#777777",
                    va="bottom")
    ax_asr.set_ylim(0, 105)
    ax_asr.set_ylabel("ASR % (95% Wilson)")
    total = f"{curve.n_total:,} {curve.site} neurons" if curve.n_total else f"{curve.site} neurons"
    ax_asr.set_title(f"Brittleness: {_short(curve.model, 40)} ({total})" if curve.model else f"Brittleness ({total})")
    ax_asr.legend(loc="upper left", fontsize=7)
    ax_deg.set_ylabel("degenerate %")
    ax_deg.set_ylim(0, 105)
    ax_ppl.set_ylabel("perplexity")
    ppl_all = [p.perplexity for p in curve.points if p.perplexity]
    if ppl_all and max(ppl_all) > 3 * min(ppl_all):  # a collapse spans decades; a flat curve reads better linear
        log_y(ax_ppl)
    else:
        ax_ppl.ticklabel_format(axis="y", useOffset=False)
    ax_ppl.set_xlabel(f"% of {curve.site} neurons zeroed")
    ax_ppl.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax_ppl.set_xlim(0, right)
    ax_ppl.set_xticks([0, *positive], [f"{f:g}" for f in [0, *positive]], fontsize=7)
    ax_ppl.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# monitor evaluation

READOUT_COLORS = {"FULL": "#C44E52", "ES": "#DD8452", "SAS": "#55A868", "PROBE": "#4C72B0", "REFUSAL": "#222222"}
RATE_MARKERS = ("o", "s", "^", "D")


def _dense_segments(xs: Sequence[float], ys: Sequence[float], k: int = 24) -> tuple[list[float], list[float]]:
    """The polyline through ``(xs, ys)`` with ``k`` points on each sloped segment, so that a segment that is
    straight in linear FPR (tied scores, chance) is drawn as such on a non-linear axis."""
    ox, oy = [xs[0]], [ys[0]]
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]):
        steps = k if x1 > x0 else 1
        for i in range(1, steps + 1):
            ox.append(x0 + (x1 - x0) * i / steps)
            oy.append(y0 + (y1 - y0) * i / steps)
    return ox, oy


def fig_monitor_roc(ev: MonitorEval) -> Figure:
    """ROC curves per readout: one row of panels per condition, one panel per scored pair. Solid: fitted on that
    condition; dashed: fitted on the original model and applied unchanged. Markers: the deployed thresholds'
    operating points (circle: the first rate, square: the second, ...); dotted verticals: the rates; a black
    cross: the model's own refusal (one point). The FPR axis is linear up to the smallest rate and logarithmic
    above it, so the low-FPR end where a monitor operates is readable."""
    rec = ev.record
    groups = [g for g in ev.groups if g in {c.group for c in rec.curves}] or list(dict.fromkeys(c.group for c in rec.curves))
    conds = [c for c in ev.conditions if any(x.condition == c for x in rec.curves)]
    rows, cols = max(1, len(conds)), max(1, len(groups))
    fig = Figure(figsize=(4.2 * cols, 3.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    rates = [f"{f:g}" for f in rec.fprs]
    for i, cond in enumerate(conds):
        for j, group in enumerate(groups):
            ax = axes[i][j]
            for k, f in enumerate(rec.fprs):
                ax.axvline(f, color="#999999", linewidth=0.7, linestyle=":")
            for c in rec.curves:
                if c.condition != cond or c.group != group or c.readout == "REFUSAL":
                    continue
                transferred = bool(c.fitted_on) and c.fitted_on != cond
                color = READOUT_COLORS.get(c.readout) or color_for(c.readout)
                label = c.readout + (f" ({c.fitted_on} fit)" if transferred else "")
                xs, ys = _dense_segments(c.fpr, c.tpr)
                ax.plot(xs, ys, color=color, linewidth=1.1, linestyle="--" if transferred else "-",
                        alpha=0.75 if transferred else 1.0, label=_short(label, 30))
                row = next((r for r in rec.rows if r.condition == cond and r.group == group and r.readout == c.readout
                            and r.fitted_on == c.fitted_on), None)
                for m, key in enumerate(rates):
                    point = row.deployed.get(key) if row is not None else None
                    if isinstance(point, dict) and isinstance(point.get("fpr"), (int, float)):
                        ax.plot([point["fpr"]], [point["tpr"]], marker=RATE_MARKERS[m % len(RATE_MARKERS)],
                                color=color, markersize=4, linestyle="none", alpha=0.75 if transferred else 1.0)
            ref = next((r for r in rec.rows if r.condition == cond and r.group == group and r.readout == "REFUSAL"), None)
            if ref is not None and isinstance(ref.deployed.get("refuses"), dict):
                p = ref.deployed["refuses"]
                ax.plot([p["fpr"]], [p["tpr"]], marker="x", color=READOUT_COLORS["REFUSAL"], markersize=7,
                        linestyle="none", label="REFUSAL (own reply)")
            ax.plot(*_dense_segments([0.0, 1.0], [0.0, 1.0], 200), color="#BBBBBB", linewidth=0.6)
            ax.set_xscale("symlog", linthresh=min(rec.fprs) if rec.fprs else 0.01, linscale=0.5)
            ticks = sorted({0.0, *rec.fprs, 0.2, 0.5, 1.0})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(0, 1.0)
            ax.set_ylim(-0.01, 1.01)
            ax.set_title(_short(f"{cond}: {group}", 60), fontsize=8)
            ax.set_xlabel("false-positive rate")
            if j == 0:
                ax.set_ylabel("true-positive rate")
            ax.legend(loc="lower right", fontsize=6)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# comparisons


def fig_compare_attack(runs: Mapping[str, Mapping[str, AsrCell]]) -> Figure:
    conds = sorted({c for per in runs.values() for c in per}, key=condition_sort_key)
    fig = Figure(figsize=(max(6.0, 0.45 * len(conds) * len(runs) + 2), 3.8))
    ax = fig.add_subplot()
    grouped_asr_bars(ax, conds, runs, run_colors(list(runs)))
    ax.legend(title="run", loc="upper left")
    ax.set_title("Attack success rate per condition, side by side (95% Wilson interval)")
    fig.tight_layout()
    return fig


def fig_compare_neurons(runs: Mapping[str, NeuronSetInfo]) -> Figure:
    """Per-layer share of each layer's neurons in the main set, on a normalised depth axis when the
    runs' models have different numbers of layers."""
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.add_subplot()
    depths = {s.n_layers for s in runs.values()}
    normalise = len(depths) > 1
    colors = run_colors(list(runs))
    for name, s in runs.items():
        width = sum(s.site_sizes.get(site, 0) for site in s.counts) or None
        per = s.per_layer()
        ys = [100 * c / width for c in per] if width else per
        xs = [i / max(1, s.n_layers - 1) for i in range(s.n_layers)] if normalise else list(range(s.n_layers))
        ax.plot(xs, ys, marker="o", ms=3, color=colors[name], label=f"{_short(name, 30)} ({s.name}: {s.size:,})")
    ax.set_xlabel("relative depth (layer / (L \u2212 1))" if normalise else "layer")
    if not normalise:
        _int_x(ax)
    ax.set_ylabel("% of the layer's neurons" if all(s.site_sizes for s in runs.values()) else "neurons")
    ax.set_title("Safety neurons per layer", loc="left")
    ax.legend()
    fig.tight_layout()
    return fig


def fig_compare_scores(runs: Mapping[str, ScoreHistograms]) -> Figure:
    fig = Figure(figsize=(9.0, 3.2))
    axes = fig.subplots(1, 2)
    colors = run_colors(list(runs))
    for ax, key, tau_key, title in ((axes[0], "effect_size", "tau_es", "ES effect size"),
                                    (axes[1], "sas_z", "tau_sas", "SAS z-score")):
        for name, h in runs.items():
            hist = getattr(h, key)
            if isinstance(hist, Missing):
                continue
            total = sum(hist.counts) or 1.0
            widths = [b - a for a, b in zip(hist.edges, hist.edges[1:])]
            dens = [c / total / w for c, w in zip(hist.counts, widths)]
            ax.stairs(dens, hist.edges, color=colors[name], label=_short(name, 30), linewidth=1.3)
            tau = getattr(h, tau_key)
            if tau is not None:
                ax.axvline(tau, color=colors[name], linestyle="--", linewidth=1)
        log_y(ax)
        ax.set_title(f"{title} (density; dashed: thresholds)", loc="left")
        ax.legend()
    fig.tight_layout()
    return fig


def fig_compare_capability(runs: Mapping[str, Mapping[str, CapabilityRow]]) -> Figure:
    groups: list[str] = []
    series: dict[str, dict[str, float]] = {}
    for name, cap in runs.items():
        series[name] = {}
        for cond, row in cap.items():
            for task, s in row.tasks.items():
                g = f"{cond} \u00b7 {task}"
                if g not in groups:
                    groups.append(g)
                if s.acc is not None:
                    series[name][g] = s.acc
    fig = Figure(figsize=(max(6.0, 0.5 * len(groups) * len(runs) + 2), 3.4))
    ax = fig.add_subplot()
    colors = run_colors(list(runs))
    width = 0.8 / max(1, len(runs))
    for j, name in enumerate(runs):
        xs = [i - 0.4 + width * (j + 0.5) for i, g in enumerate(groups) if g in series[name]]
        ys = [series[name][g] for g in groups if g in series[name]]
        ax.bar(xs, ys, width=width, color=colors[name], label=_short(name, 30))
    ax.set_xticks(range(len(groups)), [_short(g, 24) for g in groups], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title("Capability per condition and task", loc="left")
    ax.legend()
    ax.grid(axis="x", visible=False)
    fig.tight_layout()
    return fig


def fig_compare_languages(runs: Mapping[str, Mapping[str, Mapping[str, AsrCell]]]) -> Figure:
    conds: list[str] = []
    for ml in runs.values():
        conds.extend(c for c in ml if c not in conds)
    conds = conds[:4]
    fig = Figure(figsize=(max(6.0, 4.5 * len(conds)), 3.4))
    axes = fig.subplots(1, len(conds), squeeze=False)[0]
    colors = run_colors(list(runs))
    for ax, cond in zip(axes, conds):
        langs: list[str] = []
        for ml in runs.values():
            langs.extend(lang for lang in ml.get(cond, {}) if lang not in langs)
        grouped_asr_bars(ax, langs, {name: ml.get(cond, {}) for name, ml in runs.items()}, colors, annotate=False)
        ax.set_title(cond, loc="left")
    axes[0].legend(title="run")
    fig.tight_layout()
    return fig


FigureFn = Callable[[], Figure]
