"""The run-folder format, in one place: every file a safeneurons command writes into its run directory.

Writers (the pipelines, and the training loops for their output folders) take their paths from here and
the report (:mod:`safeneurons.report.load`) reads through here only, so the two cannot drift apart. A base
module: it imports no layer (pure Python, no torch), so every layer can use it.

* :data:`FORMAT` is the version of this layout; new runs stamp it into ``manifest.json`` (``"format"``).
* Path constants and small path functions name each file, per command (attack, identify/stats, train,
  multilingual, analyze, brittleness). Relative to the run directory; ``prefix`` puts a stage's files in a subfolder
  (the train run identifies its starting model's neurons under :data:`BASE`).
* :data:`ENTRIES` / :func:`classify` say, for any file a run directory holds, which report section shows
  it (or why none does: caches, weights, binary statistics), so a check can find files the report misses.
* Typed records (``to_dict``/``from_dict``) for JSON shapes that a writer and a reader share.
* :func:`trim_verdicts` gives a ``verdicts.json`` its published form (``safeneurons publish``).
* :func:`migrate` is the one place that maps older run folders onto this format.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "safeneurons.run/2"
FORMAT_KEY = "format"  # manifest.json key holding FORMAT

# ---------------------------------------------------------------------------------------------
# every run

MANIFEST = "manifest.json"
CONFIG = "config.yaml"
REUSED = "reused.json"  # caches carried over with --reuse: {"reused": [{source, copied, at}]}
REPORT = "report.html"
FIGURES_DIR = "figures"
GENERATIONS = "generations.sqlite"  # content-keyed generation cache

# ---------------------------------------------------------------------------------------------
# identification (identify, stats, attack; train under BASE)

STATS = "stats.safetensors"
STATS_CACHE = "stats_cache"
NEURONS_DIR = "neurons"
NEURON_INDEX = "neurons/index.json"
HISTOGRAMS = "neurons/score_histograms.json"
NEURON_SUMMARY = "neurons/summary.md"


def neuron_set(name: str, prefix: str = "") -> str:
    """A NeuronSet file of the identified sets (``ES``, ``SAS``, ``FULL``, ``RANDOM<seed>``)."""
    return f"{prefix}{NEURONS_DIR}/{name}.json"


# ---------------------------------------------------------------------------------------------
# attack (also each model's attack inside a train run)

COMPLETIONS_DIR = "completions"
VERDICTS = "verdicts.json"
ASR = "asr.json"
ASR_MD = "asr.md"
EXAMPLES = "examples.json"
CAPABILITY = "capability.json"
CAPABILITY_CACHE = "capability_cache"


def completions(condition: str) -> str:
    return f"{COMPLETIONS_DIR}/{condition}.json"


# ---------------------------------------------------------------------------------------------
# train

BASE = "base/"  # the starting model's statistics and neuron sets
PAIRS = "pairs.jsonl"
ROBUSTNESS = "robustness.json"
ROBUSTNESS_MD = "robustness.md"
OVER_REFUSAL_DIR = "over_refusal"
ATTACK_PREFIX = "attack-"  # each model's attack is a run directory of its own: attack-<model>/

# a training loop's output folder (``<method>/``, ``<method>/round_<t>/``, ``expansion/<tag>/``)
TRAIN_LOG = "train_log.json"  # {"records": [{step, loss, rewards/margins, frozen_drift, ...}]}
TRAIN_RESULT = "result.json"  # TrainResult.to_dict() + environment
FROZEN = "frozen.json"  # the neurons held fixed (NeuronSet)
TARGET = "target.json"  # the neurons trained (NeuronSet; masked SFT/DPO/align)
ROUND_MARKER = "round.json"  # RoundMarker, written last: the round finished
ROUND_IDENTIFIED = "identified.json"  # the set identified at the start of the round
ROUND_NEURONS = "neurons.json"  # the union frozen in the round
MODEL_SUBDIR = "model"
TRAINER_SUBDIR = "trainer"


def identification_prefix(command: str) -> str:
    """Where a command keeps its identified neuron sets (the train run: its starting model's, under base/)."""
    return BASE if command == "train" else ""


def attack_dir(model: str) -> str:
    return f"{ATTACK_PREFIX}{model}"


def over_refusal(model: str) -> str:
    return f"{OVER_REFUSAL_DIR}/{model}.json"


def round_subdir(round: int | str) -> str:
    """One SafeNeuron round's folder inside its method's (``"*"``: a pattern for every round's)."""
    return f"round_{round}"


def method_dir(method: str, round: int | str | None = None) -> str:
    """A training method's output folder (``round``: one SafeNeuron round's)."""
    return method if round is None else f"{method}/{round_subdir(round)}"


def train_log(method: str, round: int | None = None) -> str:
    return f"{method_dir(method, round)}/{TRAIN_LOG}"


def train_result(method: str, round: int | None = None) -> str:
    return f"{method_dir(method, round)}/{TRAIN_RESULT}"


def round_file(method: str, round: int | str, name: str = ROUND_MARKER) -> str:
    return f"{method_dir(method, round)}/{name}"


# ---------------------------------------------------------------------------------------------
# multilingual (SS-Neurons)

ML_DIR = "multilingual"
ML_ASR = "multilingual/asr.json"  # {COND: {lang: AsrEntry}}
ML_ASR_MD = "multilingual/asr.md"
ML_VERDICTS = "multilingual/verdicts.json"
ML_JUDGE = "multilingual/judge.json"
ML_COUNTS = "multilingual/counts.json"  # {lang: LanguageCounts}
ML_OVERLAP = "multilingual/overlap.json"  # OverlapMatrix of the MS sets
ML_CORRELATION = "multilingual/correlation.json"
ML_CAUSAL_TESTS = "multilingual/causal_tests.json"
ML_EXPANSION = "multilingual/expansion.json"
ML_NEURONS_DIR = "neurons/multilingual"
ML_EXPANSION_TARGET = "neurons/multilingual/expansion_target.json"
IMPORTANCE_DIR = "importance"
PARTIAL_DIR = "partial"  # importance cells of an unfinished run, under importance/
EXPANSION_DIR = "expansion"
EXPANSION_MARKER = "trained.json"  # {key, info}: the expansion model and the inputs it was trained on
ML_KINDS = ("MS", "SS")  # the kinds with an overlap matrix of their own


def ml_overlap(kind: str) -> str:
    return f"{ML_DIR}/overlap_{kind}.json"


def ml_completions(lang: str, condition: str) -> str:
    return f"{ML_DIR}/{COMPLETIONS_DIR}/{lang}/{condition}.json"


def ml_over_refusal(name: str) -> str:
    return f"{ML_DIR}/{OVER_REFUSAL_DIR}/{name}.json"


def ml_benign_check(name: str) -> str:
    return f"{ML_DIR}/benign_check/{name}.json"


def ml_neuron_set(lang: str, kind: str) -> str:
    return f"{ML_NEURONS_DIR}/{lang}/{kind}.json"


def importance(lang: str, role: str) -> str:
    return f"{IMPORTANCE_DIR}/importance-{lang}-{role}.safetensors"


def expansion_dir(tag: str) -> str:
    return f"{EXPANSION_DIR}/{tag}"


def expansion_marker(tag: str) -> str:
    return f"{expansion_dir(tag)}/{EXPANSION_MARKER}"


# ---------------------------------------------------------------------------------------------
# analyze

ANALYSIS = "analysis.json"
CATEGORY_SETS_DIR = "neurons/categories"


def category_set(name: str) -> str:
    return f"{CATEGORY_SETS_DIR}/{name}.json"


# ---------------------------------------------------------------------------------------------
# brittleness (ASR against the share of neurons zeroed; identification at the run's root)

BR_DIR = "brittleness"
BR_SCHEMA = "safeneurons.brittleness/1"  # curve.json's "schema"
BR_CURVE = "brittleness/curve.json"  # the curve: settings, judge, neurons_to_break, leaves_random_band, points
BR_CURVE_MD = "brittleness/curve.md"
BR_CURVE_PNG = "brittleness/curve.png"
BR_JUDGE = "brittleness/judge.json"  # the judge, its version and validation record (copied into curve.json)
BR_SETS_DIR = "brittleness/sets"
BR_SETS_INDEX = "brittleness/sets/index.json"  # {curve slug: [set file per grid point]}
BR_POINTS_DIR = "brittleness/points"
BR_VERDICTS_DIR = "brittleness/verdicts"
BR_STEPS = "brittleness/iterative/steps.json"  # [{before, after, added [[layer, index]], stats_reused}]
BR_STEP_STATS_DIR = "brittleness/iterative/stats"


def br_set(slug: str, fraction: str) -> str:
    """One curve's attack set at one grid point (``fraction``: the percentage as text, e.g. ``"0.5"``)."""
    return f"{BR_SETS_DIR}/{slug}/{fraction}pct.json"


def br_point(slug: str, fraction: str) -> str:
    """One grid point's record (:class:`BrittlenessPoint`), written when its stage finishes."""
    return f"{BR_POINTS_DIR}/{slug}-{fraction}pct.json"


def br_verdicts(slug: str, fraction: str) -> str:
    """Every judged reply of one grid point."""
    return f"{BR_VERDICTS_DIR}/{slug}-{fraction}pct.json"


def br_step_stats(key: str) -> str:
    """Statistics of one iterative step whose weights have no checksum (else they go to the shared
    :data:`STATS_CACHE`)."""
    return f"{BR_STEP_STATS_DIR}/{key}.safetensors"


# ---------------------------------------------------------------------------------------------
# monitor evaluation (safeneurons monitor evaluate: readouts compared on held-out prompts)

ME_SCHEMA = "safeneurons.monitor_eval/1"  # monitor_eval.json's "schema"
ME_RESULT = "monitor_eval.json"  # MonitorEvalRecord: settings, data, fits, rows, ROC curves
ME_RESULT_MD = "monitor_eval.md"
ME_ROC_PNG = "roc.png"
ME_DIR = "monitor_eval"
FEATURE_CACHE = "feature_cache"  # last-prompt-token features, content-keyed (--reuse carries them)
ME_PROMPTS = "monitor_eval/prompts.json"  # every prompt with its source, label and part
ME_TRANSLATIONS = "monitor_eval/translations.json"  # {lang: [benign prompt translated by the model]}
ME_JUDGE = "monitor_eval/judge.json"  # the judge, its version and validation record (copied into monitor_eval.json)
ME_REPLIES_DIR = "replies"  # under ME_DIR: raw replies (not published, like completions/)
ME_SCORES_DIR = "scores"  # under ME_DIR: per-prompt scores (not published)
ME_MONITORS_DIR = "monitors"  # under ME_DIR: fitted monitors (their tensors are not published; neither are they)


def me_feature_shard(key: str, shard: str) -> str:
    """One shard of cached features: the prompts' activations under one feature key (model, zeroed neurons,
    columns, rendering)."""
    return f"{ME_DIR}/{FEATURE_CACHE}/{key}/{shard}.safetensors"


def me_replies(condition: str) -> str:
    """Every reply of one condition with its verdict (the model's own refusal)."""
    return f"{ME_DIR}/{ME_REPLIES_DIR}/{condition}.json"


def me_scores(condition: str) -> str:
    """Every prompt's score under every readout applied to one condition."""
    return f"{ME_DIR}/{ME_SCORES_DIR}/{condition}.json"


def me_monitor_dir(condition: str, readout: str) -> str:
    """A fitted monitor (Monitor.save: monitor.json + monitor.safetensors)."""
    return f"{ME_DIR}/{ME_MONITORS_DIR}/{condition}/{readout}"


# ---------------------------------------------------------------------------------------------
# what shows each file

@dataclass(frozen=True)
class Entry:
    """Files matching ``pattern`` (``*``: within one folder, ``**``: any depth) are shown in the report
    section ``section`` (an id of ``safeneurons.report.views.SECTIONS``), or in none (``section`` None:
    ``note`` says why), or are another run's (``section`` ``"subrun"``: a run directory of its own)."""

    pattern: str
    section: str | None
    note: str = ""

    def matches(self, rel: str) -> bool:
        return _glob_re(self.pattern).fullmatch(rel) is not None


_RE_CACHE: dict[str, re.Pattern[str]] = {}


def _glob_re(pattern: str) -> re.Pattern[str]:
    if pattern not in _RE_CACHE:
        out = ""
        for part in re.split(r"(\*\*/|\*\*|\*)", pattern):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*"}.get(part, re.escape(part))
        _RE_CACHE[pattern] = re.compile(out)
    return _RE_CACHE[pattern]


NOT_SHOWN_CACHE = "a content-keyed cache (--reuse carries it)"
_METHOD = "*"  # a training method's folder (safeneuron, dpo, sn_tune)

#: Every file a run directory may hold, first match wins (order: specific before general).
ENTRIES: tuple[Entry, ...] = (
    Entry(MANIFEST, "run"), Entry(CONFIG, "run"), Entry(REUSED, "run"),
    Entry(REPORT, None, "the report itself"), Entry(f"{FIGURES_DIR}/*.png", None, "the report's figures"),
    Entry(f"**/{GENERATIONS}*", None, NOT_SHOWN_CACHE),
    Entry(f"**/{STATS_CACHE}/**", None, NOT_SHOWN_CACHE), Entry(f"**/{CAPABILITY_CACHE}/**", None, NOT_SHOWN_CACHE),
    Entry(f"**/{STATS}", None, "activation statistics (binary; their scores are in neurons/score_histograms.json)"),
    # identification
    Entry(HISTOGRAMS, "scores"), Entry(BASE + HISTOGRAMS, "scores"),
    Entry(NEURON_SUMMARY, "neurons"), Entry(BASE + NEURON_SUMMARY, "neurons"),
    Entry(category_set("*"), "neurons"), Entry(ANALYSIS, "neurons"),
    Entry(ML_EXPANSION_TARGET, "neurons"), Entry(ml_neuron_set("*", "*"), "neurons"),
    Entry(f"{NEURONS_DIR}/*.json", "neurons"), Entry(f"{BASE}{NEURONS_DIR}/*.json", "neurons"),
    # attack
    Entry(ASR, "attack"), Entry(ASR_MD, "attack", "the Markdown copy of asr.json"),
    Entry(EXAMPLES, "examples"), Entry(VERDICTS, "examples"), Entry(completions("*"), "examples"),
    Entry(CAPABILITY, "capability"),
    # train
    Entry(f"{ATTACK_PREFIX}*/**", "subrun"),
    Entry(ROBUSTNESS, "attack"), Entry(ROBUSTNESS_MD, "attack", "the Markdown copy of robustness.json"),
    Entry(over_refusal("*"), "attack"), Entry(PAIRS, "training"),
    # multilingual
    Entry(ML_ASR_MD, "multilingual", "the Markdown copy of multilingual/asr.json"),
    Entry(ML_VERDICTS, "examples"), Entry(ml_completions("*", "*"), "examples"),
    Entry(f"{ML_DIR}/align_shift.json", None, "written by benchmarks/align_shift.py, not by the run"),
    Entry(f"{ML_DIR}/*.json", "multilingual"), Entry(ml_over_refusal("*"), "multilingual"),
    Entry(ml_benign_check("*"), "multilingual"),
    Entry(f"{IMPORTANCE_DIR}/{PARTIAL_DIR}/**", None, NOT_SHOWN_CACHE),
    Entry(f"{IMPORTANCE_DIR}/*.safetensors", None,
          "importance scores (binary; the sets they give are in neurons/multilingual/)"),
    Entry(f"{EXPANSION_DIR}/*/{MODEL_SUBDIR}/**", None, "trained weights"),
    Entry(f"{EXPANSION_DIR}/*/{TRAINER_SUBDIR}/**", None, "trainer checkpoints"),
    Entry(f"{EXPANSION_DIR}/*/*.json", "training"),
    # training output folders
    Entry(f"{_METHOD}/round_*/{MODEL_SUBDIR}/**", None, "trained weights"),
    Entry(f"{_METHOD}/round_*/{TRAINER_SUBDIR}/**", None, "trainer checkpoints"),
    Entry(f"{_METHOD}/{MODEL_SUBDIR}/**", None, "trained weights"),
    Entry(f"{_METHOD}/{TRAINER_SUBDIR}/**", None, "trainer checkpoints"),
    *(Entry(f"{_METHOD}/round_*/{n}", "training") for n in (TRAIN_LOG, TRAIN_RESULT, FROZEN, ROUND_MARKER,
                                                               ROUND_IDENTIFIED, ROUND_NEURONS)),
    *(Entry(f"{_METHOD}/{n}", "training") for n in (TRAIN_LOG, TRAIN_RESULT, FROZEN, TARGET)),
    # brittleness
    Entry(BR_CURVE, "brittleness"), Entry(BR_CURVE_MD, "brittleness", "the Markdown copy of curve.json"),
    Entry(BR_JUDGE, "brittleness", "the judge record, also in curve.json"),
    Entry(BR_STEPS, "brittleness"),
    Entry(BR_CURVE_PNG, None, "the run's drawing of curve.json; the report draws the same figure from curve.json"),
    Entry(f"{BR_POINTS_DIR}/*.json", None,
          "one grid point's record, kept for resuming (curve.json holds every point)"),
    Entry(f"{BR_VERDICTS_DIR}/*.json", None,
          "every judged reply of one grid point (their counts are the point's k / n in curve.json, whose examples "
          "the report shows)"),
    Entry(f"{BR_SETS_DIR}/**", None,
          "the attack set of each curve at each grid point (NeuronSets read back on resume; their sizes and "
          "per-layer counts are in curve.json)"),
    Entry(f"{BR_STEP_STATS_DIR}/*.safetensors", None,
          "activation statistics of one iterative step with its set zeroed (binary; a cache for resuming)"),
    # monitor evaluation
    Entry(ME_RESULT, "monitor"), Entry(ME_RESULT_MD, "monitor", "the Markdown copy of monitor_eval.json"),
    Entry(ME_JUDGE, "monitor", "the judge record, also in monitor_eval.json"),
    Entry(ME_ROC_PNG, None, "the run's drawing of monitor_eval.json's ROC curves; the report draws the same figure"),
    Entry(f"**/{FEATURE_CACHE}/**", None, NOT_SHOWN_CACHE),
    Entry(ME_PROMPTS, None, "every prompt with its source, label and part (their counts are monitor_eval.json's "
                            "data table)"),
    Entry(ME_TRANSLATIONS, None, "the model's translations of benign prompts (the benign side of the MultiJail "
                                 "AUROC; their count is in monitor_eval.json)"),
    Entry(me_replies("*"), None, "every reply and verdict of a condition (their counts are monitor_eval.json's "
                                 "REFUSAL rows)"),
    Entry(me_scores("*"), None, "every prompt's score under every readout (monitor_eval.json's numbers are "
                                "computed from them)"),
    Entry(f"{ME_DIR}/{ME_MONITORS_DIR}/**", None, "the fitted monitors (safeneurons monitor score --monitor <folder>; their "
                                         "thresholds and validation rates are in monitor_eval.json)"),
    # records other tools add to published folders
    Entry("rejudged-*.json", None, "written by benchmarks/judge_agreement/rejudge.py, not by the run"),
)


def matches(pattern: str, rel: str) -> bool:
    """Whether the file ``rel`` is ``pattern``: the same path, a file under a folder ``pattern`` ending in
    '/', or a match of a pattern with ``*`` / ``**``."""
    if pattern.endswith("/"):
        return rel.startswith(pattern)
    return pattern == rel or ("*" in pattern and _glob_re(pattern).fullmatch(rel) is not None)


def classify(rel: str) -> Entry | None:
    """The entry describing the file at ``rel`` (a path relative to the run directory, '/'-separated),
    or None when the format does not know it."""
    return next((e for e in ENTRIES if e.matches(rel)), None)


def subruns(root: str | os.PathLike[str]) -> dict[str, Path]:
    """The run directories inside a run (a train run's ``attack-<model>/``), by model name."""
    base = Path(root)
    try:
        found = sorted(p.parent for p in base.glob(f"{ATTACK_PREFIX}*/{MANIFEST}") if p.is_file())
    except OSError:
        return {}
    return {p.name[len(ATTACK_PREFIX):]: p for p in found}


def run_files(root: str | os.PathLike[str]) -> Iterator[str]:
    """Every file of a run directory (relative, '/'-separated), sub-runs included, temporary files not."""
    base = Path(root)
    for p in sorted(base.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            yield p.relative_to(base).as_posix()


# ---------------------------------------------------------------------------------------------
# records shared by a writer and a reader


class RecordError(ValueError):
    """A JSON value does not have a record's shape."""


def _need(d: Any, key: str, what: str) -> Any:
    if not isinstance(d, Mapping):
        raise RecordError(f"{what} should be a JSON object")
    if key not in d:
        raise RecordError(f"{what} has no {key!r}")
    return d[key]


@dataclass(frozen=True)
class AsrEntry:
    """Attack success of one condition (and language): ``k`` of ``n`` judged harmful, ``asr`` = k / n and
    its 95% Wilson interval ``ci``. ``asr.json``'s summary adds the unjudged count and the neurons zeroed;
    ``multilingual/asr.json`` has the first five fields only."""

    k: int
    n: int
    asr: float | None
    ci: tuple[float, float] | None
    n_degenerate: int
    n_unjudged: int | None = None
    n_neurons: int | None = None
    fraction_of_neurons: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.k, "n": self.n, "asr": self.asr,
                               "ci": list(self.ci) if self.ci is not None else [None, None],
                               "n_degenerate": self.n_degenerate}
        for key in ("n_unjudged", "n_neurons", "fraction_of_neurons"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> AsrEntry:
        ci = d.get("ci") if isinstance(d, Mapping) else None
        return cls(k=_need(d, "k", "an ASR entry"), n=_need(d, "n", "an ASR entry"), asr=d.get("asr"),
                   ci=tuple(ci) if isinstance(ci, list) and len(ci) == 2 and None not in ci else None,
                   n_degenerate=d.get("n_degenerate", 0), n_unjudged=d.get("n_unjudged"),
                   n_neurons=d.get("n_neurons"), fraction_of_neurons=d.get("fraction_of_neurons"))


@dataclass(frozen=True)
class OverlapMatrix:
    """``multilingual/overlap*.json``: Jaccard overlap of the languages' sets of one ``kind``."""

    languages: list[str]
    jaccard: list[list[float]]
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"languages": list(self.languages), "jaccard": self.jaccard, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: Any) -> OverlapMatrix:
        langs, mat = _need(d, "languages", "an overlap"), _need(d, "jaccard", "an overlap")
        if not isinstance(langs, list) or not isinstance(mat, list):
            raise RecordError("'languages' and 'jaccard' should be lists")
        return cls([str(x) for x in langs], mat, str(d.get("kind", "MS")))


@dataclass(frozen=True)
class LanguageCounts:
    """One language of ``multilingual/counts.json``: the size of each set kind (S_jail, S_norm, MS, SS),
    the SS-Neurons per layer and their fraction of all neurons."""

    sizes: dict[str, int]
    per_layer_ss: list[int]
    fraction_ss: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.sizes, "per_layer_SS": list(self.per_layer_ss), "fraction_SS": self.fraction_ss}

    @classmethod
    def from_dict(cls, d: Any) -> LanguageCounts:
        if not isinstance(d, Mapping):
            raise RecordError("a language's counts should be a JSON object")
        sizes = {str(k): v for k, v in d.items() if k not in ("per_layer_SS", "fraction_SS")}
        per_layer = d.get("per_layer_SS")
        return cls(sizes, list(per_layer) if isinstance(per_layer, list) else [], d.get("fraction_SS"))


@dataclass(frozen=True)
class RoundMarker:
    """``<method>/round_<t>/round.json``: round ``t`` finished with ``identified`` neurons found on its
    starting weights, ``frozen`` held (the union with earlier rounds) and its training summary."""

    round: int
    identified: int
    frozen: int
    train: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "identified": self.identified, "frozen": self.frozen, "train": self.train}

    @classmethod
    def from_dict(cls, d: Any) -> RoundMarker:
        train = d.get("train") if isinstance(d, Mapping) else None
        return cls(int(_need(d, "round", "a round marker")), int(_need(d, "identified", "a round marker")),
                   int(_need(d, "frozen", "a round marker")), dict(train) if isinstance(train, Mapping) else {})


@dataclass(frozen=True)
class RobustnessRow:
    """One model of ``robustness.json``: ASR per attack condition, over-refusal rate, capability per task
    (in ``capability_metric[task].metric``), its attack run, and against plain DPO / the original the
    FULL-attack ratio and the paired capability differences."""

    asr: dict[str, float | None]
    over_refusal: float | None
    capability: dict[str, float | None]
    capability_metric: dict[str, dict[str, Any]]
    attack_dir: str
    full_asr_ratio_vs_dpo: dict[str, Any] | None = None
    capability_delta: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"asr": self.asr, "over_refusal": self.over_refusal, "capability": self.capability,
                               "capability_metric": self.capability_metric, "attack_dir": self.attack_dir}
        if self.full_asr_ratio_vs_dpo is not None:
            out["full_asr_ratio_vs_dpo"] = self.full_asr_ratio_vs_dpo
        if self.capability_delta is not None:
            out["capability_delta"] = self.capability_delta
        return out

    @classmethod
    def from_dict(cls, d: Any) -> RobustnessRow:
        asr = _need(d, "asr", "a robustness row")
        if not isinstance(asr, Mapping):
            raise RecordError("a robustness row's 'asr' should map conditions to rates")
        cap = d.get("capability") if isinstance(d.get("capability"), Mapping) else {}
        metric = d.get("capability_metric") if isinstance(d.get("capability_metric"), Mapping) else {}
        ratio, delta = d.get("full_asr_ratio_vs_dpo"), d.get("capability_delta")
        return cls(dict(asr), d.get("over_refusal"), dict(cap), {k: v for k, v in metric.items() if isinstance(v, Mapping)},
                   str(d.get("attack_dir", "")), ratio if isinstance(ratio, Mapping) else None,
                   dict(delta) if isinstance(delta, Mapping) else None)


@dataclass(frozen=True)
class BrittlenessPoint:
    """One grid point of ``brittleness/curve.json`` (its ``points``; also ``brittleness/points/*.json``): the
    attacker (``random/<attacker>`` for a matched control; the unattacked point is copied onto every curve)
    and its seed, ``fraction`` = percent of the site's neurons zeroed, the neurons zeroed (and per layer),
    attack success ``k`` of ``n`` judged with its 95% Wilson interval ``ci``, the degenerate and unjudged
    replies of ``n_total``, the perplexity of benign text, the set file and a few replies (``examples``:
    ``{prompt, response, label}``)."""

    attacker: str
    seed: int | None
    fraction: float
    n_neurons: int
    k: int
    n: int
    asr: float | None
    ci: tuple[float | None, float | None]
    n_degenerate: int = 0
    n_unjudged: int = 0
    n_total: int = 0
    perplexity: float | None = None
    counts_per_layer: list[int] = field(default_factory=list)
    set: str | None = None
    examples: list[dict[str, str]] = field(default_factory=list)

    @property
    def degenerate_share(self) -> float | None:
        return self.n_degenerate / self.n_total if self.n_total else None

    def to_dict(self) -> dict[str, Any]:
        return {"attacker": self.attacker, "seed": self.seed, "fraction": self.fraction, "n_neurons": self.n_neurons,
                "counts_per_layer": list(self.counts_per_layer), "k": self.k, "n": self.n, "asr": self.asr,
                "ci": list(self.ci), "n_degenerate": self.n_degenerate, "n_unjudged": self.n_unjudged,
                "n_total": self.n_total, "degenerate_share": self.degenerate_share, "perplexity": self.perplexity,
                "set": self.set, "examples": list(self.examples)}

    @classmethod
    def from_dict(cls, d: Any) -> BrittlenessPoint:
        what = "a brittleness point"
        if not isinstance(d, Mapping):
            raise RecordError(f"{what} should be a JSON object")
        ci, counts, examples = d.get("ci"), d.get("counts_per_layer"), d.get("examples")
        return cls(attacker=str(_need(d, "attacker", what)), seed=d.get("seed"), fraction=_need(d, "fraction", what),
                   n_neurons=d.get("n_neurons", 0), k=_need(d, "k", what), n=_need(d, "n", what), asr=d.get("asr"),
                   ci=(ci[0], ci[1]) if isinstance(ci, list) and len(ci) == 2 else (None, None),
                   n_degenerate=d.get("n_degenerate", 0), n_unjudged=d.get("n_unjudged", 0),
                   n_total=d.get("n_total", 0), perplexity=d.get("perplexity"),
                   counts_per_layer=list(counts) if isinstance(counts, list) else [], set=d.get("set"),
                   examples=[e for e in examples if isinstance(e, Mapping)] if isinstance(examples, list) else [])


def _pair(x: Any) -> tuple[float, float] | None:
    return (x[0], x[1]) if isinstance(x, (list, tuple)) and len(x) == 2 and None not in x else None


@dataclass(frozen=True)
class MonitorEvalRow:
    """One readout on one group of held-out prompts in ``monitor_eval.json``: the readout (``FULL``, ``ES``, ``SAS``,
    ``RANDOM<seed>``, ``PROBE``, ``REFUSAL``) ``fitted_on`` one condition's fit prompts (empty for the model's own
    refusal, which is not fitted) and applied to ``condition``; ``group`` is a pair of scored sources
    (``"<harmful> vs <benign>"``), ``all`` or ``multijail:<lang>``. ``n_pos`` harmful and ``n_neg`` benign prompts;
    the AUROC with its bootstrap interval; ``tpr_at_fpr`` the ROC curve's TPR where its FPR is at most each rate
    (threshold read off these benign prompts: ``{rate: {threshold, k, n, tpr, ci}}``); ``deployed`` the operating
    points at the thresholds fixed before scoring (``{rate: {threshold, tp, n_pos, tpr, tpr_ci, fp, n_neg, fpr,
    fpr_ci}}``; the refusal's own point under ``"refuses"``); ``delta_vs_random`` the AUROC margin over the best
    matched random set scored on the same prompts (``{delta, ci, against}``)."""

    condition: str
    readout: str
    fitted_on: str
    group: str
    n_pos: int
    n_neg: int
    auroc: float | None
    auroc_ci: tuple[float, float] | None = None
    tpr_at_fpr: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployed: dict[str, dict[str, Any]] = field(default_factory=dict)
    delta_vs_random: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"condition": self.condition, "readout": self.readout, "fitted_on": self.fitted_on,
                "group": self.group, "n_pos": self.n_pos, "n_neg": self.n_neg, "auroc": self.auroc,
                "auroc_ci": list(self.auroc_ci) if self.auroc_ci is not None else None,
                "tpr_at_fpr": self.tpr_at_fpr, "deployed": self.deployed, "delta_vs_random": self.delta_vs_random}

    @classmethod
    def from_dict(cls, d: Any) -> MonitorEvalRow:
        what = "a monitor evaluation row"
        tpr, dep, delta = d.get("tpr_at_fpr"), d.get("deployed"), d.get("delta_vs_random")
        return cls(condition=str(_need(d, "condition", what)), readout=str(_need(d, "readout", what)),
                   fitted_on=str(d.get("fitted_on") or ""), group=str(_need(d, "group", what)),
                   n_pos=_need(d, "n_pos", what), n_neg=_need(d, "n_neg", what), auroc=d.get("auroc"),
                   auroc_ci=_pair(d.get("auroc_ci")),
                   tpr_at_fpr={str(k): v for k, v in tpr.items() if isinstance(v, Mapping)} if isinstance(tpr, Mapping) else {},
                   deployed={str(k): v for k, v in dep.items() if isinstance(v, Mapping)} if isinstance(dep, Mapping) else {},
                   delta_vs_random=dict(delta) if isinstance(delta, Mapping) else None)


@dataclass(frozen=True)
class MonitorEvalCurve:
    """The ROC curve of one row of ``monitor_eval.json`` (pairs of scored sources only): ``fpr`` and ``tpr``
    from (0, 0) to (1, 1)."""

    condition: str
    readout: str
    fitted_on: str
    group: str
    fpr: list[float]
    tpr: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"condition": self.condition, "readout": self.readout, "fitted_on": self.fitted_on, "group": self.group,
                "fpr": list(self.fpr), "tpr": list(self.tpr)}

    @classmethod
    def from_dict(cls, d: Any) -> MonitorEvalCurve:
        what = "a ROC curve"
        fpr, tpr = _need(d, "fpr", what), _need(d, "tpr", what)
        if not isinstance(fpr, list) or not isinstance(tpr, list) or len(fpr) != len(tpr) or not fpr:
            raise RecordError("a ROC curve's fpr and tpr should be lists of one length")
        return cls(str(_need(d, "condition", what)), str(_need(d, "readout", what)), str(d.get("fitted_on") or ""),
                   str(_need(d, "group", what)), list(fpr), list(tpr))


@dataclass(frozen=True)
class MonitorEvalRecord:
    """``monitor_eval.json``: the settings (``model``, ``split``, ``fprs``, ``bootstrap``, the judge), the
    ``conditions`` (``{name, model, checksum, zeroed}``), the ``readouts`` (``{name, kind, n_features,
    matched_to?, seed?}``), each condition's ``fits`` (``{condition, readout, thresholds {rate: t},
    validation {auroc, realised_fpr {rate: r}, n_pos, n_neg}, n_train_pos, n_train_neg, layer?,
    validation_auroc_by_layer?}``), sets ``skipped`` (``{set, reason}``), the ``data`` table (one entry per
    source: ``{source, label, train, validation, scored, removed_identification, removed_overlap}``), the
    ``multijail`` settings, the pair ``groups`` in order, every :class:`MonitorEvalRow` and
    :class:`MonitorEvalCurve`, and ``notes``."""

    rows: list[MonitorEvalRow]
    curves: list[MonitorEvalCurve] = field(default_factory=list)
    model: str = ""
    model_checksum: str = ""
    split: str = "dev"
    fprs: list[float] = field(default_factory=list)
    bootstrap: int = 0
    judge: str = ""
    judge_note: str = ""
    conditions: list[dict[str, Any]] = field(default_factory=list)
    readouts: list[dict[str, Any]] = field(default_factory=list)
    fits: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    multijail: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    _LISTS = ("conditions", "readouts", "fits", "skipped", "data")

    def to_dict(self) -> dict[str, Any]:
        return {"schema": ME_SCHEMA, "model": self.model, "model_checksum": self.model_checksum, "split": self.split,
                "fprs": list(self.fprs), "bootstrap": self.bootstrap, "judge": self.judge,
                "judge_note": self.judge_note, "conditions": self.conditions, "readouts": self.readouts,
                "fits": self.fits, "skipped": self.skipped, "data": self.data, "multijail": self.multijail,
                "groups": list(self.groups), "notes": list(self.notes),
                "rows": [r.to_dict() for r in self.rows], "curves": [c.to_dict() for c in self.curves]}

    @classmethod
    def from_dict(cls, d: Any) -> MonitorEvalRecord:
        what = "monitor_eval.json"
        rows = _need(d, "rows", what)
        if not isinstance(rows, list):
            raise RecordError("monitor_eval.json's rows should be a list")
        curves = d.get("curves") if isinstance(d.get("curves"), list) else []
        lists = {k: [x for x in d.get(k) if isinstance(x, Mapping)] if isinstance(d.get(k), list) else []
                 for k in cls._LISTS}
        mj = d.get("multijail")
        return cls(rows=[MonitorEvalRow.from_dict(r) for r in rows], curves=[MonitorEvalCurve.from_dict(c) for c in curves],
                   model=str(d.get("model") or ""), model_checksum=str(d.get("model_checksum") or ""),
                   split=str(d.get("split") or "dev"),
                   fprs=[f for f in d.get("fprs") or [] if isinstance(f, (int, float)) and not isinstance(f, bool)],
                   bootstrap=d.get("bootstrap") if isinstance(d.get("bootstrap"), int) else 0,
                   judge=str(d.get("judge") or ""), judge_note=str(d.get("judge_note") or ""),
                   multijail=dict(mj) if isinstance(mj, Mapping) else {},
                   groups=[str(g) for g in d.get("groups") or [] if isinstance(g, str)],
                   notes=[str(n) for n in d.get("notes") or [] if isinstance(n, str)], **lists)


# ---------------------------------------------------------------------------------------------
# published verdicts (docs/results/index.md, "What the run folders hold")

#: Full replies kept per (condition, language) when a run is published: the examples the report shows
#: when ``examples.json`` is missing (:func:`safeneurons.report.load.parse_verdicts`, compliance first).
FULL_EXAMPLES = 3
ID_NAMED_PREFIX = "multijail-"  # records of a data set that gives the prompt by row id (MultiJail)
_REPLY_KEYS = ("response",)  # dropped from a trimmed record
_VERDICT_REPLY_KEYS = ("reason",)  # dropped from a trimmed record's verdict
_ID_NAMED_KEYS = ("prompt", "category")  # dropped too where the id names the prompt


def _verdict_label(rec: Mapping[str, Any]) -> str:
    verdict = rec.get("verdict")
    label = rec.get("label") or (verdict.get("label") if isinstance(verdict, Mapping) else None)
    return str(label or "")


def trim_verdict_records(records: list[Any], full_examples: int = FULL_EXAMPLES) -> list[Any]:
    """The published form of a ``verdicts.json``'s records: one record per scored prompt, in order, with its
    condition, language, id and verdict (label, harmful, score, judge) and, unless the id names the prompt
    (MultiJail), its prompt and category; the reply and the judge's reason are kept only in the first
    ``full_examples`` records per (condition, language), compliance first (the report's fallback examples).
    Idempotent: trimming a trimmed list changes nothing."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, rec in enumerate(records):
        if isinstance(rec, Mapping):
            groups.setdefault((str(rec.get("condition")), str(rec.get("language"))), []).append(i)
    full: set[int] = set()
    for idx in groups.values():
        picked = [i for i in idx if _verdict_label(records[i]) == "compliance"][:full_examples]
        picked += [i for i in idx if i not in picked][: max(0, full_examples - len(picked))]
        full.update(picked)
    out: list[Any] = []
    for i, rec in enumerate(records):
        if i in full or not isinstance(rec, Mapping):
            out.append(rec)
            continue
        drop = set(_REPLY_KEYS)
        if str(rec.get("id", "")).startswith(ID_NAMED_PREFIX):
            drop |= set(_ID_NAMED_KEYS)
        short = {k: v for k, v in rec.items() if k not in drop}
        if isinstance(rec.get("verdict"), Mapping):
            short["verdict"] = {k: v for k, v in rec["verdict"].items() if k not in _VERDICT_REPLY_KEYS}
        out.append(short)
    return out


def dump_verdicts(records: list[Any]) -> str:
    """A ``verdicts.json`` text as published: a JSON list, one compact record per line."""
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in records]
    return "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"


def is_verdicts(rel: str) -> bool:
    """Whether the file at ``rel`` (relative, '/'-separated) is a verdicts file: the attack's
    (:data:`VERDICTS`, also in each ``attack-<model>/``) or the multilingual one (:data:`ML_VERDICTS`)."""
    return rel.rsplit("/", 1)[-1] == VERDICTS


def trimmed_verdicts(src: str | os.PathLike[str], full_examples: int = FULL_EXAMPLES) -> str:
    """The published text of the ``verdicts.json`` at ``src`` (:func:`trim_verdict_records`)."""
    records = json.loads(Path(src).read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise RecordError(f"{src}: a verdicts file should hold a JSON list")
    return dump_verdicts(trim_verdict_records(records, full_examples))


def trim_verdicts(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                  full_examples: int = FULL_EXAMPLES) -> Path:
    """Write the published form of the ``verdicts.json`` at ``src`` to ``dst`` (which may be ``src``)."""
    from safeneurons.io import write_text_atomic

    return write_text_atomic(dst, trimmed_verdicts(src, full_examples))


# ---------------------------------------------------------------------------------------------
# migration

#: Names earlier run folders (or hand-made ones the report accepted) used, and the current name.
RENAMED = {
    "train/log.json": train_log("train"),
    "train_log.json": train_log("train"),
}


def migrate(run_dir: str | os.PathLike[str]) -> list[str]:
    """Bring a run directory written by an earlier version onto :data:`FORMAT`, in place: files under an
    older name are renamed to the current one (unless that exists), ``reused.json`` of one
    source becomes the list form, and the format is stamped into ``manifest.json``. Sub-runs
    (``attack-<model>/``) are migrated too. Idempotent; returns what was changed."""
    root = Path(run_dir)
    changes: list[str] = []
    if not (root / MANIFEST).is_file():
        return changes
    for old, new in RENAMED.items():
        src, dst = root / old, root / new
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            changes.append(f"{old} -> {new}")
    reused = root / REUSED
    if reused.is_file():
        try:
            prev = json.loads(reused.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            prev = None
        if isinstance(prev, dict) and "reused" not in prev and "source" in prev:
            _write_json(reused, {"reused": [prev]})
            changes.append(f"{REUSED}: one source -> list")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict) and manifest.get(FORMAT_KEY) != FORMAT:
        changes.append(f"{MANIFEST}: format {manifest.get(FORMAT_KEY)} -> {FORMAT}")
        manifest[FORMAT_KEY] = FORMAT
        _write_json(root / MANIFEST, manifest)
    for name, sub in subruns(root).items():
        changes += [f"{attack_dir(name)}/{c}" for c in migrate(sub)]
    return changes


def _write_json(path: Path, obj: Any) -> None:
    from safeneurons.io import write_json_atomic

    write_json_atomic(path, obj)
