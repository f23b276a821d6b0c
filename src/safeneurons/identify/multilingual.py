"""Multilingual safety-neuron sets from deactivation importance (SS-Neurons, arXiv 2602.01283).

Per language λ, from the importance ``I(N, D)`` of :mod:`safeneurons.identify.importance` on a
jailbreak set ``D_jail`` (harmful prompts, optionally with safe refusals) and a benign set ``D_norm``
(papers.md B.3, B.4):

* ``S_l(D) = Top_{p%}{N ∈ 𝒩_l | I(N, D)}`` per layer l — here per (layer, site) cell, p = 3 % [B.3];
* ``MS_l = S_l(D_jail) \\ S_l(D_norm)``, the global MS set being the union over layers [B.3];
* ``SS_l^(λ) = MS_l^(λ) ∩ MS_l^(EN)`` for each non-high-resource language λ, by exact neuron
  identity (layer, site, index) [B.4].

**Rounding of "top p %"** (the paper is silent): ``k = ceil(p · width)`` neurons per cell, with
``p · width`` first rounded to 9 decimals so that exact products (0.03 · 100) are not rounded up;
at least one neuron per cell when p > 0; ``rounding="round"`` (half up) and ``"floor"`` are available. Ties go to the
lower neuron index. **Cells**: selection is per (layer, site), not per layer across sites, so that
the narrow K/V projections of GQA models are not swamped by Q/O neurons (the paper does not say
which; the per-layer union of per-site top sets has the same 3 % share of every site).

Analysis helpers: :func:`jaccard_matrix` across languages, :func:`count_asr_correlation` (SS count
vs per-language ASR; the paper reports a negative correlation [B.1]), and the MultiJail resource
groups (high: en zh it vi; medium: ar ko th; low: bn sw jv).
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from safeneurons.data.datasets import MULTIJAIL_LANGUAGES, RESOURCE_GROUPS
from safeneurons.errors import ConfigError, DataError
from safeneurons.identify.importance import (
    PAPER,
    ImportanceConfig,
    ImportanceScores,
    _texts_and_responses,
    deactivation_importance,
    top_indices,
    top_k_count,
)
from safeneurons.neurons import ModelShape, NeuronSet

log = logging.getLogger("safeneurons.identify.multilingual")

DEFAULT_P = 0.03
HR_LANGUAGE = "en"
ROLES = ("jail", "norm")
SET_KINDS = ("S_jail", "S_norm", "MS", "SS")

__all__ = ["DEFAULT_P", "HR_LANGUAGE", "MULTIJAIL_LANGUAGES", "RESOURCE_GROUPS", "SET_KINDS", "build_language_sets",
           "compute_language_importance", "count_asr_correlation", "group_means", "jaccard_matrix", "ms_set",
           "resource_group", "set_counts", "ss_set", "top_p_per_layer"]


# ============================================================================ selection


def top_p_per_layer(scores: ImportanceScores | Mapping[tuple[int, str], np.ndarray], p: float = DEFAULT_P,
                    shape: ModelShape | None = None, *, rounding: str = "ceil", name: str = "",
                    provenance: Mapping[str, Any] | None = None) -> NeuronSet:
    """``S(D)``: in every (layer, site) cell the ``top_k_count(width, p, rounding)`` neurons of highest
    importance (papers.md B.3; ``ceil(p·width)`` by default, see the module docstring). Ties go to
    the lower index. A cell with NaN (an unmerged neuron shard) is an error."""
    if isinstance(scores, ImportanceScores):
        cells = scores.scores
        shape = shape or scores.shape
        base_prov: dict[str, Any] = {"prompts_sha256": scores.meta.get("prompts_sha256"),
                                     "n_prompts": scores.meta.get("n_prompts"),
                                     "importance_config": scores.config}
    else:
        cells = dict(scores)
        base_prov = {}
        if shape is None:
            raise ConfigError("top_p_per_layer: give the model shape (shape=layout.shape()) with plain score arrays.")
    if not cells:
        raise DataError("top_p_per_layer: no importance cells to select from.")
    top_k_count(1, p, rounding)  # validates p and rounding
    chosen: dict[tuple[int, str], np.ndarray] = {}
    for (layer, site), v in cells.items():
        arr = np.asarray(v, dtype=np.float64)
        width = shape.site_sizes.get(site)
        if width is None or arr.shape != (width,):
            raise DataError(f"top_p_per_layer: cell {layer}.{site} has {arr.shape} scores but the model shape says "
                            f"{width} neurons; the scores belong to another model.")
        if np.isnan(arr).any():
            raise DataError(f"top_p_per_layer: cell {layer}.{site} has {int(np.isnan(arr).sum())} unscored (NaN) "
                            "neurons; merge all neuron shards with merge_importance first.")
        chosen[(layer, site)] = top_indices(arr, top_k_count(width, p, rounding))
    prov = {"method": "deactivation_importance_top_p", "p": p, "rounding": rounding, "per": "layer,site",
            "paper": PAPER, **base_prov, **dict(provenance or {})}
    return NeuronSet(shape, chosen, name=name or f"S(top {p:.3g})", provenance=prov)


def ms_set(s_jail: NeuronSet, s_norm: NeuronSet, name: str = "", **provenance: Any) -> NeuronSet:
    """``MS = S(D_jail) \\ S(D_norm)`` cell by cell (papers.md B.3)."""
    out = s_jail - s_norm
    return out.renamed(name or "MS", kind="MS", formula="S_jail \\ S_norm", **provenance)


def ss_set(ms_lang: NeuronSet, ms_hr: NeuronSet, name: str = "", **provenance: Any) -> NeuronSet:
    """``SS^(λ) = MS^(λ) ∩ MS^(EN)`` by exact (layer, site, index) identity (papers.md B.4)."""
    out = ms_lang & ms_hr
    return out.renamed(name or "SS", kind="SS", formula="MS_lang ∩ MS_hr", **provenance)


def build_language_sets(scores: Mapping[str, Mapping[str, ImportanceScores]], p: float = DEFAULT_P,
                        hr_language: str = HR_LANGUAGE, *, rounding: str = "ceil",
                        shape: ModelShape | None = None) -> dict[str, dict[str, NeuronSet]]:
    """``{language: {"S_jail", "S_norm", "MS", "SS"}}`` from ``{language: {"jail": I, "norm": I}}``.

    ``SS`` of the high-resource language itself is its MS set (``MS ∩ MS``), marked in provenance
    (``"is_hr": true``); leave it out of SS-count analyses (:func:`set_counts` does by default).
    Provenance carries the language, p, rounding and the prompt hashes of both data sets."""
    if hr_language not in scores:
        raise DataError(f"build_language_sets: no importance for the high-resource language {hr_language!r} "
                        f"(languages: {sorted(scores)}); SS = MS_lang ∩ MS_{hr_language} needs it.")
    out: dict[str, dict[str, NeuronSet]] = {}
    for lang, roles in scores.items():
        missing = [r for r in ROLES if r not in roles]
        if missing:
            raise DataError(f"build_language_sets: language {lang!r} lacks importance for {missing} "
                            f"(keys needed: {', '.join(ROLES)}).")
        hashes = {r: roles[r].meta.get("prompts_sha256") for r in ROLES}
        common = {"language": lang, "p": p, "rounding": rounding, "data_sha256": hashes,
                  "resource_group": resource_group(lang)}
        s_j = top_p_per_layer(roles["jail"], p, shape, rounding=rounding, name=f"S_jail[{lang}]",
                              provenance={**common, "kind": "S_jail", "role": "jail"})
        s_n = top_p_per_layer(roles["norm"], p, shape, rounding=rounding, name=f"S_norm[{lang}]",
                              provenance={**common, "kind": "S_norm", "role": "norm"})
        s_j.check_fits(s_n.shape, source=f"S_jail[{lang}] vs S_norm[{lang}]")
        out[lang] = {"S_jail": s_j, "S_norm": s_n, "MS": ms_set(s_j, s_n, f"MS[{lang}]", **common)}
    ms_hr = out[hr_language]["MS"]
    hr_hashes = out[hr_language]["MS"].provenance.get("data_sha256")
    for lang, sets in out.items():
        sets["SS"] = ss_set(sets["MS"], ms_hr, f"SS[{lang}]", language=lang, hr_language=hr_language,
                            is_hr=lang == hr_language, p=p, rounding=rounding,
                            data_sha256=sets["MS"].provenance.get("data_sha256"), hr_data_sha256=hr_hashes)
    return out


SET_KINDS = ("S_jail", "S_norm", "MS", "SS")


def load_language_sets(folder: str | Path, languages: Sequence[str],
                       shape: ModelShape | None = None) -> dict[str, dict[str, NeuronSet]]:
    """The sets :func:`build_language_sets` saved as ``<folder>/<lang>/<kind>.json``, each checked against
    ``shape``; a missing language or kind is named in the error."""
    root = Path(folder)
    missing = [f"{lang}/{kind}.json" for lang in languages for kind in SET_KINDS
               if not (root / lang / f"{kind}.json").is_file()]
    if missing:
        raise DataError(f"neuron_sets {root}: missing {', '.join(missing[:6])}"
                        f"{f' and {len(missing) - 6} more' if len(missing) > 6 else ''} (expected the "
                        "neurons/multilingual folder of a multilingual run).")
    return {lang: {kind: NeuronSet.load(root / lang / f"{kind}.json", shape) for kind in SET_KINDS}
            for lang in languages}


def compute_language_importance(model: Any, tokenizer: Any, data: Mapping[str, Mapping[str, Any]],
                                config: ImportanceConfig | None = None, *, resume_dir: str | Path | None = None,
                                layout: Any = None, progress: bool = True,
                                save_dir: str | Path | None = None) -> dict[str, dict[str, ImportanceScores]]:
    """Run :func:`deactivation_importance` for ``{language: {"jail": prompts, "norm": prompts}}``.

    ``resume_dir``/``<lang>-<role>`` holds each run's partial results (those of other settings, e.g. seeded by
    ``--reuse``, are started over); ``save_dir`` (optional)
    receives ``importance-<lang>-<role>.safetensors``. A prompt set shared by several languages (the
    default English ``D_norm``: same texts and responses) is scored once."""
    out: dict[str, dict[str, ImportanceScores]] = {}
    scored: dict[tuple[Any, ...], ImportanceScores] = {}
    for lang, roles in data.items():
        out[lang] = {}
        for role in ROLES:
            if role not in roles:
                raise DataError(f"compute_language_importance: language {lang!r} has no {role!r} prompts.")
            texts, responses = _texts_and_responses(roles[role], None)
            key = (tuple(texts), tuple(responses) if responses else None)  # what the scores depend on
            if key not in scored:
                rp = Path(resume_dir) / f"{lang}-{role}" if resume_dir is not None else None
                log.info("deactivation importance: language %s, %s prompts", lang, role)
                scored[key] = deactivation_importance(model, tokenizer, roles[role], config, layout=layout,
                                                        progress=progress, resume_path=rp,
                                                        restart_stale=True)
            s = copy.deepcopy(scored[key])  # each language gets its own copy and meta
            s.meta.update({"language": lang, "role": role})
            if save_dir is not None:
                s.save(Path(save_dir) / f"importance-{lang}-{role}.safetensors")
            out[lang][role] = s
    return out


# ============================================================================ analysis


def set_counts(sets: Mapping[str, Mapping[str, NeuronSet]], kind: str = "SS",
               exclude: Sequence[str] | None = (HR_LANGUAGE,)) -> dict[str, int]:
    """``{language: |set|}`` for one kind (default SS, without the high-resource language)."""
    if kind not in SET_KINDS:
        raise ConfigError(f"set kind {kind!r} is not one of {', '.join(SET_KINDS)}.")
    skip = set(exclude or ())
    return {lang: len(v[kind]) for lang, v in sets.items() if lang not in skip}


def jaccard_matrix(sets: Mapping[str, NeuronSet],
                   languages: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """``(languages, J)`` with ``J[a, b] = |A ∩ B| / |A ∪ B|`` (1 when both are empty)."""
    langs = list(languages) if languages is not None else list(sets)
    missing = [x for x in langs if x not in sets]
    if missing:
        raise DataError(f"jaccard_matrix: no set for {missing} (sets: {sorted(sets)}).")
    n = len(langs)
    mat = np.eye(n, dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            mat[i, j] = mat[j, i] = sets[langs[i]].jaccard(sets[langs[j]])
    return langs, mat


def count_asr_correlation(counts: Mapping[str, float], asr: Mapping[str, float]) -> dict[str, Any]:
    """Pearson and Spearman correlation (scipy) of neuron counts with ASR over the languages both
    give; ``n < 3`` or a constant input gives NaN with a ``note``."""
    from scipy.stats import pearsonr, spearmanr

    langs = [x for x in counts if x in asr]
    dropped = sorted(set(counts) ^ set(asr))
    if dropped:
        log.warning("count_asr_correlation: languages without both a count and an ASR are left out: %s", dropped)
    x = np.array([float(counts[k]) for k in langs])
    y = np.array([float(asr[k]) for k in langs])
    out: dict[str, Any] = {"n": len(langs), "languages": langs, "left_out": dropped,
                           "pearson": math.nan, "pearson_p": math.nan, "spearman": math.nan, "spearman_p": math.nan}
    if len(langs) < 3:
        out["note"] = f"need at least 3 languages for a correlation, got {len(langs)}"
        return out
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        out["note"] = "constant counts or ASR: correlation undefined"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pr = pearsonr(x, y)
        sr = spearmanr(x, y)
    out.update(pearson=float(pr.statistic), pearson_p=float(pr.pvalue), spearman=float(sr.statistic),
               spearman_p=float(sr.pvalue))
    return out


def resource_group(language: str) -> str | None:
    """MultiJail resource group of a language (``high``/``medium``/``low``), or None."""
    for group, langs in RESOURCE_GROUPS.items():
        if language in langs:
            return group
    return None


def group_means(values: Mapping[str, float]) -> dict[str, float]:
    """Mean of per-language values within each MultiJail resource group present."""
    acc: dict[str, list[float]] = {}
    for lang, v in values.items():
        g = resource_group(lang)
        if g is not None:
            acc.setdefault(g, []).append(float(v))
    return {g: float(np.mean(v)) for g in RESOURCE_GROUPS if (v := acc.get(g))}
