"""One ranking of neurons by identification score, and the nested attack sets cut from it (the
brittleness curve: attack success against the share of neurons zeroed).

Everything here is a pure function of score arrays ``[L, N]`` (one site, layer by layer) and boolean masks of
the same shape; the model enters only through the ``score_of`` callback of :func:`iterative_masks`.

**Ranking score.** SafeNeuron's two criteria (:mod:`safeneurons.identify.safeneuron`) are the effect size
``d_j > τ_ES`` (Eq. 7) and the layer z-score of the mean shift ``z_j > τ_SAS`` with ``Δ_j > 0`` (Eq. 10). One
score per neuron that both thresholds cut is their threshold-normalised maximum::

    r_j = max( d_j / τ_ES ,  z_j / τ_SAS  if Δ_j > 0  else −∞ )          (τ_ES, τ_SAS > 0)

Why this score:

* ``{j : r_j > 1} = SN_ES ∪ SN_SAS`` exactly, so the identification set FULL is one cut of this ranking: the
  top ``|FULL|`` neurons are FULL, and smaller or larger sets shrink or extend FULL along the same criterion
  instead of switching to another statistic;
* dividing by the thresholds puts ``d`` and ``z`` on the scale at which the method itself calls them equal
  evidence; a raw ``max(d, z)`` would favour SAS whenever ``τ_ES > τ_SAS`` (Qwen: 3 and 2, Appendix B.3);
* it is one-sided like both criteria: a neuron more active on benign prompts (``Δ ≤ 0``) scores
  ``d/τ_ES ≤ 0`` and ranks below every neuron with a positive shift.

Ties are broken by position (layer, then index): a stable sort of the flattened array.

**Set sizes.** The set at a grid point of ``f`` percent holds ``⌈f/100 · N_total⌉`` neurons, ``N_total`` being
every neuron of the site (``L · N``; excluded ones count), computed in exact decimal arithmetic so that
``0.1 %`` of 1000 neurons is 1, not 2.

**Attackers.** *One-shot*: the first ``k`` neurons of one ranking (nested by construction). *Iterative*: from
the set chosen so far, the ranking is computed again on the model with that set zeroed (``score_of``), and the
best neurons not yet chosen are added, until the next grid point (in steps of at most ``step`` neurons when
given); each grid point's set contains the previous one. *Matched random* (:func:`matched_random`): the same
count in every (layer, site) cell as an attacked set, drawn outside it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from safeneurons.errors import DataError
from safeneurons.identify.safeneuron import SafeNeuronConfig, safeneuron_scores, thresholds_for
from safeneurons.neurons import ModelShape, NeuronSet
from safeneurons.stats.collect import ActivationStats


def ranking_score(effect: np.ndarray, z: np.ndarray, delta: np.ndarray, tau_es: float,
                  tau_sas: float) -> np.ndarray:
    """``r = max(d/τ_ES, z/τ_SAS if Δ > 0 else −∞)`` elementwise (module docstring); finite where ``d`` is."""
    if not (tau_es > 0 and tau_sas > 0):
        raise DataError(f"the ranking score needs positive thresholds, got tau_es={tau_es!r}, tau_sas={tau_sas!r}.")
    effect, z, delta = (np.asarray(a, dtype=np.float64) for a in (effect, z, delta))
    sas = np.where(delta > 0, z / tau_sas, -np.inf)
    return np.maximum(effect / tau_es, sas)


def resolved_thresholds(cfg: SafeNeuronConfig, family: str = "") -> tuple[float, float]:
    """``(τ_ES, τ_SAS)`` as identification applies them: the configured ones, else the family defaults."""
    tau_es, tau_sas = thresholds_for(family)
    return (cfg.tau_es if cfg.tau_es is not None else tau_es, cfg.tau_sas if cfg.tau_sas is not None else tau_sas)


def safeneuron_ranking(stats: ActivationStats, cfg: SafeNeuronConfig, family: str = "") -> np.ndarray:
    """The ranking score ``[L, N]`` of every neuron of ``cfg.site`` from activation statistics."""
    sc = safeneuron_scores(stats, cfg)
    return ranking_score(sc.effect, sc.z, sc.delta, *resolved_thresholds(cfg, family))


RANKED_METHODS = ("safeneuron", "meandiff")


def identification_ranking(stats: ActivationStats, method: str, params: Any, family: str = "") -> np.ndarray:
    """The score identification method ``method`` cuts, per neuron ``[L, N]`` of ``params.site``: for
    ``safeneuron`` the threshold-normalised score above; for ``meandiff`` its own statistic, the raw mean shift
    ``Δ`` (which it cuts per layer at the top k; here ranked across layers)."""
    if method == "safeneuron":
        return safeneuron_ranking(stats, params, family)
    if method == "meandiff":
        groups = SafeNeuronConfig(unsafe_group=params.unsafe_group, safe_group=params.safe_group, site=params.site)
        return safeneuron_scores(stats, groups).delta
    raise DataError(f"identification method {method!r} has no ranking; choose from {', '.join(RANKED_METHODS)}.")


def count_for_fraction(percent: float, n_total: int) -> int:
    """``⌈percent/100 · n_total⌉``, in exact decimal arithmetic (``percent`` as written, e.g. 0.1)."""
    if not 0 <= percent <= 100:
        raise DataError(f"a fraction of neurons must lie in [0, 100] percent, got {percent!r}.")
    exact = Decimal(repr(float(percent))) * n_total / 100
    return math.ceil(exact)


def ranking_order(score: np.ndarray, blocked: np.ndarray | None = None) -> np.ndarray:
    """Flat indices of ``score`` from best to worst (ties: lower flat index first), ``blocked`` left out."""
    flat = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    if blocked is not None:
        order = order[~np.asarray(blocked, dtype=bool).ravel()[order]]
    return order


def extend_mask(score: np.ndarray, chosen: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``chosen`` plus the best-scoring neurons neither chosen nor excluded, up to ``k`` in all."""
    chosen = np.asarray(chosen, dtype=bool)
    have = int(chosen.sum())
    if k < have:
        raise DataError(f"cannot shrink a selection of {have} neurons to {k}.")
    blocked = chosen if exclude is None else chosen | np.asarray(exclude, dtype=bool)
    order = ranking_order(score, blocked)
    if k - have > order.size:
        raise DataError(f"{k} neurons asked for, but only {have + order.size} can be chosen "
                        f"({int(blocked.sum()) - have} excluded).")
    out = chosen.copy().ravel()
    out[order[: k - have]] = True
    return out.reshape(chosen.shape)


def _check_counts(counts: Sequence[int]) -> None:
    if any(b < a for a, b in itertools.pairwise(counts)) or any(c < 0 for c in counts):
        raise DataError(f"set sizes must be non-negative and non-decreasing, got {list(counts)}.")


def one_shot_masks(score: np.ndarray, counts: Sequence[int], exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """The top ``counts[i]`` neurons of one ranking, for each ``i`` (nested), never an ``exclude`` one."""
    _check_counts(counts)
    empty = np.zeros(np.shape(score), dtype=bool)
    return [extend_mask(score, empty, k, exclude) for k in counts]


def step_targets(counts: Sequence[int], step: int | None) -> list[int]:
    """Set sizes after each re-identification: at most ``step`` neurons more each time (None: straight to the
    next grid point), landing on every size of ``counts``."""
    _check_counts(counts)
    if step is not None and step < 1:
        raise DataError(f"an iterative step adds at least one neuron, got {step!r}.")
    out: list[int] = []
    have = 0
    for target in counts:
        while have < target:
            have = target if step is None else min(target, have + step)
            out.append(have)
    return out


@dataclass
class IterativeStep:
    """One re-identification: the set size before and after, and the neurons added, best first, as
    ``(layer, index)``."""

    before: int
    after: int
    added: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"before": self.before, "after": self.after, "added": [list(a) for a in self.added]}


def iterative_masks(score_of: Callable[[np.ndarray], np.ndarray], counts: Sequence[int], shape: tuple[int, int],
                    *, step: int | None = None, exclude: np.ndarray | None = None
                    ) -> tuple[list[np.ndarray], list[IterativeStep]]:
    """Iterative selection: ``score_of(chosen)`` is the ranking score with the ``chosen`` neurons zeroed
    (statistics collected with that ablation active); each step adds the best neurons not yet chosen (nor
    excluded), up to the next target of :func:`step_targets`. Returns the mask at each size of ``counts``
    (each containing the previous) and the steps taken. ``score_of`` is called once per step."""
    chosen = np.zeros(shape, dtype=bool)
    at: dict[int, np.ndarray] = {0: chosen}
    steps: list[IterativeStep] = []
    for target in step_targets(counts, step):
        before = int(chosen.sum())
        score = np.asarray(score_of(chosen.copy()), dtype=np.float64)
        if score.shape != tuple(shape):
            raise DataError(f"score_of returned shape {score.shape}, expected {tuple(shape)}.")
        grown = extend_mask(score, chosen, target, exclude)
        new = np.flatnonzero(grown & ~chosen)
        new = new[np.argsort(-score.ravel()[new], kind="stable")]
        steps.append(IterativeStep(before, target, [(int(i // shape[1]), int(i % shape[1])) for i in new]))
        chosen = at[target] = grown
    return [at[k].copy() for k in counts], steps


def mask_to_set(shape: ModelShape, site: str, mask: np.ndarray, name: str = "",
                provenance: dict[str, object] | None = None) -> NeuronSet:
    """A :class:`NeuronSet` of the ``True`` cells of ``mask`` ``[L, N]`` at ``site``."""
    groups = {(layer, site): np.flatnonzero(mask[layer]) for layer in range(mask.shape[0])}
    return NeuronSet(shape, groups, name=name, provenance=provenance)


def set_to_mask(ns: NeuronSet | None, site: str, shape: tuple[int, int]) -> np.ndarray:
    """The ``[L, N]`` mask of ``ns``'s neurons at ``site`` (other sites ignored; None: empty)."""
    mask = np.zeros(shape, dtype=bool)
    if ns is not None:
        for layer in range(shape[0]):
            mask[layer, ns.indices(layer, site)] = True
    return mask


def matched_random(attacked: NeuronSet, seed: int, avoid: NeuronSet | None = None, name: str = "") -> NeuronSet:
    """The matched random control of an attacked set: :meth:`NeuronSet.random_matched` with ``exclude_self``,
    drawn outside ``avoid`` too where a cell leaves enough (the neurons the attacker was not allowed to pick)."""
    return attacked.random_matched(seed, exclude_self=True, name=name or None, avoid=avoid)