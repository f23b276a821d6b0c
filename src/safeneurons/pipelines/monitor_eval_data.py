"""The prompts of ``safeneurons monitor evaluate``: which prompt fits a readout, which chooses its layer and
thresholds, and which is scored.

Every source (a dataset or file) is de-duplicated, cleared of the prompts the neuron sets were identified on
(read off the sets' provenance, :func:`identification_prompts`), and cut by :func:`safeneurons.data.split_of`
into its dev and sealed test halves. Then:

* a source that is fitted on and scored (by default XSTest unsafe / safe and Self-Instruct) gives a seeded
  ``fit_share`` of its dev half to fitting and keeps the rest of the dev half for dev scoring;
* a source fitted on only (AdvBench) gives its whole dev half to fitting, one scored only (StrongREJECT) its
  whole dev half to dev scoring;
* the fit prompts are cut again, seeded, into a training part (the readouts are fitted on it) and a
  ``validation_share`` validation part (the probe's layer and every threshold are chosen on it);
* the scored prompts are the dev scoring part (``split: dev``), the test half (``test``) or both (``all``),
  less any prompt that is also a fit or identification prompt (StrongREJECT's AdvBench rows).

The fit and validation parts come from the dev half only and do not depend on ``split``, so a dev run and a
test run fit the same readouts. MultiJail rows (harmful, parallel in every language) are scored only: the rows
of the ``split`` side (by row id, every language of a row together), less rows whose English text is a fit or
identification prompt, ``multijail_n`` of them in seeded order.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from safeneurons.data import PromptSet, dedupe, eval_split, item_key, load_prompts, normalise, split, split_of
from safeneurons.errors import ConfigError
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.common import eval_set_ref
from safeneurons.pipelines.ledger import EvalSetRef

if TYPE_CHECKING:
    from safeneurons.pipelines.monitor_eval import MonitorEvalConfig

log = logging.getLogger("safeneurons.monitor")

PARTS = ("train", "validation", "scored")


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt: its ``source`` (dataset spec, or ``multijail``, or ``translated``), label, ``part`` and
    ``language`` (``row``: the MultiJail row id)."""

    text: str
    source: str
    harmful: bool
    part: str
    language: str = "en"
    row: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalData:
    """The English prompts (every part), the MultiJail rows per language, a count per source and the ledger
    entries of every scored set."""

    prompts: list[EvalPrompt]
    multijail: dict[str, list[EvalPrompt]]
    counts: list[dict[str, Any]]
    refs: list[EvalSetRef]
    notes: list[str] = field(default_factory=list)

    def part(self, name: str) -> list[EvalPrompt]:
        return [p for p in self.prompts if p.part == name]

    def scored(self, sources: Iterable[str] | None = None, harmful: bool | None = None) -> list[EvalPrompt]:
        want = set(sources) if sources is not None else None
        return [p for p in self.prompts if p.part == "scored" and (want is None or p.source in want)
                and (harmful is None or p.harmful == harmful)]

    def texts(self) -> list[str]:
        """Every distinct text: English prompts, then MultiJail rows, in order."""
        seen: dict[str, None] = {}
        for p in [*self.prompts, *(q for rows in self.multijail.values() for q in rows)]:
            seen.setdefault(p.text)
        return list(seen)


# -- identification prompts -------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^sample (\d+) seed (\d+)$")


def identification_prompts(sets: Iterable[NeuronSet], data_dir: str | None) -> tuple[set[str], list[str]]:
    """The normalised texts the sets were identified on, and notes on how they were found. A set's provenance
    names its prompt sets (``datasets``: name, notes with the ``sample N seed S`` it drew, content hash); each is
    drawn again and kept when its hash matches. Where it does not (or the draw is unknown), every prompt of that
    dataset is excluded instead, and a note says so; a set without provenance adds a note only."""
    keys: set[str] = set()
    notes: list[str] = []
    seen: set[tuple[str, str]] = set()
    for ns in sets:
        datasets = ns.provenance.get("datasets")
        if not isinstance(datasets, dict):
            notes.append(f"neuron set {ns.name}: its provenance names no identification prompts; none excluded.")
            continue
        for role, d in datasets.items():
            if not isinstance(d, dict) or not d.get("name"):
                continue
            ident = (str(d["name"]), str(d.get("sha256", "")))
            if ident in seen:
                continue
            seen.add(ident)
            texts, how = _redraw(d, data_dir)
            keys |= {normalise(t) for t in texts}
            notes.append(f"{role} identification prompts of {ns.name} ({d['name']}): {how}.")
    return keys, notes


def _redraw(d: dict[str, Any], data_dir: str | None) -> tuple[list[str], str]:
    name = str(d["name"])
    try:
        full = load_prompts(name, data_dir=data_dir)
    except Exception as exc:  # noqa: BLE001 - a file that is gone: say so, exclude nothing
        return [], f"cannot be read again ({type(exc).__name__}); none excluded"
    draws = [m for note in d.get("notes") or [] if (m := _SAMPLE.match(str(note)))]
    drawn = full.sample(int(draws[-1].group(1)), int(draws[-1].group(2))) if draws else full
    if d.get("sha256") and drawn.sha256 == d["sha256"]:
        return drawn.texts(), f"{len(drawn)} drawn again (hash matches), excluded"
    return full.texts(), f"not reproduced (hash differs); all {len(full)} prompts of {name} excluded"


# -- assembly ---------------------------------------------------------------------------------------------


def _sources(cfg: MonitorEvalConfig) -> list[tuple[str, bool]]:
    """Every (spec, harmful) in the order the config names them; a spec given both labels is refused."""
    out: dict[str, bool] = {}
    for specs, harmful in ((cfg.fit_harmful, True), (cfg.fit_harmless, False), (cfg.score_harmful, True),
                           (cfg.score_harmless, False)):
        for s in specs:
            if out.setdefault(s, harmful) != harmful:
                raise ConfigError(f"{s!r} is named both harmful and benign; give each source one label.")
    return list(out.items())


def _keys(ps: Iterable[Any]) -> set[str]:
    return {normalise(p.text) for p in ps}


def _drop(ps: PromptSet, keys: set[str], note: str) -> tuple[PromptSet, int]:
    kept = ps.filter(lambda p: normalise(p.text) not in keys, note)
    return kept, len(ps) - len(kept)


def assemble(cfg: MonitorEvalConfig, sets: Sequence[NeuronSet]) -> EvalData:
    """The prompts of every part (see the module text) and the ledger entries of the scored sets."""
    ident, notes = identification_prompts(sets, cfg.data_dir)
    fit_specs, score_specs = {*cfg.fit_harmful, *cfg.fit_harmless}, {*cfg.score_harmful, *cfg.score_harmless}
    loaded: dict[str, PromptSet] = {}
    parts: dict[str, dict[str, PromptSet]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for spec, harmful in _sources(cfg):
        full = loaded[spec] = load_prompts(spec, data_dir=cfg.data_dir)
        ps, removed = _drop(dedupe(full), ident, "identification prompts removed")
        dev, held = eval_split(ps, "dev"), {}
        if spec in fit_specs and spec in score_specs:
            fit, held["dev"] = split(dev, 1 - cfg.fit_share, cfg.seed)
        elif spec in fit_specs:
            fit, held["dev"] = dev, dev.derive(dev.name, [], "fit only")
        else:
            fit, held["dev"] = dev.derive(dev.name, [], "scored only"), dev
        fit = fit.sample(cfg.n_fit, cfg.seed)
        train, validation = split(fit, cfg.validation_share, cfg.seed + 1)
        test = eval_split(ps, "test")
        scored = {"dev": held["dev"], "test": test,
                  "all": held["dev"].derive(ps.name, [*held["dev"].prompts, *test.prompts], "dev and test")}[cfg.split]
        if spec not in score_specs:
            scored = scored.derive(ps.name, [], "fit only")
        parts[spec] = {"train": train, "validation": validation, "scored": scored}
        counts[spec] = {"source": spec, "label": "harmful" if harmful else "benign",
                        "removed_identification": removed}
    fit_keys = _keys(p for d in parts.values() for part in ("train", "validation") for p in d[part])
    prompts: list[EvalPrompt] = []
    refs: list[EvalSetRef] = []
    for spec, harmful in _sources(cfg):
        scored, overlap = _drop(parts[spec]["scored"], fit_keys | ident, "fit prompts removed")
        scored = scored.sample(cfg.n_score, cfg.seed)
        parts[spec]["scored"] = scored
        counts[spec].update({part: len(parts[spec][part]) for part in PARTS}, removed_overlap=overlap)
        for part in PARTS:
            prompts += [EvalPrompt(p.text, spec, harmful, part) for p in parts[spec][part]]
        if spec in score_specs:
            pool = eval_split(loaded[spec], cfg.split)
            refs.append(eval_set_ref(spec, cfg.split, [item_key(p) for p in pool.prompts],
                                     [item_key(p) for p in scored.prompts]))
    _check_parts(cfg, prompts, parts)
    multijail, ref = multijail_rows(cfg, fit_keys | ident)
    if ref is not None:
        refs.append(ref)
    return EvalData(prompts, multijail, list(counts.values()), refs, notes)


def _check_parts(cfg: MonitorEvalConfig, prompts: list[EvalPrompt], parts: dict[str, dict[str, PromptSet]]) -> None:
    for part in ("train", "validation"):
        labels = {p.harmful for p in prompts if p.part == part}
        if labels != {True, False}:
            raise ConfigError(f"the {part} part holds {'no' if not labels else 'only ' + ('harmful' if True in labels else 'benign')} "
                              "prompts; both groups are needed (more fit sources, a larger n_fit or validation_share).")
    for h, b in zip(cfg.score_harmful, cfg.score_harmless):
        for spec in (h, b):
            if not parts[spec]["scored"].prompts:
                raise ConfigError(f"{spec}: no prompt left to score on the {cfg.split} split (after removing fit "
                                  "and identification prompts).")


def multijail_rows(cfg: MonitorEvalConfig, exclude: set[str]) -> tuple[dict[str, list[EvalPrompt]], EvalSetRef | None]:
    """``multijail_n`` rows of the ``split`` side in every language of ``multijail_languages`` (a row's side is
    :func:`split_of` of its id), skipping rows whose English text is in ``exclude``; and their ledger entry
    (named and hashed as the multilingual pipeline's, so the looks at MultiJail's test rows add up)."""
    if not cfg.multijail_languages:
        return {}, None
    en = load_prompts("multijail", language="en", data_dir=cfg.data_dir)
    side = en if cfg.split == "all" else en.filter(lambda p: split_of(p.id) == cfg.split, f"{cfg.split} rows")
    kept = side.filter(lambda p: normalise(p.text) not in exclude, "fit and identification prompts removed")
    ids = [p.id for p in kept.sample(cfg.multijail_n, cfg.seed).prompts]
    order = {i: k for k, i in enumerate(ids)}
    out: dict[str, list[EvalPrompt]] = {}
    for lang in cfg.multijail_languages:
        rows = sorted((p for p in load_prompts("multijail", language=lang, data_dir=cfg.data_dir).prompts
                       if p.id in order), key=lambda p: order[p.id])
        out[lang] = [EvalPrompt(p.text, "multijail", True, "scored", lang, p.id) for p in rows]
    ref = eval_set_ref("multijail", cfg.split, sorted({p.id for p in side.prompts}), sorted(ids))
    return out, ref


__all__ = ["EvalData", "EvalPrompt", "assemble", "identification_prompts", "multijail_rows"]
