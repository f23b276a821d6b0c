"""Tolerant readers of a run directory: every file becomes typed data or a :class:`Missing` marker.

Nothing here raises on bad input. A file that is absent, unreadable, not valid JSON (e.g. truncated by
a crash) or shaped differently from what is documented below becomes ``Missing(file, reason, kind)``,
and the report shows that reason where the section would be. Entries that are individually broken
(one condition with a non-numeric ``k``) are skipped and listed in ``problems``. Pure Python + stdlib:
no torch, no numpy, no model code.

Every file is read through :mod:`safeneurons.runformat`, the one place that names what a run directory
holds (and :data:`~safeneurons.runformat.ENTRIES`, which report section shows each file). There are no
alternative names here: a folder written by an earlier version is brought onto the current format by
:func:`safeneurons.runformat.migrate` (``scripts/migrate_results.py``), not guessed at by the reader.
Shapes read (paths relative to the run directory; ``<p>`` is the identification prefix, ``base/`` in a
train run); extra keys are ignored, missing optional keys are shown as "n/a".

=====================================  ===================================================================
``manifest.json``                      ``{format, command, created, finished?, status, resumed?, config,
                                       environment {safeneurons, python, platform, machine, cpu_count,
                                       libraries{..}}, stages {name: {status, seconds?, error?, ...}}, model
                                       {spec, name, checksum, class, dtype, source, shape {n_layers,
                                       site_sizes, ...}}, data {role: {name, origin, n, sha256, notes[]}}}``
``config.yaml``                        the resolved config, shown verbatim
``reused.json``                        ``{reused: [{source, copied [..], at}]}`` (caches from --reuse)
``<p>neurons/index.json``              ``[set name, ...]`` (the identified sets, e.g. ES, SAS, FULL)
``<p>neurons/<NAME>.json``             a NeuronSet (``safeneurons.neuronset/1``): ``{name, size,
                                       fraction_of_neurons, model {n_layers, site_sizes}, provenance
                                       {method, tau_es, tau_sas, criterion, ...}, counts {site: {layer:
                                       n}}, neurons {"layer.site": [indices]}}``; ``RANDOM<seed>.json`` too;
                                       also ``neurons/multilingual/<lang>/<kind>.json``,
                                       ``neurons/multilingual/expansion_target.json``, ``neurons/categories/*``
``<p>neurons/score_histograms.json``   ``{tau_es, tau_sas, statistic, effect_size: H, sas_z: H}`` with
                                       ``H = {edges[B+1], counts[B], n, max_per_layer[L]}``
``neurons/summary.md``                 markdown, shown verbatim
``analysis.json``                      ``{decomposition {categories, sizes, union, core, shared, specific,
                                       specific_per_category}, overlap_curve [{K, n_subsets, of, mean, std,
                                       min, max}], layer_profiles {..}, pairwise? {names, jaccard}}``
``asr.json``                           ``{judge, judge_note?, summary {COND: AsrEntry}, table
                                       (safeneurons.asr_table/1: rows [{condition, category, language, k,
                                       n, asr, ci_lo, ci_hi, n_refusal, n_compliance, n_degenerate,
                                       n_unjudged, n_total}])}``
``examples.json``                      ``{COND: [{prompt, response, label, category}]}``
``verdicts.json``                      ``[{condition, category, language, id, prompt, response, verdict
                                       {label, harmful, score, reason, judge}}]`` (fallback for examples)
``completions/<COND>.json``            ``[{id, category, prompt, response}]`` (counted)
``capability.json``                    ``{COND: {tasks {task: {task, n, acc, acc_norm?, stderr?}},
                                       perplexity?: float}}``
``robustness.json``                    ``{model: RobustnessRow}``; each model's attack is the run directory
                                       ``attack-<model>/`` (loaded as a run of its own, with its report)
``over_refusal/<model>.json``          ``{prompts, n, k, refusal_rate, ci95 [lo, hi], degenerate_rate, ..}``
``pairs.jsonl``                        one preference pair per line: ``{prompt, chosen, rejected, source}``
``<folder>/train_log.json``            ``{"records": [{step, loss, "rewards/margins", frozen_drift, ...}]}``
                                       for every training folder (``<method>/``, ``<method>/round_<t>/``,
                                       ``expansion/<tag>/``) with its ``result.json`` (``{kind,
                                       global_step, train_loss, neurons, trainable_fraction, frozen_drift,
                                       seconds}``), ``frozen.json`` / ``target.json`` (NeuronSets) and
                                       ``trained.json`` (``{key, info}``)
``<method>/round_<t>/round.json``      RoundMarker ``{round, identified, frozen, train}`` with the round's
                                       ``identified.json`` and ``neurons.json``; its FULL ASR is
                                       ``attack-<method>_T<t>/asr.json``'s (else robustness.json's)
``multilingual/asr.json``              ``{COND: {lang: AsrEntry}}``; ``asr.md``, ``judge.json``
                                       ``{judge_note}``, ``verdicts.json`` (examples) and
                                       ``completions/<lang>/<COND>.json`` (counted) beside it
``multilingual/overlap*.json``         OverlapMatrix ``{languages [..], jaccard [[..]], kind}``
``multilingual/counts.json``           ``{lang: {MS: n, SS: n, S_jail, S_norm, per_layer_SS [..],
                                       fraction_SS}}``
``multilingual/correlation.json``      ``{n, languages, pearson, pearson_p, spearman, spearman_p, note}``
``multilingual/causal_tests.json``     ``{baseline, languages, tests {COND: {compliance|refusal: {n, rate,
                                       vs_<other>: {difference, difference_ci95, p_mcnemar, ..}}}}}``
``multilingual/expansion.json``        the expansion summary (scalars shown; ``asr.by_scale`` as a table)
``multilingual/over_refusal/*.json``   as ``over_refusal/<model>.json``
``multilingual/benign_check/*.json``   ``{lang: [{prompt, response, refused}]}``
``brittleness/curve.json``             ``{schema, model, site, n_total, fractions [%], random_seeds, iterative_step,
                                       break_asr, ranking, identified_set, identified_neurons,
                                       identified_fraction [%], exclude?, split, n_eval, judge, judge_note?,
                                       neurons_to_break [{attacker, seed, fraction, n_neurons?, asr?}],
                                       leaves_random_band [{attacker, fraction, n_neurons?, ci_low?,
                                       random_ci_high?}], points [BrittlenessPoint]}``; ``curve.md`` (shown
                                       verbatim), ``judge.json`` ``{judge_note}`` and
                                       ``iterative/steps.json`` ``[{before, after, added, stats_reused}]``
``monitor_eval.json``                  :class:`safeneurons.runformat.MonitorEvalRecord` ``{schema, model, split,
                                       fprs, bootstrap, judge, judge_note, conditions, readouts, fits, skipped,
                                       data, multijail, groups, notes, rows [MonitorEvalRow], curves
                                       [MonitorEvalCurve]}``; ``monitor_eval.md`` (shown verbatim) and
                                       ``monitor_eval/judge.json`` ``{judge_note}``
=====================================  ===================================================================
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar

from safeneurons import runformat as rf
from safeneurons.evaluate.asr import wilson_interval  # noqa: F401  (re-exported; imports no torch)

log = logging.getLogger("safeneurons.report")

T = TypeVar("T")
MissingKind = Literal["absent", "unreadable", "invalid"]
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_TEXT_CHARS = 200_000
CONDITION_ORDER = ("ORI", "ES", "SAS", "FULL", "RANDOM")
NA_TEXT = "n/a"

# file names: safeneurons.runformat (re-exported here for the report's modules)
MANIFEST = rf.MANIFEST
CONFIG = rf.CONFIG
NEURON_INDEX = rf.NEURON_INDEX
HISTOGRAMS = rf.HISTOGRAMS
NEURON_SUMMARY = rf.NEURON_SUMMARY
ASR = rf.ASR
EXAMPLES = rf.EXAMPLES
VERDICTS = rf.VERDICTS
COMPLETIONS_DIR = rf.COMPLETIONS_DIR
CAPABILITY = rf.CAPABILITY
ML_ASR = rf.ML_ASR
ML_OVERLAP = rf.ML_OVERLAP
ML_COUNTS = rf.ML_COUNTS


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
    about = read_json(root, rf.ML_JUDGE)
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
    language: str = ""


def _example(x: Any) -> Example:
    d = _mapping(x, "an example")
    verdict = d.get("verdict") if isinstance(d.get("verdict"), Mapping) else {}
    label = _label(d.get("label")) or _label(verdict.get("label"), "unjudged" if "verdict" in d else "")
    return Example(prompt=_text(d.get("prompt"), 8000), response=_text(d.get("response"), 8000),
                   label=label, category=_label(d.get("category")), language=_label(d.get("language")))


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


def parse_train_log(raw: Any) -> TrainLog:
    """``train_log.json``: ``{"records": [{step, loss, "rewards/margins", frozen_drift, ...}]}`` (as
    ``safeneurons.train.dpo.TrainLogCallback`` writes it)."""
    items = _list(_mapping(raw, "the training log").get("records"), "'records'")
    steps = []
    for i, rec in enumerate(items):
        if not isinstance(rec, Mapping):
            continue
        step = _num(rec.get("step"))
        steps.append(TrainStep(step if step is not None else float(i), _num(rec.get("loss")),
                               _num(rec.get("rewards/margins")), _num(rec.get("frozen_drift"))))
    steps = [s for s in steps if s.loss is not None or s.margin is not None or s.drift is not None]
    if not steps:
        raise _Invalid("no entry has a loss, reward margin or frozen drift")
    drifts = [abs(s.drift) for s in steps if s.drift is not None]
    return TrainLog(steps, max(drifts) if drifts else None)


@dataclass(frozen=True)
class Round:
    round: str
    n_neurons: int | None  # frozen in the round (the union with earlier rounds)
    asr: AsrCell | None  # FULL(SN-) attack success of the round's model
    identified: int | None = None


def parse_round_marker(raw: Any) -> rf.RoundMarker:
    try:
        m = rf.RoundMarker.from_dict(raw)
    except (rf.RecordError, TypeError, ValueError) as exc:
        raise _Invalid(str(exc)) from None
    if m.round < 1 or m.identified < 0 or m.frozen < 0:
        raise _Invalid("round, identified and frozen should be counts")
    return m


def parse_rounds(raw: Any) -> list[Round]:
    """A list of round markers (``round.json``, RoundMarker) as rounds, in order (without their ASR)."""
    out = [Round(f"T{m.round}", m.frozen, None, m.identified)
           for m in (parse_round_marker(r) for r in _list(raw, "the rounds"))]
    if not out:
        raise _Invalid("no rounds")
    return sorted(out, key=lambda r: int(r.round[1:]))


@dataclass(frozen=True)
class TrainResultInfo:
    """A training folder's ``result.json``."""

    kind: str
    steps: int | None
    train_loss: float | None
    neurons: int | None
    trainable_fraction: float | None
    frozen_drift: float | None
    seconds: float | None


def parse_train_result(raw: Any) -> TrainResultInfo:
    d = _mapping(raw, "the training result")
    if "kind" not in d and "global_step" not in d:
        raise _Invalid("no 'kind' and no 'global_step'")
    return TrainResultInfo(_label(d.get("kind"), "n/a"), _count(d.get("global_step")), _num(d.get("train_loss")),
                           _count(d.get("neurons")), _prob(d.get("trainable_fraction")), _num(d.get("frozen_drift")),
                           _num(d.get("seconds")))


@dataclass(frozen=True)
class TrainedMarker:
    """An expansion folder's ``trained.json``: the content key its model was trained for, and the stage."""

    key: str
    n_examples: int | None
    target_neurons: int | None


def parse_trained_marker(raw: Any) -> TrainedMarker:
    d = _mapping(raw, "the file")
    info = d.get("info") if isinstance(d.get("info"), Mapping) else {}
    return TrainedMarker(_label(d.get("key"), ""), _count(info.get("n_examples")), _count(info.get("target_neurons")))


@dataclass
class Training:
    """One training folder (``<method>/``, ``<method>/round_<t>/``, ``expansion/<tag>/``)."""

    label: str
    folder: str
    log: TrainLog | Missing
    result: TrainResultInfo | Missing
    neurons: dict[str, NeuronSetInfo | Missing]  # frozen.json / target.json / identified.json / neurons.json
    marker: TrainedMarker | Missing | None = None


@dataclass(frozen=True)
class PairsSummary:
    n: int
    by_source: dict[str, int]
    problems: int  # lines that are not a pair


def read_jsonl(root: Path, rel: str, limit: int = 200_000) -> list[Any] | Missing:
    """The JSON objects of a JSONL file (up to ``limit`` lines), or a :class:`Missing` saying why not."""
    p = root / rel
    try:
        if not p.is_file():
            return Missing(rel, f"{rel} was not written by this run", "absent")
        size = p.stat().st_size
        if size > MAX_JSON_BYTES:
            return Missing(rel, f"{rel} is {size / 2**20:.0f} MiB, more than the report reads", "unreadable")
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()[:limit]
    except OSError as exc:
        return Missing(rel, f"{rel} could not be read ({exc.strerror or exc})", "unreadable")
    out: list[Any] = []
    for line in lines:
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append(None)
    if not out:
        return Missing(rel, f"{rel} is empty (the run may have stopped while writing it)", "unreadable")
    return out


def parse_pairs(raw: list[Any]) -> PairsSummary:
    by_source: dict[str, int] = {}
    bad = 0
    for rec in raw:
        if not isinstance(rec, Mapping) or "chosen" not in rec or "rejected" not in rec:
            bad += 1
            continue
        src = _label(rec.get("source"), "unlabelled")
        by_source[src] = by_source.get(src, 0) + 1
    if not by_source:
        raise _Invalid("no line is a preference pair ({prompt, chosen, rejected, source})")
    return PairsSummary(sum(by_source.values()), dict(sorted(by_source.items())), bad)


@dataclass(frozen=True)
class RobustnessModel:
    """One model of ``robustness.json``, with the k/n and interval of each ASR where its attack run has them."""

    name: str
    row: rf.RobustnessRow
    cells: dict[str, AsrCell]


def parse_robustness(raw: Any) -> dict[str, rf.RobustnessRow]:
    d = _mapping(raw, "the file")
    out = {}
    for name, row in d.items():
        try:
            out[_label(name, "?")] = rf.RobustnessRow.from_dict(row)
        except (rf.RecordError, TypeError, ValueError):
            continue
    if not out:
        raise _Invalid("no model row with an 'asr' mapping")
    return out


@dataclass(frozen=True)
class OverRefusal:
    k: int | None
    n: int | None
    rate: float | None
    ci_lo: float | None
    ci_hi: float | None
    degenerate_rate: float | None
    prompts: str


def parse_over_refusal(raw: Any) -> OverRefusal:
    d = _mapping(raw, "the file")
    rate = _prob(d.get("refusal_rate"))
    k, n = _count(d.get("k")), _count(d.get("n"))
    if rate is None and k is not None and n:
        rate = k / n
    if rate is None:
        raise _Invalid("no 'refusal_rate'")
    ci = d.get("ci95") if isinstance(d.get("ci95"), list) and len(d.get("ci95")) == 2 else [None, None]
    return OverRefusal(k, n, rate, _prob(ci[0]), _prob(ci[1]), _prob(d.get("degenerate_rate")),
                       _label(d.get("prompts"), "n/a"))


@dataclass(frozen=True)
class Overlap:
    languages: list[str]
    jaccard: list[list[float | None]]


def parse_overlap(raw: Any) -> Overlap:
    _mapping(raw, "the file")
    try:
        m = rf.OverlapMatrix.from_dict(raw)
    except rf.RecordError as exc:
        raise _Invalid(str(exc)) from None
    langs = [_label(x, "?") for x in m.languages]
    mat = m.jaccard
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
        try:
            c = rf.LanguageCounts.from_dict(v)
        except rf.RecordError:
            continue
        out[_label(lang, "?")] = LanguageCounts(_count(c.sizes.get("MS")), _count(c.sizes.get("SS")),
                                                [n if (n := _count(x)) is not None else 0 for x in c.per_layer_ss])
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


@dataclass(frozen=True)
class Correlation:
    rows: list[tuple[str, str]]
    note: str


def parse_correlation(raw: Any) -> Correlation:
    d = _mapping(raw, "the file")
    rows = []
    for key, label in (("n", "languages"), ("pearson", "Pearson r"), ("pearson_p", "Pearson p"),
                       ("spearman", "Spearman ρ"), ("spearman_p", "Spearman p")):
        v = _num(d.get(key))
        rows.append((label, "n/a" if v is None else (f"{int(v)}" if key == "n" else f"{v:.3g}")))
    langs = d.get("languages") if isinstance(d.get("languages"), list) else []
    rows.append(("languages used", ", ".join(_label(x, "?") for x in langs) or "n/a"))
    left = d.get("left_out") if isinstance(d.get("left_out"), list) else []
    if left:
        rows.append(("left out", ", ".join(_label(x, "?") for x in left)))
    return Correlation(rows, _text(d.get("note"), 600))


@dataclass(frozen=True)
class CausalTest:
    condition: str
    outcome: str  # compliance | refusal
    n: int | None
    rate: float | None
    versus: dict[str, str]  # other condition -> "difference [CI], p"


def parse_causal_tests(raw: Any) -> tuple[str, list[str], list[CausalTest]]:
    """``(baseline, languages, rows)`` of ``multilingual/causal_tests.json``."""
    d = _mapping(raw, "the file")
    tests = _mapping(d.get("tests"), "'tests'")
    rows = []
    for cond, per in tests.items():
        if not isinstance(per, Mapping):
            continue
        for outcome, r in per.items():
            if not isinstance(r, Mapping):
                continue
            vs = {}
            for key, t in r.items():
                if str(key).startswith("vs_") and isinstance(t, Mapping):
                    diff, p = _num(t.get("difference")), _num(t.get("p_mcnemar"))
                    ci = t.get("difference_ci95") if isinstance(t.get("difference_ci95"), list) else []
                    lo, hi = (_num(ci[0]), _num(ci[1])) if len(ci) == 2 else (None, None)
                    cit = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if lo is not None and hi is not None else ""
                    vs[str(key)[3:]] = (f"{100 * diff:+.1f}{cit}" if diff is not None else "n/a") + \
                        (f", p = {p:.3g}" if p is not None else "")
            rows.append(CausalTest(_label(cond, "?"), _label(outcome, "?"), _count(r.get("n")), _prob(r.get("rate")), vs))
    if not rows:
        raise _Invalid("no condition in 'tests'")
    langs = d.get("languages") if isinstance(d.get("languages"), list) else []
    return _label(d.get("baseline"), "n/a"), [_label(x, "?") for x in langs], rows


@dataclass(frozen=True)
class ExpansionSummary:
    facts: dict[str, str]  # scalar entries, flattened
    by_scale: list[dict[str, str]]


def parse_expansion(raw: Any) -> ExpansionSummary:
    d = _mapping(raw, "the file")
    facts = _flat({k: v for k, v in d.items() if k not in ("asr", "paired_vs_original")}, limit=80)
    scales = []
    by_scale = (d.get("asr") or {}).get("by_scale") if isinstance(d.get("asr"), Mapping) else None
    if isinstance(by_scale, Mapping):
        for scale, r in by_scale.items():
            if isinstance(r, Mapping):
                def pct(key: str, signed: bool = False, r: Mapping[str, Any] = r) -> str:
                    v = _num(r.get(key))
                    return "n/a" if v is None else (f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}")
                bounds = r.get("within_bounds") if isinstance(r.get("within_bounds"), Mapping) else {}
                scales.append({"scale": _label(scale, "?"), "condition": _label(r.get("condition"), "n/a"),
                               "mean": pct("mean_non_reference"), "reduction": pct("relative_reduction"),
                               "reference": pct("reference_delta", True), "over_refusal": pct("over_refusal_delta", True),
                               "benign": pct("translated_benign_refusal_delta", True),
                               "bounds": ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in bounds.items()
                                                   if v is not None) or "n/a"})
    if not facts and not scales:
        raise _Invalid("an empty expansion summary")
    return ExpansionSummary(facts, scales)


def parse_benign_check(raw: Any) -> dict[str, tuple[int, int]]:
    """``{lang: (refused, n)}`` of a translated-benign check."""
    d = _mapping(raw, "the file")
    out = {}
    for lang, items in d.items():
        if isinstance(items, list):
            flags = [bool(x.get("refused")) for x in items if isinstance(x, Mapping)]
            out[_label(lang, "?")] = (sum(flags), len(flags))
    if not out:
        raise _Invalid("no language entries")
    return out


@dataclass(frozen=True)
class CurvePoint:
    """One grid point of a brittleness curve (:class:`safeneurons.runformat.BrittlenessPoint`)."""

    attacker: str
    seed: int | None
    fraction: float  # percent of the site's neurons zeroed
    n_neurons: int | None
    cell: AsrCell
    degenerate_share: float | None
    perplexity: float | None
    examples: tuple[Example, ...] = ()

    @property
    def random(self) -> bool:
        return self.attacker.startswith("random/")


@dataclass(frozen=True)
class CurveMark:
    """A summary point of a curve: the first fraction whose ASR reaches ``break_asr`` (per curve) or whose
    interval leaves the random band (per attacker); ``fraction`` None: not reached."""

    attacker: str
    seed: int | None
    fraction: float | None
    n_neurons: int | None
    asr: float | None = None
    ci_low: float | None = None
    random_ci_high: float | None = None


@dataclass(frozen=True)
class IterativeStepInfo:
    before: int | None
    after: int | None
    added: int
    stats_reused: bool | None


@dataclass
class BrittlenessCurve:
    """``brittleness/curve.json``: ASR against the percent of a site's neurons zeroed, per attacker."""

    model: str
    site: str
    n_total: int | None
    fractions: list[float]
    random_seeds: list[int]
    break_asr: float
    ranking: str
    identified_set: str
    identified_neurons: int | None
    identified_fraction: float | None  # percent
    judge: str
    judge_note: str
    facts: list[tuple[str, str]]  # settings shown as they are (split, n_eval, iterative step, excluded)
    points: list[CurvePoint]
    neurons_to_break: list[CurveMark]
    leaves_random_band: list[CurveMark]
    problems: tuple[str, ...] = ()
    steps: list[IterativeStepInfo] | Missing | None = None  # iterative/steps.json (None: not read)

    @property
    def attackers(self) -> list[str]:
        return list(dict.fromkeys(p.attacker for p in self.points))


def _percent(x: Any) -> float | None:
    v = _num(x)
    return v if v is not None and 0.0 <= v <= 100.0 else None


def _seed(x: Any) -> int | None:
    return None if x is None or isinstance(x, bool) else _count(x)


def _curve_point(raw: Any) -> CurvePoint:
    try:
        p = rf.BrittlenessPoint.from_dict(raw)
    except rf.RecordError as exc:
        raise _Invalid(str(exc)) from None
    fraction = _percent(p.fraction)
    if fraction is None:
        raise _Invalid(f"fraction {_text(p.fraction, 40)} is not a percentage")
    cell = parse_asr_cell({"k": p.k, "n": p.n, "asr": p.asr, "ci": list(p.ci), "n_degenerate": p.n_degenerate,
                           "n_unjudged": p.n_unjudged, "n_neurons": p.n_neurons})
    share = _prob(raw.get("degenerate_share"))
    total, degenerate = _count(p.n_total), _count(p.n_degenerate)
    if share is None and total and degenerate is not None and degenerate <= total:
        share = degenerate / total
    ppl = _num(p.perplexity)
    return CurvePoint(_label(p.attacker, "?"), _seed(p.seed), fraction, _count(p.n_neurons), cell, share,
                      ppl if ppl is not None and ppl > 0 else None, tuple(_example(e) for e in p.examples))


def _curve_marks(raw: Any, problems: list[str], what: str) -> list[CurveMark]:
    out = []
    for i, m in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(m, Mapping) or not _label(m.get("attacker")):
            problems.append(f"{what} {i}: not an entry with an attacker")
            continue
        out.append(CurveMark(_label(m.get("attacker")), _seed(m.get("seed")), _percent(m.get("fraction")),
                             _count(m.get("n_neurons")), _prob(m.get("asr")), _prob(m.get("ci_low")),
                             _prob(m.get("random_ci_high"))))
    return out


def parse_brittleness(raw: Any) -> BrittlenessCurve:
    """``brittleness/curve.json`` (as :func:`safeneurons.pipelines.brittleness.run_brittleness` writes it)."""
    d = _mapping(raw, "the file")
    problems: list[str] = []
    points = []
    for i, p in enumerate(_list(d.get("points"), "'points'")):
        try:
            points.append(_curve_point(p))
        except _Invalid as exc:
            problems.append(f"point {i}: {exc}")
        except (AttributeError, TypeError) as exc:
            problems.append(f"point {i}: {type(exc).__name__}")
    if not points:
        raise _Invalid("no point with an attacker, a fraction and k / n")
    fractions = sorted({v for x in d.get("fractions") or [] if (v := _percent(x)) is not None}
                       if isinstance(d.get("fractions"), list) else {p.fraction for p in points})
    seeds = [s for x in d.get("random_seeds") or [] if (s := _seed(x)) is not None] \
        if isinstance(d.get("random_seeds"), list) else []
    exclude = d.get("exclude") if isinstance(d.get("exclude"), Mapping) else None
    facts = [("split", _label(d.get("split"), NA_TEXT)), ("held-out prompts", num_text(d.get("n_eval"))),
             ("iterative step", f"{num_text(d.get('iterative_step'))} %" if _num(d.get("iterative_step")) is not None
              else "once per grid point"),
             ("excluded neurons", f"{num_text(exclude.get('n'))} ({_text(exclude.get('path'), 300)})"
              if exclude is not None else "none")]
    brk = _prob(d.get("break_asr"))
    return BrittlenessCurve(
        model=_label(d.get("model"), ""), site=_label(d.get("site"), "mlp"), n_total=_count(d.get("n_total")),
        fractions=fractions, random_seeds=seeds, break_asr=brk if brk is not None else 0.5,
        ranking=_text(d.get("ranking"), 300), identified_set=_label(d.get("identified_set"), ""),
        identified_neurons=_count(d.get("identified_neurons")),
        identified_fraction=_percent(d.get("identified_fraction")), judge=_label(d.get("judge"), NA_TEXT),
        judge_note=_text(d.get("judge_note"), 600), facts=facts, points=points,
        neurons_to_break=_curve_marks(d.get("neurons_to_break"), problems, "neurons_to_break"),
        leaves_random_band=_curve_marks(d.get("leaves_random_band"), problems, "leaves_random_band"),
        problems=tuple(problems))


def parse_iterative_steps(raw: Any) -> list[IterativeStepInfo]:
    out = []
    for s in _list(raw, "the file"):
        if isinstance(s, Mapping):
            added = s.get("added")
            reused = s.get("stats_reused")
            out.append(IterativeStepInfo(_count(s.get("before")), _count(s.get("after")),
                                         len(added) if isinstance(added, list) else 0,
                                         reused if isinstance(reused, bool) else None))
    if not out:
        raise _Invalid("no step")
    return out


@dataclass
class MonitorEval:
    """``monitor_eval.json``: the readouts compared on held-out prompts (:class:`~safeneurons.runformat.MonitorEvalRecord`,
    rows whose numbers are not numbers left out and listed in ``problems``)."""

    record: rf.MonitorEvalRecord
    problems: tuple[str, ...] = ()

    @property
    def judge_note(self) -> str:
        return self.record.judge_note

    @property
    def conditions(self) -> list[str]:
        names = [_label(c.get("name")) for c in self.record.conditions if _label(c.get("name"))]
        return names or list(dict.fromkeys(r.condition for r in self.record.rows))

    @property
    def groups(self) -> list[str]:
        return self.record.groups or list(dict.fromkeys(r.group for r in self.record.rows
                                                        if not r.group.startswith("multijail:")))

    @property
    def languages(self) -> list[str]:
        return list(dict.fromkeys(r.group.split(":", 1)[1] for r in self.record.rows if r.group.startswith("multijail:")))


def _eval_row_ok(row: rf.MonitorEvalRow) -> str:
    """Why a row cannot be shown (empty: it can)."""
    if _count(row.n_pos) is None or _count(row.n_neg) is None:
        return "n_pos / n_neg are not counts"
    if row.auroc is not None and _prob(row.auroc) is None:
        return f"AUROC {_text(row.auroc, 40)} is not in [0, 1]"
    return ""


def parse_monitor_eval(raw: Any) -> MonitorEval:
    """``monitor_eval.json`` (as :func:`safeneurons.pipelines.monitor_eval.run_monitor_eval` writes it)."""
    d = _mapping(raw, "the file")
    if d.get("schema") not in (None, rf.ME_SCHEMA):
        raise _Invalid(f"schema {_text(d.get('schema'), 60)} is not {rf.ME_SCHEMA}")
    try:
        rec = rf.MonitorEvalRecord.from_dict(d)
    except (rf.RecordError, TypeError, AttributeError) as exc:
        raise _Invalid(str(exc)) from None
    problems, keep = [], []
    for i, row in enumerate(rec.rows):
        why = _eval_row_ok(row)
        if why:
            problems.append(f"row {i} ({_label(row.readout)} on {_label(row.group)}): {why}")
        else:
            keep.append(row)
    if not keep:
        raise _Invalid("no row with counts and an AUROC")
    return MonitorEval(replace(rec, rows=keep), tuple(problems))


@dataclass(frozen=True)
class Analysis:
    """``analysis.json`` of an analyze run."""

    facts: list[tuple[str, str]]
    per_category: list[dict[str, str]]  # category, size, specific
    overlap_curve: list[dict[str, str]]
    pairwise: dict[str, Any] | None  # {names, rows}


def parse_analysis(raw: Any) -> Analysis:
    d = _mapping(raw, "the file")
    dec = _mapping(d.get("decomposition"), "'decomposition'")
    facts = [(k, num_text(dec.get(k))) for k in ("union", "core", "shared", "specific") if k in dec]
    sizes = dec.get("sizes") if isinstance(dec.get("sizes"), Mapping) else {}
    spec = dec.get("specific_per_category") if isinstance(dec.get("specific_per_category"), Mapping) else {}
    cats = dec.get("categories") if isinstance(dec.get("categories"), list) else list(sizes)
    per_cat = [{"category": _label(c, "?"), "size": num_text(sizes.get(c)), "specific": num_text(spec.get(c))}
               for c in cats]
    curve = []
    for r in d.get("overlap_curve") if isinstance(d.get("overlap_curve"), list) else []:
        if isinstance(r, Mapping):
            curve.append({k: num_text(r.get(k)) for k in ("K", "n_subsets", "of", "mean", "std", "min", "max")})
    pairwise = None
    pw = d.get("pairwise")
    if isinstance(pw, Mapping) and isinstance(pw.get("names"), list) and isinstance(pw.get("jaccard"), list):
        names = [_label(x, "?") for x in pw["names"]]
        pairwise = {"names": names, "rows": [{"label": n, "cells": [num_text(v) for v in row] if isinstance(row, list) else []}
                                             for n, row in zip(names, pw["jaccard"])]}
    if not facts and not per_cat:
        raise _Invalid("no decomposition counts")
    return Analysis(facts, per_cat, curve, pairwise)


def num_text(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "n/a"
    return f"{int(v):,}" if v.is_integer() else f"{v:.3g}"


@dataclass(frozen=True)
class ReusedSource:
    source: str
    n_files: int
    at: str


def parse_reused(raw: Any) -> list[ReusedSource]:
    items = _list(_mapping(raw, "the file").get("reused"), "'reused'")
    out = [ReusedSource(_text(r.get("source"), 300), len(r.get("copied") or []) if isinstance(r.get("copied"), list) else 0,
                        _label(r.get("at"), "")) for r in items if isinstance(r, Mapping)]
    if not out:
        raise _Invalid("no source listed")
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
    sets: dict[str, NeuronSetInfo | Missing]  # identified sets (index order), RANDOM*, then other groups


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
    train_log: TrainLog | Missing  # the first training folder's log (all of them: trainings)
    rounds: list[Round] | Missing
    ml_asr: dict[str, dict[str, AsrCell]] | Missing
    ml_overlap: Overlap | Missing
    ml_counts: dict[str, LanguageCounts] | Missing
    ml_judge_note: str = ""  # multilingual/judge.json's judge_note (judge, version, agreement)
    files: list[FileStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    command: str = ""
    reused: list[ReusedSource] | Missing = field(default_factory=lambda: _absent(rf.REUSED))
    analysis: Analysis | Missing = field(default_factory=lambda: _absent(rf.ANALYSIS))
    asr_md: str | Missing = field(default_factory=lambda: _absent(rf.ASR_MD))
    trainings: list[Training] = field(default_factory=list)
    pairs: PairsSummary | Missing = field(default_factory=lambda: _absent(rf.PAIRS))
    robustness: dict[str, RobustnessModel] | Missing = field(default_factory=lambda: _absent(rf.ROBUSTNESS))
    robustness_md: str | Missing = field(default_factory=lambda: _absent(rf.ROBUSTNESS_MD))
    over_refusal: dict[str, OverRefusal | Missing] = field(default_factory=dict)
    subruns: dict[str, RunData] = field(default_factory=dict)  # a train run's attack-<model>/ runs
    ml_overlaps: dict[str, Overlap | Missing] = field(default_factory=dict)  # per set kind (MS, SS)
    ml_correlation: Correlation | Missing = field(default_factory=lambda: _absent(rf.ML_CORRELATION))
    ml_causal: tuple[str, list[str], list[CausalTest]] | Missing = field(
        default_factory=lambda: _absent(rf.ML_CAUSAL_TESTS))
    ml_expansion: ExpansionSummary | Missing = field(default_factory=lambda: _absent(rf.ML_EXPANSION))
    ml_over_refusal: dict[str, OverRefusal | Missing] = field(default_factory=dict)
    ml_benign_check: dict[str, dict[str, tuple[int, int]] | Missing] = field(default_factory=dict)
    ml_verdicts: VerdictSummary | Missing = field(default_factory=lambda: _absent(rf.ML_VERDICTS))
    ml_completions: dict[str, int] | Missing = field(default_factory=lambda: _absent(rf.ML_DIR + "/completions/"))
    ml_asr_md: str | Missing = field(default_factory=lambda: _absent(rf.ML_ASR_MD))
    brittleness: BrittlenessCurve | Missing = field(default_factory=lambda: _absent(rf.BR_CURVE))
    brittleness_md: str | Missing = field(default_factory=lambda: _absent(rf.BR_CURVE_MD))
    monitor_eval: MonitorEval | Missing = field(default_factory=lambda: _absent(rf.ME_RESULT))
    monitor_eval_md: str | Missing = field(default_factory=lambda: _absent(rf.ME_RESULT_MD))

    @property
    def model_name(self) -> str:
        if isinstance(self.manifest, ManifestInfo):
            return self.manifest.model.get("name") or self.manifest.model.get("spec") or "?"
        return "?"


def _absent(rel: str, why: str = "") -> Missing:
    return Missing(rel, f"{rel} was not written by this run" + (f" ({why})" if why else ""), "absent")


class _Reader:
    """Reads files of one run directory and remembers each one's status for the Files read table."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.read: list[tuple[str, Any]] = []

    def json(self, rel: str, parser: Callable[[Any], T], listed: bool = True) -> T | Missing:
        got = load(self.root, rel, parser)
        self.note(rel, got, listed)
        return got

    def text(self, rel: str, limit: int = 40_000, listed: bool = True) -> str | Missing:
        got = read_text(self.root, rel, limit)
        self.note(rel, got, listed)
        return got

    def note(self, rel: str, got: Any, listed: bool = True) -> None:
        """Record a read; ``listed`` False: an optional file, listed only when it is there."""
        if listed or not (isinstance(got, Missing) and got.kind == "absent"):
            self.read.append((rel, got))

    def glob(self, pattern: str) -> list[str]:
        """Files of the run matching a runformat pattern (one folder level per ``*``), sorted."""
        try:
            return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern) if p.is_file())
        except OSError:
            return []


def _load_neurons(r: _Reader, prefix: str) -> NeuronsData | Missing:
    root = r.root
    index_rel = prefix + rf.NEURON_INDEX
    index = load(root, index_rel, lambda raw: [_label(x) for x in _list(raw, "the index") if _label(x)])
    ndir = root / prefix / rf.NEURONS_DIR
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
    if isinstance(index, Missing) and index.kind == "absent" and not names and not randoms:
        index = []  # no identification in this run: other groups of sets may still be there
    r.note(index_rel, index)
    sets: dict[str, NeuronSetInfo | Missing] = {}
    for n in names + randoms:
        if "/" in n or "\\" in n or n.startswith("."):
            sets[n] = Missing(index_rel, f"index entry {n!r} is not a file name", "invalid")
            continue
        sets[n] = r.json(rf.neuron_set(n, prefix), parse_neuron_set)
    # per-language sets (SS-Neurons), kind by kind, then the expansion target; per-category sets (analyze)
    ml = r.glob(rf.ml_neuron_set("*", "*"))
    order = {k: i for i, k in enumerate(("SS", "MS", "S_jail", "S_norm"))}
    for rel in sorted(ml, key=lambda x: (order.get(Path(x).stem, 9), Path(x).stem, x)):
        lang = Path(rel).parent.name
        sets[f"{lang}/{Path(rel).stem}"] = r.json(rel, parse_neuron_set)
    if (root / rf.ML_EXPANSION_TARGET).is_file():
        sets["expansion_target"] = r.json(rf.ML_EXPANSION_TARGET, parse_neuron_set)
    for rel in r.glob(rf.category_set("*")):
        sets[f"categories/{Path(rel).stem}"] = r.json(rel, parse_neuron_set)
    if not sets:
        return index if isinstance(index, Missing) and index.kind != "absent" else \
            Missing(f"{prefix}{rf.NEURONS_DIR}/", f"no neuron sets in {prefix}{rf.NEURONS_DIR}/ (this run did not "
                    "identify neurons)", "absent")
    return NeuronsData(index, sets)


def _count_files(r: _Reader, pattern: str, folder: str, label: Callable[[str], str]) -> dict[str, int] | Missing:
    """How many items each JSON list file matching ``pattern`` holds, by ``label(rel)``."""
    rels = r.glob(pattern)
    if not rels:
        return Missing(folder, f"no {folder} folder in this run", "absent")
    out: dict[str, int] = {}
    for rel in rels:
        got = load(r.root, rel, lambda raw: len(_list(raw, "the completions")))
        if isinstance(got, int):
            out[label(rel)] = got
    if not out:
        return Missing(folder, f"{folder} holds no readable completion files", "unreadable")
    return out


def _load_completions(r: _Reader) -> dict[str, int] | Missing:
    got = _count_files(r, rf.completions("*"), rf.COMPLETIONS_DIR + "/", lambda rel: Path(rel).stem)
    if isinstance(got, dict):
        got = dict(sorted(got.items(), key=lambda kv: condition_sort_key(kv[0])))
    return got


def _training_label(folder: str) -> str:
    parts = folder.split("/")
    if len(parts) == 2 and (m := re.fullmatch(r"round_(\d+)", parts[1])):
        return f"{parts[0]} T{m.group(1)}"
    return " ".join(parts)


def _load_trainings(r: _Reader) -> list[Training]:
    """Every training folder the run format knows (``<method>/``, ``<method>/round_<t>/``, ``expansion/<tag>/``)."""
    folders: set[str] = set()
    for pattern in ("*/*", "*/*/*"):
        for rel in r.glob(pattern):
            e = rf.classify(rel)
            if e is not None and e.section == "training" and "/" in rel:
                folders.add(rel.rsplit("/", 1)[0])
    out = []
    for folder in sorted(folders, key=lambda f: (f.startswith(rf.EXPANSION_DIR), f.split("/")[0],
                                                   int(m.group(1)) if (m := re.search(r"round_(\d+)$", f)) else 0)):
        def opt(name: str, parser: Callable[[Any], T], folder: str = folder) -> T | Missing:
            return r.json(f"{folder}/{name}", parser, listed=False)

        sets = {name[:-5]: got for name in (rf.FROZEN, rf.TARGET, rf.ROUND_IDENTIFIED, rf.ROUND_NEURONS)
                if not is_missing(got := opt(name, parse_neuron_set)) or got.kind != "absent"}
        marker = opt(rf.EXPANSION_MARKER, parse_trained_marker)
        log_ = r.json(f"{folder}/{rf.TRAIN_LOG}", parse_train_log)
        out.append(Training(_training_label(folder), folder, log_, opt(rf.TRAIN_RESULT, parse_train_result), sets,
                            None if isinstance(marker, Missing) and marker.kind == "absent" else marker))
    return out


def _round_asr(method: str, t: int, subruns: Mapping[str, RunData], robustness: Any) -> AsrCell | None:
    """The FULL(SN-) attack success of round ``t``'s model: its attack run's, else robustness.json's rate."""
    sub = subruns.get(f"{method}_T{t}")
    if sub is not None and isinstance(sub.asr, AsrResults) and "FULL" in sub.asr.summary:
        return sub.asr.summary["FULL"]
    if isinstance(robustness, Mapping) and f"{method}_T{t}" in robustness:
        v = _prob(robustness[f"{method}_T{t}"].row.asr.get("FULL"))
        return AsrCell(None, None, v, None, None) if v is not None else None
    return None


def _load_rounds(r: _Reader, trainings: list[Training], subruns: Mapping[str, RunData], robustness: Any
                 ) -> list[Round] | Missing:
    pattern = rf.round_file("*", "*")
    markers = [(rel, r.json(rel, parse_round_marker)) for rel in r.glob(pattern)]
    bad = next((m for _, m in markers if isinstance(m, Missing)), None)
    ok = [(rel, m) for rel, m in markers if not isinstance(m, Missing)]
    if not ok:
        return bad or Missing(pattern, "no SafeNeuron rounds in this run (a train run with rounds > 1 writes "
                              f"{rf.round_file('safeneuron', '<t>')})", "absent")
    methods = sorted({rel.split("/")[0] for rel, _ in ok})
    sets = {t.folder: t.neurons for t in trainings}
    out = []
    for rel, m in sorted(ok, key=lambda x: (x[0].split("/")[0], x[1].round)):
        method = rel.split("/")[0]
        folder = rel.rsplit("/", 1)[0]
        frozen = sets.get(folder, {}).get(rf.ROUND_NEURONS[:-5])
        ident = sets.get(folder, {}).get(rf.ROUND_IDENTIFIED[:-5])
        out.append(Round(f"T{m.round}" if len(methods) == 1 else f"{method} T{m.round}",
                         frozen.size if isinstance(frozen, NeuronSetInfo) else m.frozen,
                         _round_asr(method, m.round, subruns, robustness),
                         ident.size if isinstance(ident, NeuronSetInfo) else m.identified))
    return out


def _load_robustness(r: _Reader, subruns: Mapping[str, RunData]) -> dict[str, RobustnessModel] | Missing:
    rows = r.json(rf.ROBUSTNESS, parse_robustness, listed=False)
    if isinstance(rows, Missing):
        return rows
    out = {}
    for name, row in rows.items():
        sub = subruns.get(name)
        cells = sub.asr.summary if sub is not None and isinstance(sub.asr, AsrResults) else {}
        out[name] = RobustnessModel(name, row, dict(cells))
    return out


def _by_name(r: _Reader, pattern: str, parser: Callable[[Any], T]) -> dict[str, T | Missing]:
    return {Path(rel).stem: r.json(rel, parser) for rel in r.glob(pattern)}


def load_run(path: str | Path, _subrun: bool = False) -> RunData:
    """Read everything a report needs from ``path``; never raises for bad content (a missing folder
    gives a RunData whose every part is Missing). A train run's ``attack-<model>/`` runs are read too
    (``subruns``)."""
    root = Path(path)
    r = _Reader(root)
    manifest = r.json(MANIFEST, parse_manifest)
    command = manifest.command if isinstance(manifest, ManifestInfo) else ""
    prefix = rf.identification_prefix(command)
    config_text = r.text(CONFIG)
    reused = r.json(rf.REUSED, parse_reused, listed=False)
    neurons = _load_neurons(r, prefix)
    histograms = r.json(prefix + rf.HISTOGRAMS, parse_histograms)
    neuron_summary = r.text(prefix + rf.NEURON_SUMMARY)
    analysis = r.json(rf.ANALYSIS, parse_analysis, listed=False)
    asr = r.json(ASR, parse_asr)
    asr_md = r.text(rf.ASR_MD, listed=False)
    examples = r.json(EXAMPLES, parse_examples)
    verdicts = r.json(VERDICTS, parse_verdicts)
    completions = _load_completions(r)
    r.note(COMPLETIONS_DIR + "/", completions)
    capability = r.json(CAPABILITY, parse_capability)
    subruns = {} if _subrun else {name: load_run(p, _subrun=True) for name, p in rf.subruns(root).items()}
    for name, sub in subruns.items():
        rel = rf.attack_dir(name) + "/"
        r.note(rel, sub.manifest if isinstance(sub.manifest, Missing) else "run")
    robustness = _load_robustness(r, subruns)
    robustness_md = r.text(rf.ROBUSTNESS_MD, listed=False)
    over = _by_name(r, rf.over_refusal("*"), parse_over_refusal)
    pairs_raw = read_jsonl(root, rf.PAIRS)
    pairs = parse(rf.PAIRS, pairs_raw, parse_pairs)
    r.note(rf.PAIRS, pairs, listed=False)
    trainings = _load_trainings(r)
    rounds = _load_rounds(r, trainings, subruns, robustness)
    first_log = next((t.log for t in trainings if isinstance(t.log, TrainLog)), None)
    train_log = first_log if first_log is not None else next(
        (t.log for t in trainings), Missing(f"*/{rf.TRAIN_LOG}", "no training log in this run (training writes "
                                                                 f"<method>/{rf.TRAIN_LOG})", "absent"))
    ml_asr = r.json(ML_ASR, parse_ml_asr)
    ml_overlap = r.json(ML_OVERLAP, parse_overlap)
    ml_counts = r.json(ML_COUNTS, parse_ml_counts)
    run = RunData(
        path=root, name=root.resolve().name or str(root), manifest=manifest, config_text=config_text,
        neurons=neurons, histograms=histograms, neuron_summary=neuron_summary, asr=asr, examples=examples,
        verdicts=verdicts, completions=completions, capability=capability, train_log=train_log, rounds=rounds,
        ml_asr=ml_asr, ml_overlap=ml_overlap, ml_counts=ml_counts,
        ml_judge_note=_ml_judge_note(root, config_text if isinstance(config_text, str) else "")
        if (root / ML_ASR).is_file() else "",
        command=command, reused=reused, analysis=analysis, asr_md=asr_md, trainings=trainings, pairs=pairs,
        robustness=robustness, robustness_md=robustness_md, over_refusal=over, subruns=subruns)
    if (root / rf.ML_DIR).is_dir():
        r.json(rf.ML_JUDGE, lambda raw: _mapping(raw, "the file"), listed=False)
        run.ml_asr_md = r.text(rf.ML_ASR_MD, listed=False)
        run.ml_overlaps = {k: got for k in rf.ML_KINDS
                           if not is_missing(got := r.json(rf.ml_overlap(k), parse_overlap, listed=False))
                           or got.kind != "absent"}
        run.ml_correlation = r.json(rf.ML_CORRELATION, parse_correlation, listed=False)
        run.ml_causal = r.json(rf.ML_CAUSAL_TESTS, parse_causal_tests, listed=False)
        run.ml_expansion = r.json(rf.ML_EXPANSION, parse_expansion, listed=False)
        run.ml_over_refusal = _by_name(r, rf.ml_over_refusal("*"), parse_over_refusal)
        run.ml_benign_check = _by_name(r, rf.ml_benign_check("*"), parse_benign_check)
        run.ml_verdicts = r.json(rf.ML_VERDICTS, parse_verdicts, listed=False)
        folder = f"{rf.ML_DIR}/{rf.COMPLETIONS_DIR}/"
        run.ml_completions = _count_files(r, rf.ml_completions("*", "*"), folder,
                                          lambda rel: "/".join(Path(rel).parts[-2:])[:-5])
        r.note(folder, run.ml_completions, listed=False)
    run.brittleness = _load_brittleness(r)
    if (root / rf.BR_DIR).is_dir():
        run.brittleness_md = r.text(rf.BR_CURVE_MD, listed=False)
    if (root / rf.ME_RESULT).exists() or command == "monitor-eval":
        run.monitor_eval = r.json(rf.ME_RESULT, parse_monitor_eval)
        run.monitor_eval_md = r.text(rf.ME_RESULT_MD, listed=False)
        about = r.json(rf.ME_JUDGE, lambda raw: _mapping(raw, "the file"), listed=False)
        if isinstance(run.monitor_eval, MonitorEval) and not run.monitor_eval.judge_note and isinstance(about, Mapping):
            run.monitor_eval.record = replace(run.monitor_eval.record, judge_note=_text(about.get("judge_note"), 600))
    run.files = _file_statuses(r.read, run)
    if isinstance(run.monitor_eval, MonitorEval):
        run.problems.extend(f"{rf.ME_RESULT}: {p}" for p in run.monitor_eval.problems)
    if isinstance(run.asr, AsrResults):
        run.problems.extend(f"{ASR}: {p}" for p in run.asr.problems)
    if isinstance(run.brittleness, BrittlenessCurve):
        run.problems.extend(f"{rf.BR_CURVE}: {p}" for p in run.brittleness.problems)
    return run


def _load_brittleness(r: _Reader) -> BrittlenessCurve | Missing:
    """The curve with its iterative steps; the judge line from judge.json where curve.json has none."""
    curve = r.json(rf.BR_CURVE, parse_brittleness)
    if not (r.root / rf.BR_DIR).is_dir():
        return curve
    about = r.json(rf.BR_JUDGE, lambda raw: _mapping(raw, "the file"), listed=False)
    if isinstance(curve, BrittlenessCurve):
        if not curve.judge_note and isinstance(about, Mapping):
            curve.judge_note = _text(about.get("judge_note"), 600)
        steps = r.json(rf.BR_STEPS, parse_iterative_steps, listed=False)
        curve.steps = None if isinstance(steps, Missing) and steps.kind == "absent" else steps
    return curve


def _file_statuses(read: list[tuple[str, Any]], run: RunData) -> list[FileStatus]:
    """One row per file (or folder/ of files) read, in reading order; the parts the report always looks
    for are listed even when absent."""
    parts = list(read)
    listed = {rel for rel, _ in parts}
    for rel, val in ((run.train_log.file if isinstance(run.train_log, Missing) else "", run.train_log),
                     (run.rounds.file if isinstance(run.rounds, Missing) else "", run.rounds)):
        if rel and rel not in listed:
            parts.append((rel, val))
    out = []
    for rel, val in parts:
        if isinstance(val, Missing):
            out.append(FileStatus(val.file if val.file != rel and val.file.startswith(rel) else rel, val.kind,
                                  val.reason))
        else:
            out.append(FileStatus(rel, "ok", ""))
    return out
