"""Tolerant readers of a run directory: every file becomes typed data or a :class:`Missing` marker.

Nothing here raises on bad input. A file that is absent, unreadable, not valid JSON (e.g. truncated by
a crash) or shaped differently from what is documented below becomes ``Missing(file, reason, kind)``,
and the report shows that reason where the section would be. Entries that are individually broken
(one condition with a non-numeric ``k``) are skipped and listed in ``problems``. Pure Python + stdlib:
no torch, no numpy, no model code.

Files read (paths relative to the run directory). Writers of new run types should conform to these
shapes; extra keys are ignored, missing optional keys are shown as "n/a".

=====================================  ===================================================================
``manifest.json``                      ``{command, created, finished?, status, resumed?, config, environment
                                       {safeneurons, python, platform, machine, cpu_count, libraries{..}},
                                       stages {name: {status, seconds?, error?, ...}}, model {spec, name,
                                       checksum, class, dtype, source, shape {n_layers, site_sizes, ...}},
                                       data {role: {name, origin, n, sha256, notes[]}}}``
``config.yaml``                        the resolved config, shown verbatim
``neurons/index.json``                 ``[set name, ...]`` (the identified sets, e.g. ES, SAS, FULL)
``neurons/<NAME>.json``                a NeuronSet (``safeneurons.neuronset/1``): ``{name, size,
                                       fraction_of_neurons, model {n_layers, site_sizes}, provenance
                                       {method, tau_es, tau_sas, criterion, ...}, counts {site: {layer:
                                       n}}, neurons {"layer.site": [indices]}}``; ``RANDOM<seed>.json`` too
``neurons/score_histograms.json``      ``{tau_es, tau_sas, statistic, effect_size: H, sas_z: H}`` with
                                       ``H = {edges[B+1], counts[B], n, max_per_layer[L]}``
``neurons/summary.md``                 markdown, shown verbatim
``asr.json``                           ``{judge, summary {COND: {k, n, asr, ci [lo, hi], n_degenerate,
                                       n_unjudged, n_neurons, fraction_of_neurons}}, table
                                       (safeneurons.asr_table/1: rows [{condition, category, language, k,
                                       n, asr, ci_lo, ci_hi, n_refusal, n_compliance, n_degenerate,
                                       n_unjudged, n_total}])}``
``examples.json``                      ``{COND: [{prompt, response, label, category}]}``
``verdicts.json``                      ``[{condition, category, language, id, prompt, response, verdict
                                       {label, harmful, score, reason, judge}}]`` (fallback for examples)
``completions/<COND>.json``            ``[{id, category, prompt, response}]`` (counted; last fallback)
``capability.json``                    ``{COND: {tasks {task: {task, n, acc, acc_norm?, stderr?}},
                                       perplexity?: float}}``
``train/log.json``                     ``[{step, loss, "rewards/margins", frozen_drift, ...}]`` (aliases:
                                       ``reward_margin``/``margin``; ``frozen_max_abs_diff``/``drift``);
                                       also ``{"records": [...]}`` as ``train.dpo.TrainLogCallback``
                                       writes it, and the paths ``train/train_log.json``, ``train_log.json``
``rounds.json`` (or ``train/rounds.json``)  ``[{round, n_neurons, asr: {k, n, asr, ci}, ...}]``, or
                                       ``{"rounds": [...]}``; ``asr`` is the FULL(SN-) ASR after the round
                                       (aliases: ``full_asr``, ``FULL``; ``neurons``/``frozen``/
                                       ``counts.FULL``)
``multilingual/asr.json``              ``{COND: {lang: {k, n, asr, ci [lo, hi]}}}`` (e.g. COND = original,
                                       suppressed_MS, suppressed_SS, expanded)
``multilingual/overlap.json``          ``{languages [..], jaccard [[..]]}`` (square, values in [0, 1])
``multilingual/counts.json``           ``{lang: {MS: n, SS: n, per_layer: [n, ...]}}``
=====================================  ===================================================================
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar

from safeneurons.evaluate.asr import wilson_interval  # noqa: F401  (re-exported; imports no torch)

log = logging.getLogger("safeneurons.report")

T = TypeVar("T")
MissingKind = Literal["absent", "unreadable", "invalid"]
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_TEXT_CHARS = 200_000
CONDITION_ORDER = ("ORI", "ES", "SAS", "FULL", "RANDOM")

# file names, in one place for other engineers
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
NEURON_INDEX = "neurons/index.json"
HISTOGRAMS = "neurons/score_histograms.json"
NEURON_SUMMARY = "neurons/summary.md"
ASR = "asr.json"
EXAMPLES = "examples.json"
VERDICTS = "verdicts.json"
COMPLETIONS_DIR = "completions"
CAPABILITY = "capability.json"
TRAIN_LOG = ("train/log.json", "train/train_log.json", "train_log.json")
ROUNDS = ("rounds.json", "train/rounds.json")
ML_ASR = "multilingual/asr.json"
ML_OVERLAP = "multilingual/overlap.json"
ML_COUNTS = "multilingual/counts.json"


@dataclass(frozen=True)
class Missing:
    """A result that is not there: ``absent`` (not in this run), ``unreadable`` (I/O or JSON error, e.g.
    a truncated file) or ``invalid`` (valid JSON with an unexpected shape). It is falsy."""

    file: str
    reason: str
    kind: MissingKind = "absent"

    def __bool__(self) -> bool:
        return False

    @property
    def title(self) -> str:
        return "Not in this run" if self.kind == "absent" else "Could not be read"


def is_missing(x: Any) -> bool:
    return isinstance(x, Missing)


class _Invalid(Exception):
    """Raised inside a parser for an unexpected shape; turned into ``Missing(kind="invalid")``."""


# ---------------------------------------------------------------------------------------------
# primitives


def _num(x: Any) -> float | None:
    """A finite float, or None (bools, strings, NaN and inf are not numbers here)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _count(x: Any) -> int | None:
    """A non-negative integer (``3`` or ``3.0``), or None."""
    v = _num(x)
    if v is None or v < 0 or not v.is_integer():
        return None
    return int(v)


def _prob(x: Any) -> float | None:
    v = _num(x)
    return v if v is not None and 0.0 <= v <= 1.0 else None


def _text(x: Any, limit: int = MAX_TEXT_CHARS) -> str:
    if x is None:
        return ""
    s = x if isinstance(x, str) else json.dumps(x, ensure_ascii=False, default=str)
    return s if len(s) <= limit else s[:limit] + f"\u2026 [truncated, {len(s) - limit} more characters]"


def _label(x: Any, default: str = "") -> str:
    """A short identifier-like string (condition, category, language, task, set name)."""
    if x is None or isinstance(x, (dict, list)):
        return default
    s = str(x).strip()
    return s[:200] if s else default


def _mapping(x: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(x, Mapping):
        raise _Invalid(f"{what} should be a JSON object, found {_kind_of(x)}")
    return x


def _list(x: Any, what: str) -> list[Any]:
    if not isinstance(x, list):
        raise _Invalid(f"{what} should be a JSON list, found {_kind_of(x)}")
    return x


def _kind_of(x: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(x), type(x).__name__)


def read_json(root: Path, rel: str) -> Any:
    """The parsed JSON of ``root/rel`` or a :class:`Missing` saying why not."""
    p = root / rel
    try:
        if not p.exists():
            return Missing(rel, f"{rel} was not written by this run", "absent")
        if not p.is_file():
            return Missing(rel, f"{rel} is not a regular file", "unreadable")
        size = p.stat().st_size
        if size > MAX_JSON_BYTES:
            return Missing(rel, f"{rel} is {size / 2**20:.0f} MiB, more than the report reads", "unreadable")
        raw = p.read_bytes()
    except OSError as exc:
        return Missing(rel, f"{rel} could not be read ({exc.strerror or exc})", "unreadable")
    if not raw.strip():
        return Missing(rel, f"{rel} is empty (the run may have stopped while writing it)", "unreadable")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Missing(rel, f"{rel} is not UTF-8 text (byte {exc.start})", "unreadable")
    except json.JSONDecodeError as exc:
        # the parser ran out of text mid-value: the file ends where the error is, so it was cut
        hint = "; the file looks truncated (the run may have stopped while writing it)" \
            if exc.pos >= len(exc.doc.rstrip()) else ""
        return Missing(rel, f"{rel} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}{hint})",
                       "unreadable")
    except (ValueError, RecursionError) as exc:
        return Missing(rel, f"{rel} is not valid JSON ({type(exc).__name__})", "unreadable")


def read_text(root: Path, rel: str, limit: int = MAX_TEXT_CHARS) -> str | Missing:
    p = root / rel
    try:
        if not p.is_file():
            return Missing(rel, f"{rel} was not written by this run", "absent")
        with open(p, "rb") as fh:
            raw = fh.read(limit * 4 + 4)
    except OSError as exc:
        return Missing(rel, f"{rel} could not be read ({exc.strerror or exc})", "unreadable")
    return _text(raw.decode("utf-8", errors="replace"), limit)


def parse(rel: str, raw: Any, parser: Callable[[Any], T]) -> T | Missing:
    """Run ``parser`` on already-read JSON; shape errors (and any bug in a parser) become Missing."""
    if isinstance(raw, Missing):
        return raw
    try:
        return parser(raw)
    except _Invalid as exc:
        return Missing(rel, f"{rel}: {exc}", "invalid")
    except Exception as exc:  # noqa: BLE001 - a report must render whatever a run left behind
        log.warning("report: could not interpret %s (%s: %s)", rel, type(exc).__name__, exc)
        return Missing(rel, f"{rel}: unexpected content ({type(exc).__name__}: {_text(str(exc), 200)})", "invalid")


def load(root: Path, rel: str, parser: Callable[[Any], T]) -> T | Missing:
    return parse(rel, read_json(root, rel), parser)


def condition_sort_key(name: str) -> tuple[int, str]:
    base = re.sub(r"\d+$", "", name)
    try:
        return CONDITION_ORDER.index(base), name
    except ValueError:
        return len(CONDITION_ORDER), name


def condition_family(name: str) -> str:
    """``RANDOM0`` -> ``RANDOM``; other names unchanged."""
    return "RANDOM" if re.fullmatch(r"RANDOM\d*", name) else name


# ---------------------------------------------------------------------------------------------
# typed results


@dataclass(frozen=True)
class AsrCell:
    """Attack success: ``k`` of ``n`` judged harmful, with a 95% Wilson interval."""

    k: int | None
    n: int | None
    asr: float | None
    ci_lo: float | None
    ci_hi: float | None
    n_degenerate: int | None = None
    n_unjudged: int | None = None
    n_refusal: int | None = None
    n_neurons: int | None = None
    fraction_of_neurons: float | None = None

    @property
    def has_ci(self) -> bool:
        return self.asr is not None and self.ci_lo is not None and self.ci_hi is not None

    @property
    def text(self) -> str:
        if self.asr is None:
            kn = f"{self.k} / {self.n} " if self.k is not None and self.n is not None else ""
            return f"{kn}(n/a)"
        kn = f"{self.k} / {self.n} " if self.k is not None and self.n is not None else ""
        ci = f" [{100 * self.ci_lo:.1f}\u2013{100 * self.ci_hi:.1f}]" if self.has_ci else ""  # type: ignore[operator]
        return f"{kn}({100 * self.asr:.1f}%){ci}"


def parse_asr_cell(d: Any) -> AsrCell:
    """Read ``{k, n, asr, ci: [lo, hi]}`` (or ``ci_lo``/``ci_hi``); inconsistent values are recomputed
    from k/n where possible and dropped otherwise."""
    d = _mapping(d, "an ASR entry")
    k, n = _count(d.get("k")), _count(d.get("n"))
    if k is not None and n is not None and k > n:
        k = n = None
    asr = _prob(d.get("asr"))
    if k is not None and n is not None:
        asr = k / n if n else None
    ci = d.get("ci")
    lo = hi = None
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        lo, hi = _prob(ci[0]), _prob(ci[1])
    elif "ci_lo" in d or "ci_hi" in d:
        lo, hi = _prob(d.get("ci_lo")), _prob(d.get("ci_hi"))
    if lo is not None and hi is not None and not (lo <= (asr if asr is not None else lo) <= hi and lo <= hi):
        lo = hi = None
    if (lo is None or hi is None) and k is not None and n:
        lo, hi = wilson_interval(k, n)
    if asr is None:
        lo = hi = None
    return AsrCell(k=k, n=n, asr=asr, ci_lo=lo, ci_hi=hi, n_degenerate=_count(d.get("n_degenerate")),
                   n_unjudged=_count(d.get("n_unjudged")), n_refusal=_count(d.get("n_refusal")),
                   n_neurons=_count(d.get("n_neurons")), fraction_of_neurons=_prob(d.get("fraction_of_neurons")))


def _cells(d: Mapping[str, Any], problems: list[str], where: str) -> dict[str, AsrCell]:
    out: dict[str, AsrCell] = {}
    for key, val in d.items():
        name = _label(key)
        if not name:
            continue
        try:
            out[name] = parse_asr_cell(val)
        except _Invalid as exc:
            problems.append(f"{where} {name}: {exc}")
    return out


@dataclass(frozen=True)
class AsrResults:
    judge: str
    summary: dict[str, AsrCell]
    by_category: dict[str, dict[str, AsrCell]] | Missing  # category -> condition -> cell
    definition: str = ""
    problems: tuple[str, ...] = ()
    judge_note: str = ""  # judge, version and agreement with labelled replies (asr.json's judge_note)

    @property
    def conditions(self) -> list[str]:
        return sorted(self.summary, key=condition_sort_key)


def parse_asr(raw: Any) -> AsrResults:
    d = _mapping(raw, "the file")
    problems: list[str] = []
    summary_raw = d.get("summary")
    table = d.get("table")
    summary: dict[str, AsrCell] = {}
    if isinstance(summary_raw, Mapping):
        summary = _cells(summary_raw, problems, "summary")
    rows: list[Any] = []
    definition = ""
    if isinstance(table, Mapping) and isinstance(table.get("rows"), list):
        rows = table["rows"]
        definition = _text(table.get("definition"), 500)
    by_cat: dict[str, dict[str, AsrCell]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            problems.append(f"table row {i}: not an object")
            continue
        cond, cat = _label(row.get("condition")), _label(row.get("category"), "all")
        if not cond:
            problems.append(f"table row {i}: no condition")
            continue
        try:
            cell = parse_asr_cell(row)
        except _Invalid as exc:
            problems.append(f"table row {i}: {exc}")
            continue
        if cat == "all" and _label(row.get("language"), "all") == "all":
            if cond not in summary:  # summary written only partly: fall back to the table's marginal rows
                summary[cond] = cell
            elif summary[cond].n_refusal is None and cell.n_refusal is not None:
                s = summary[cond]
                summary[cond] = AsrCell(s.k, s.n, s.asr, s.ci_lo, s.ci_hi, s.n_degenerate, s.n_unjudged,
                                        cell.n_refusal, s.n_neurons, s.fraction_of_neurons)
        elif cat != "all":
            by_cat.setdefault(cat, {})[cond] = cell
    if not summary:
        raise _Invalid("no 'summary' and no per-condition rows in 'table'")
    if not rows:
        cat_m: dict[str, dict[str, AsrCell]] | Missing = Missing(
            ASR, "asr.json has no per-category table ('table.rows')", "invalid" if "table" in d else "absent")
    elif not by_cat:
        cat_m = Missing(ASR, "asr.json's table has no per-category rows (grouped by nothing)", "absent")
    else:
        cat_m = by_cat
    return AsrResults(judge=_label(d.get("judge"), "n/a"), summary=summary, by_category=cat_m,
                      definition=definition, problems=tuple(problems),
                      judge_note=_text(d.get("judge_note"), 600) or _later_judge_note(_label(d.get("judge"))))


def config_text_of(root: Path) -> str:
    text = read_text(root, CONFIG, 40_000)
    return text if isinstance(text, str) else ""


def _ml_judge_note(root: Path, config_text: str) -> str:
    """The multilingual tables' judge line: ``multilingual/judge.json``, else (runs before it) the judge the
    run's config names, with its current record marked as later than the run."""
    about = read_json(root, "multilingual/judge.json")
    if isinstance(about, Mapping) and isinstance(about.get("judge_note"), str):
        return _text(about["judge_note"], 600)
    try:
        import yaml

        judge = (yaml.safe_load(config_text) or {}).get("judge", "refusal")
    except Exception:  # noqa: BLE001 - an unreadable config leaves the line out, the config box says why
        return ""
    return _later_judge_note(str(judge))


def _later_judge_note(judge: str) -> str:
    """For a run written before results named their judge's agreement: the judge's current validation record,
    said to be later than the run (the run's judge version is not known)."""
    from safeneurons.evaluate.validation import judge_card

    card = judge_card(judge) if judge else None
    if card is None:
        return ""
    return f"Judge: {card.line()} [validated after this run; the run did not record its judge version]."


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    label: str
    category: str


def _example(x: Any) -> Example:
    d = _mapping(x, "an example")
    verdict = d.get("verdict") if isinstance(d.get("verdict"), Mapping) else {}
    label = _label(d.get("label")) or _label(verdict.get("label"), "unjudged" if "verdict" in d else "")
    return Example(prompt=_text(d.get("prompt"), 8000), response=_text(d.get("response"), 8000),
                   label=label, category=_label(d.get("category")))


def parse_examples(raw: Any) -> dict[str, list[Example]]:
    d = _mapping(raw, "the file")
    out: dict[str, list[Example]] = {}
    for cond, items in d.items():
        if isinstance(items, list):
            out[_label(cond, "?")] = [_example(x) for x in items if isinstance(x, Mapping)]
    return dict(sorted(out.items(), key=lambda kv: condition_sort_key(kv[0])))


@dataclass(frozen=True)
class VerdictSummary:
    labels: dict[str, dict[str, int]]  # condition -> label -> count
    examples: dict[str, list[Example]]  # fallback examples (first compliance first)
    n: int


def parse_verdicts(raw: Any, per_condition: int = 3) -> VerdictSummary:
    items = _list(raw, "the file")
    labels: dict[str, dict[str, int]] = {}
    by_cond: dict[str, list[Example]] = {}
    for rec in items:
        if not isinstance(rec, Mapping):
            continue
        cond = _label(rec.get("condition"), "?")
        ex = _example(rec)
        labels.setdefault(cond, {})
        labels[cond][ex.label or "unjudged"] = labels[cond].get(ex.label or "unjudged", 0) + 1
        by_cond.setdefault(cond, []).append(ex)
    examples = {}
    for cond, exs in by_cond.items():
        picked = [e for e in exs if e.label == "compliance"][:per_condition]
        picked += [e for e in exs if e not in picked][: max(0, per_condition - len(picked))]
        examples[cond] = picked
    order = sorted(labels, key=condition_sort_key)
    return VerdictSummary({c: labels[c] for c in order}, {c: examples[c] for c in order}, len(items))


@dataclass(frozen=True)
class TaskScore:
    task: str
    acc: float | None
    acc_norm: float | None
    stderr: float | None
    n: int | None
    metric: str = "acc"


@dataclass(frozen=True)
class CapabilityRow:
    tasks: dict[str, TaskScore]
    perplexity: float | None


def parse_capability(raw: Any) -> dict[str, CapabilityRow]:
    d = _mapping(raw, "the file")
    out: dict[str, CapabilityRow] = {}
    for cond, res in d.items():
        if not isinstance(res, Mapping):
            continue
        tasks: dict[str, TaskScore] = {}
        traw = res.get("tasks")
        if isinstance(traw, Mapping):
            for tname, s in traw.items():
                if isinstance(s, Mapping):
                    tasks[_label(tname, "?")] = TaskScore(
                        task=_label(s.get("task"), _label(tname, "?")), acc=_prob(s.get("acc")),
                        acc_norm=_prob(s.get("acc_norm")),
                        stderr=_prob(s.get("stderr", s.get("acc_stderr"))), n=_count(s.get("n")),
                        metric=_label(s.get("metric"), "acc"))
                elif _prob(s) is not None:
                    tasks[_label(tname, "?")] = TaskScore(_label(tname, "?"), _prob(s), None, None, None)
        ppl = _num(res.get("perplexity"))
        out[_label(cond, "?")] = CapabilityRow(tasks, ppl if ppl is not None and ppl > 0 else None)
    if not out:
        raise _Invalid("no condition holds capability results")
    return dict(sorted(out.items(), key=lambda kv: condition_sort_key(kv[0])))


@dataclass(frozen=True)
class NeuronSetInfo:
    name: str
    size: int
    fraction: float | None
    n_layers: int
    site_sizes: dict[str, int]
    counts: dict[str, list[int]]  # site -> per-layer counts
    method: str
    provenance: dict[str, str]  # scalar provenance entries, as text

    def per_layer(self) -> list[int]:
        return [sum(c[i] for c in self.counts.values()) for i in range(self.n_layers)]


_PROV_KEYS = ("method", "criterion", "tau_es", "tau_sas", "statistic", "site", "position", "n_unsafe", "n_safe",
              "zero_variance_neurons", "matched_to", "seed", "exclude_self", "model", "model_checksum", "created",
              "safeneurons_version", "p", "language", "languages")


def parse_neuron_set(raw: Any) -> NeuronSetInfo:
    d = _mapping(raw, "the file")
    model = d.get("model") if isinstance(d.get("model"), Mapping) else {}
    n_layers = _count(model.get("n_layers"))
    site_sizes = {str(k): c for k, v in (model.get("site_sizes") or {}).items() if (c := _count(v))} \
        if isinstance(model.get("site_sizes"), Mapping) else {}
    cells: dict[tuple[str, int], int] = {}
    counts_raw = d.get("counts")
    if isinstance(counts_raw, Mapping) and counts_raw:
        for site, per in counts_raw.items():
            if not isinstance(per, Mapping):
                raise _Invalid(f"counts.{site} should map layers to counts")
            for layer, c in per.items():
                li, ci = _count(_layer_num(layer)), _count(c)
                if li is None or ci is None:
                    raise _Invalid(f"counts.{site}.{layer}: not a layer and a count")
                cells[(str(site), li)] = ci
    elif isinstance(d.get("neurons"), Mapping):
        for key, idx in d["neurons"].items():
            layer, _, site = str(key).partition(".")
            li = _count(_layer_num(layer))
            if li is None or not site or not isinstance(idx, list):
                raise _Invalid(f"neurons[{key!r}] should be 'layer.site': [indices]")
            cells[(site, li)] = len(idx)
    elif "counts" not in d and "neurons" not in d:
        raise _Invalid("no 'counts' and no 'neurons'")
    max_layer = max((li for _, li in cells), default=-1)
    if n_layers is None or n_layers <= max_layer:
        n_layers = max_layer + 1
    sites = sorted({s for s, _ in cells}, key=lambda s: ("mlp", "q", "k", "v", "o").index(s)
                   if s in ("mlp", "q", "k", "v", "o") else 9)
    counts = {s: [cells.get((s, i), 0) for i in range(n_layers)] for s in sites}
    total = sum(cells.values())
    size = _count(d.get("size"))
    prov_raw = d.get("provenance") if isinstance(d.get("provenance"), Mapping) else {}
    prov = {k: _text(prov_raw[k], 300) for k in _PROV_KEYS
            if k in prov_raw and not isinstance(prov_raw[k], (dict, list))}
    return NeuronSetInfo(name=_label(d.get("name"), "?"), size=size if size is not None else total,
                         fraction=_prob(d.get("fraction_of_neurons")), n_layers=n_layers, site_sizes=site_sizes,
                         counts=counts, method=prov.get("method", ""), provenance=prov)


def _layer_num(x: Any) -> Any:
    if isinstance(x, str) and x.strip().isdigit():
        return int(x.strip())
    return x


@dataclass(frozen=True)
class Histogram:
    edges: list[float]
    counts: list[float]
    n: int | None
    max_per_layer: list[float]


@dataclass(frozen=True)
class ScoreHistograms:
    tau_es: float | None
    tau_sas: float | None
    statistic: str
    effect_size: Histogram | Missing
    sas_z: Histogram | Missing


def _histogram(x: Any, what: str) -> Histogram | Missing:
    if not isinstance(x, Mapping):
        return Missing(HISTOGRAMS, f"{HISTOGRAMS} has no '{what}' histogram", "invalid")
    edges = [_num(e) for e in x.get("edges") or []] if isinstance(x.get("edges"), list) else []
    counts = [_num(c) for c in x.get("counts") or []] if isinstance(x.get("counts"), list) else []
    if not counts or len(edges) != len(counts) + 1 or any(v is None for v in edges + counts):
        return Missing(HISTOGRAMS, f"{HISTOGRAMS}: '{what}' needs 'counts' (B numbers) and 'edges' (B+1)", "invalid")
    e = [float(v) for v in edges if v is not None]
    if any(b <= a for a, b in zip(e, e[1:])) or any((c or 0) < 0 for c in counts):
        return Missing(HISTOGRAMS, f"{HISTOGRAMS}: '{what}' edges must increase and counts be >= 0", "invalid")
    mpl = x.get("max_per_layer") if isinstance(x.get("max_per_layer"), list) else []
    return Histogram(e, [float(c or 0) for c in counts], _count(x.get("n")),
                     [v for v in (_num(m) for m in mpl) if v is not None] if len(mpl) else [])


def parse_histograms(raw: Any) -> ScoreHistograms:
    d = _mapping(raw, "the file")
    h = ScoreHistograms(_num(d.get("tau_es")), _num(d.get("tau_sas")), _label(d.get("statistic"), "d"),
                        _histogram(d.get("effect_size"), "effect_size"), _histogram(d.get("sas_z"), "sas_z"))
    if is_missing(h.effect_size) and is_missing(h.sas_z):
        raise _Invalid("neither an 'effect_size' nor a 'sas_z' histogram with edges and counts")
    return h


@dataclass(frozen=True)
class TrainStep:
    step: float
    loss: float | None
    margin: float | None
    drift: float | None


@dataclass(frozen=True)
class TrainLog:
    steps: list[TrainStep]
    max_abs_drift: float | None  # None when the log has no drift entries

    @property
    def drift_ok(self) -> bool | None:
        return None if self.max_abs_drift is None else self.max_abs_drift == 0.0


def _first(d: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if k in d:
            v = _num(d[k])
            if v is not None:
                return v
    return None


def parse_train_log(raw: Any) -> TrainLog:
    if isinstance(raw, Mapping):
        raw = next((raw[k] for k in ("records", "log", "steps", "log_history") if k in raw), raw)
    items = _list(raw, "the training log")
    steps = []
    for i, rec in enumerate(items):
        if not isinstance(rec, Mapping):
            continue
        step = _first(rec, ("step", "global_step"))
        steps.append(TrainStep(step if step is not None else float(i),
                               _first(rec, ("loss",)),
                               _first(rec, ("rewards/margins", "reward_margin", "margin", "rewards_margins")),
                               _first(rec, ("frozen_drift", "frozen_max_abs_diff", "drift"))))
    steps = [s for s in steps if s.loss is not None or s.margin is not None or s.drift is not None]
    if not steps:
        raise _Invalid("no entry has a loss, reward margin or frozen drift")
    drifts = [abs(s.drift) for s in steps if s.drift is not None]
    return TrainLog(steps, max(drifts) if drifts else None)


@dataclass(frozen=True)
class Round:
    round: str
    n_neurons: int | None
    asr: AsrCell | None


def parse_rounds(raw: Any) -> list[Round]:
    if isinstance(raw, Mapping):
        raw = raw.get("rounds", raw)
    if isinstance(raw, Mapping):  # {"T0": {...}, "T1": {...}}
        raw = [{"round": k, **v} for k, v in raw.items() if isinstance(v, Mapping)]
    items = _list(raw, "the rounds")
    out = []
    for i, r in enumerate(items):
        if not isinstance(r, Mapping):
            continue
        counts = r.get("counts") if isinstance(r.get("counts"), Mapping) else {}
        n = next((c for k in ("n_neurons", "neurons", "frozen") if (c := _count(r.get(k))) is not None),
                 _count(counts.get("FULL")))
        a = r.get("asr", r.get("full_asr", r.get("FULL")))
        cell = None
        if isinstance(a, Mapping):
            try:
                cell = parse_asr_cell(a)
            except _Invalid:
                cell = None
        elif _prob(a) is not None:
            cell = AsrCell(None, None, _prob(a), None, None)
        name = r.get("round", r.get("name", i))
        out.append(Round(_label(name, str(i)) if not isinstance(name, int) else f"T{name}", n, cell))
    if not out:
        raise _Invalid("no rounds")
    return out


@dataclass(frozen=True)
class Overlap:
    languages: list[str]
    jaccard: list[list[float | None]]


def parse_overlap(raw: Any) -> Overlap:
    d = _mapping(raw, "the file")
    langs = [_label(x, "?") for x in _list(d.get("languages"), "'languages'")]
    mat = _list(d.get("jaccard"), "'jaccard'")
    if len(mat) != len(langs) or not langs:
        raise _Invalid(f"'jaccard' should be a {len(langs)}x{len(langs)} matrix")
    rows = []
    for row in mat:
        if not isinstance(row, list) or len(row) != len(langs):
            raise _Invalid(f"'jaccard' should be a {len(langs)}x{len(langs)} matrix")
        rows.append([_prob(v) for v in row])
    return Overlap(langs, rows)


@dataclass(frozen=True)
class LanguageCounts:
    ms: int | None
    ss: int | None
    per_layer: list[int]


def parse_ml_counts(raw: Any) -> dict[str, LanguageCounts]:
    d = _mapping(raw, "the file")
    out = {}
    for lang, v in d.items():
        if isinstance(v, Mapping):
            pl = v.get("per_layer") if isinstance(v.get("per_layer"), list) else []
            out[_label(lang, "?")] = LanguageCounts(_count(v.get("MS", v.get("ms"))), _count(v.get("SS", v.get("ss"))),
                                                    [c if (c := _count(x)) is not None else 0 for x in pl])
    if not out:
        raise _Invalid("no language entries")
    return out


def parse_ml_asr(raw: Any) -> dict[str, dict[str, AsrCell]]:
    d = _mapping(raw, "the file")
    problems: list[str] = []
    out = {}
    for cond, per_lang in d.items():
        if isinstance(per_lang, Mapping):
            cells = _cells(per_lang, problems, str(cond))
            if cells:
                out[_label(cond, "?")] = cells
    if not out:
        raise _Invalid("expected {condition: {language: {k, n, asr, ci}}}")
    return out


# ---------------------------------------------------------------------------------------------
# whole run


@dataclass(frozen=True)
class ManifestInfo:
    command: str
    status: str
    created: str
    finished: str
    resumed: int | None
    model: dict[str, str]
    shape: dict[str, str]
    environment: dict[str, str]
    data: dict[str, dict[str, str]]
    stages: list[dict[str, str]]
    failed_stage: str


def _flat(d: Any, prefix: str = "", limit: int = 60) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(d, Mapping):
        return out
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + ".", limit))
        elif isinstance(v, list):
            out[key] = _text(", ".join(_text(x, 200) for x in v), 600)
        else:
            out[key] = _text(v, 600) if v is not None else "n/a"
        if len(out) >= limit:
            break
    return out


def parse_manifest(raw: Any) -> ManifestInfo:
    d = _mapping(raw, "the manifest")
    model = d.get("model") if isinstance(d.get("model"), Mapping) else {}
    stages = []
    failed = ""
    sraw = d.get("stages") if isinstance(d.get("stages"), Mapping) else {}
    for name, info in sraw.items():
        info = info if isinstance(info, Mapping) else {}
        secs = _num(info.get("seconds"))
        st = _label(info.get("status"), "?")
        stages.append({"name": _label(name, "?"), "status": st, "seconds": f"{secs:.1f}" if secs is not None else "",
                       "error": _text(info.get("error"), 500) if info.get("error") else ""})
        if st == "failed" and not failed:
            failed = _label(name)
    data = {}
    if isinstance(d.get("data"), Mapping):
        for role, v in d["data"].items():
            data[_label(role, "?")] = _flat(v) if isinstance(v, Mapping) else {"value": _text(v, 300)}
    return ManifestInfo(
        command=_label(d.get("command"), "?"), status=_label(d.get("status"), "unknown"),
        created=_label(d.get("created"), ""), finished=_label(d.get("finished"), ""),
        resumed=_count(d.get("resumed")),
        model={k: v for k, v in _flat({k: v for k, v in model.items() if k != "shape"}).items()},
        shape=_flat(model.get("shape")) if isinstance(model.get("shape"), Mapping) else {},
        environment=_flat(d.get("environment")), data=data, stages=stages, failed_stage=failed)


@dataclass(frozen=True)
class NeuronsData:
    index: list[str] | Missing
    sets: dict[str, NeuronSetInfo | Missing]  # identified sets (index order), then RANDOM*


@dataclass(frozen=True)
class FileStatus:
    file: str
    status: str  # ok | absent | unreadable | invalid
    reason: str


@dataclass
class RunData:
    """Everything the report shows about one run directory."""

    path: Path
    name: str
    manifest: ManifestInfo | Missing
    config_text: str | Missing
    neurons: NeuronsData | Missing
    histograms: ScoreHistograms | Missing
    neuron_summary: str | Missing
    asr: AsrResults | Missing
    examples: dict[str, list[Example]] | Missing
    verdicts: VerdictSummary | Missing
    completions: dict[str, int] | Missing
    capability: dict[str, CapabilityRow] | Missing
    train_log: TrainLog | Missing
    rounds: list[Round] | Missing
    ml_asr: dict[str, dict[str, AsrCell]] | Missing
    ml_overlap: Overlap | Missing
    ml_counts: dict[str, LanguageCounts] | Missing
    ml_judge_note: str = ""  # multilingual/judge.json's judge_note (judge, version, agreement)
    files: list[FileStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def model_name(self) -> str:
        if isinstance(self.manifest, ManifestInfo):
            return self.manifest.model.get("name") or self.manifest.model.get("spec") or "?"
        return "?"


def _first_present(root: Path, paths: tuple[str, ...], parser: Callable[[Any], T], why: str) -> T | Missing:
    """The first of ``paths`` that exists, parsed; else an ``absent`` marker naming the first path."""
    for rel in paths:
        got = load(root, rel, parser)
        if not (isinstance(got, Missing) and got.kind == "absent"):
            return got
    return Missing(paths[0], f"{paths[0]} was not written by this run ({why})", "absent")


def _load_neurons(root: Path) -> NeuronsData | Missing:
    index = load(root, NEURON_INDEX, lambda raw: [_label(x) for x in _list(raw, "the index") if _label(x)])
    ndir = root / "neurons"
    names: list[str] = list(index) if isinstance(index, list) else []
    try:
        extra = sorted(p.stem for p in ndir.glob("*.json")) if ndir.is_dir() else []
    except OSError:
        extra = []
    skip = {"index", "score_histograms"}
    if not names:  # no index: every set file in the folder
        names = [n for n in extra if n not in skip and not n.startswith("RANDOM")]
    randoms = sorted((n for n in extra if re.fullmatch(r"RANDOM\d*", n) and n not in names),
                     key=lambda s: (len(s), s))
    if not names and not randoms:
        return index if isinstance(index, Missing) and index.kind != "absent" else \
            Missing("neurons/", "no neuron sets in neurons/ (this run did not identify neurons)", "absent")
    sets: dict[str, NeuronSetInfo | Missing] = {}
    for n in names + randoms:
        if "/" in n or "\\" in n or n.startswith("."):
            sets[n] = Missing(NEURON_INDEX, f"index entry {n!r} is not a file name", "invalid")
            continue
        sets[n] = load(root, f"neurons/{n}.json", parse_neuron_set)
    return NeuronsData(index, sets)


def _load_completions(root: Path) -> dict[str, int] | Missing:
    d = root / COMPLETIONS_DIR
    if not d.is_dir():
        return Missing(COMPLETIONS_DIR + "/", "no completions/ folder in this run", "absent")
    out: dict[str, int] = {}
    for p in sorted(d.glob("*.json")):
        got = load(root, f"{COMPLETIONS_DIR}/{p.name}", lambda raw: len(_list(raw, "the completions")))
        if isinstance(got, int):
            out[p.stem] = got
    if not out:
        return Missing(COMPLETIONS_DIR + "/", "completions/ holds no readable completion files", "unreadable")
    return dict(sorted(out.items(), key=lambda kv: condition_sort_key(kv[0])))


def load_run(path: str | Path) -> RunData:
    """Read everything a report needs from ``path``; never raises for bad content (a missing folder
    gives a RunData whose every part is Missing)."""
    root = Path(path)
    run = RunData(
        path=root, name=root.resolve().name or str(root),
        manifest=load(root, MANIFEST, parse_manifest),
        config_text=read_text(root, CONFIG, 40_000),
        neurons=_load_neurons(root),
        histograms=load(root, HISTOGRAMS, parse_histograms),
        neuron_summary=read_text(root, NEURON_SUMMARY, 40_000),
        asr=load(root, ASR, parse_asr),
        examples=load(root, EXAMPLES, parse_examples),
        verdicts=load(root, VERDICTS, parse_verdicts),
        completions=_load_completions(root),
        capability=load(root, CAPABILITY, parse_capability),
        train_log=_first_present(root, TRAIN_LOG, parse_train_log, "not a training run"),
        rounds=_first_present(root, ROUNDS, parse_rounds, "not an iterative training run"),
        ml_asr=load(root, ML_ASR, parse_ml_asr),
        ml_overlap=load(root, ML_OVERLAP, parse_overlap),
        ml_counts=load(root, ML_COUNTS, parse_ml_counts),
        ml_judge_note=_ml_judge_note(root, config_text_of(root)) if (root / ML_ASR).is_file() else "",
    )
    run.files = _file_statuses(run)
    if isinstance(run.asr, AsrResults):
        run.problems.extend(f"{ASR}: {p}" for p in run.asr.problems)
    return run


def _file_statuses(run: RunData) -> list[FileStatus]:
    parts: list[tuple[str, Any]] = [
        (MANIFEST, run.manifest), (CONFIG, run.config_text), (HISTOGRAMS, run.histograms),
        (NEURON_SUMMARY, run.neuron_summary), (ASR, run.asr), (EXAMPLES, run.examples), (VERDICTS, run.verdicts),
        (COMPLETIONS_DIR + "/", run.completions), (CAPABILITY, run.capability), (TRAIN_LOG[0], run.train_log),
        (ROUNDS[0], run.rounds), (ML_ASR, run.ml_asr), (ML_OVERLAP, run.ml_overlap), (ML_COUNTS, run.ml_counts),
    ]
    if isinstance(run.neurons, NeuronsData):
        parts.insert(2, (NEURON_INDEX, run.neurons.index))
        parts[3:3] = [(f"neurons/{n}.json", s) for n, s in run.neurons.sets.items()]
    else:
        parts.insert(2, ("neurons/", run.neurons))
    out = []
    for rel, val in parts:
        if isinstance(val, Missing):
            out.append(FileStatus(val.file if val.file != rel and val.file.startswith(rel) else rel, val.kind,
                                  val.reason))
        else:
            out.append(FileStatus(rel, "ok", ""))
    return out
