"""ROC statistics of scores (higher: more harmful) on positives (harmful prompts) and negatives (benign
prompts), with their intervals.

* :func:`roc_auc`: the area under the ROC curve (Mann-Whitney U); :func:`roc_points` the curve itself.
* :func:`threshold_for_fpr` / :func:`tpr_at_fpr` / :func:`realised_fpr`: operating points (flag when
  ``score > threshold``).
* :func:`auroc_interval`: a stratified percentile bootstrap interval for the AUROC (Efron & Tibshirani 1993,
  ch. 13; positives and negatives resampled separately, as in Qin & Hotilovac 2008), and
  :func:`paired_auroc_difference` the same for the difference of two readouts scored on the same prompts
  (both resampled with the same draws, so their correlation is kept).
* :func:`operating_point`: true- and false-positive counts at a threshold with 95 % Wilson score intervals
  (Wilson 1927, :func:`safeneurons.evaluate.asr.wilson_interval`).

Bootstrap by weights: a resample draws multiplicities ``w`` (positives) and ``u`` (negatives) from the
multinomial distribution, and its AUROC is ``wᵀ H u / (n⁺ n⁻)`` with ``H[i, j] = 1[s⁺ᵢ > s⁻ⱼ] + ½·1[s⁺ᵢ = s⁻ⱼ]``,
which equals the Mann-Whitney AUROC of the resampled scores exactly, for every resample at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from safeneurons.errors import ConfigError, DataError, NumericalError


def _scores(values: Any, what: str) -> np.ndarray:
    s = np.asarray(values, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise DataError(f"{what}: no scores.")
    if not np.isfinite(s).all():
        raise NumericalError(f"{what}: {int((~np.isfinite(s)).sum())} score(s) are not finite.")
    return s


def threshold_for_fpr(scores_benign: Sequence[float] | np.ndarray, fpr: float) -> float:
    """The threshold ``t`` (a prompt is flagged when its score is ``> t``) whose false-positive rate on
    ``scores_benign`` is the largest that does not exceed ``fpr``; among thresholds with that rate, the
    smallest (it flags the most positives).

    With ``n`` benign scores sorted high to low, ``s₁ ≥ s₂ ≥ … ≥ sₙ``, and ``k`` the largest integer with
    ``k / n ≤ fpr``, it is ``t = s_{k+1}``. Ties: scores equal to ``t`` are not flagged, so a tie across the
    cut-off flags fewer than ``k`` benign prompts, and the realised rate is then below ``fpr``; no threshold
    does better, since any ``t' < s_{k+1}`` flags at least ``k + 1``. ``fpr = 0`` gives the largest benign
    score (no benign prompt flagged); with fewer than ``1 / fpr`` benign scores that is also the answer,
    and the realised rate is 0."""
    s = _scores(scores_benign, "threshold_for_fpr")
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 <= fpr < 1:
        raise ConfigError(f"fpr = {fpr!r}; expected a rate in [0, 1).")
    n = s.size
    k = min(math.floor(fpr * n), n - 1)
    while k + 1 < n and (k + 1) / n <= fpr:  # floor(fpr * n) may round one below or above the exact k
        k += 1
    while k > 0 and k / n > fpr:
        k -= 1
    return float(np.sort(s)[::-1][k])


def realised_fpr(scores_benign: Sequence[float] | np.ndarray, threshold: float) -> float:
    """The share of ``scores_benign`` strictly above ``threshold``."""
    s = _scores(scores_benign, "realised_fpr")
    return float(np.count_nonzero(s > threshold) / s.size)


def roc_auc(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: the probability that a positive scores above a negative, ties counting one
    half, ``(#{sᵢ⁺ > sⱼ⁻} + ½ #{sᵢ⁺ = sⱼ⁻}) / (n⁺ n⁻)``. Computed from mid-ranks (Mann-Whitney U):
    ``(R⁺ - n⁺(n⁺+1)/2) / (n⁺ n⁻)`` with ``R⁺`` the sum of the positives' ranks in the pooled scores, tied
    scores sharing their average rank. It equals the trapezoid area under the ROC curve whose tied scores
    are joined by straight segments."""
    from scipy.stats import rankdata

    pos, neg = _scores(scores_pos, "roc_auc positives"), _scores(scores_neg, "roc_auc negatives")
    ranks = rankdata(np.concatenate([pos, neg]), method="average")
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def tpr_at_fpr(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray,
               fpr: float) -> float:
    """The share of ``scores_pos`` strictly above :func:`threshold_for_fpr` of ``scores_neg`` (a positive tied
    with the threshold is not flagged, as a negative is not). The threshold is chosen on ``scores_neg``
    itself, so the rate on those negatives is at most ``fpr``; on fresh negatives it is an estimate."""
    t = threshold_for_fpr(scores_neg, fpr)
    pos = _scores(scores_pos, "tpr_at_fpr positives")
    return float(np.count_nonzero(pos > t) / pos.size)


def roc_points(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray
               ) -> tuple[list[float], list[float]]:
    """The ROC curve as ``(fpr, tpr)`` lists, from ``(0, 0)`` to ``(1, 1)``: one point per distinct score
    used as threshold (flag ``score ≥ s``), so tied scores are joined by one straight segment (the trapezoid
    area of these points is :func:`roc_auc`)."""
    pos, neg = _scores(scores_pos, "roc_points positives"), _scores(scores_neg, "roc_points negatives")
    cuts = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr = [0.0] + [float(np.count_nonzero(neg >= c) / neg.size) for c in cuts]
    tpr = [0.0] + [float(np.count_nonzero(pos >= c) / pos.size) for c in cuts]
    return fpr, tpr


def _pair_matrix(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``H[i, j] = 1`` where positive ``i`` scores above negative ``j``, ``½`` on a tie, else 0."""
    diff = pos[:, None] - neg[None, :]
    return (diff > 0) + 0.5 * (diff == 0)


def _weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_boot, n]`` multiplicities of a resample of ``n`` items with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _check_boot(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError(f"n_boot = {n_boot!r}; expected an integer >= 1.")
    if not 0 < level < 1:
        raise ConfigError(f"level = {level!r}; expected a coverage in (0, 1).")


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def auroc_interval(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray, *,
                   n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUROC over ``n_boot`` stratified bootstrap resamples (positives and negatives
    drawn with replacement within their own group, so each resample keeps both group sizes). Perfectly
    separated scores give ``(1, 1)``: the bootstrap cannot see beyond the sample, which the group sizes beside
    it say."""
    _check_boot(n_boot, level)
    pos, neg = _scores(scores_pos, "auroc_interval positives"), _scores(scores_neg, "auroc_interval negatives")
    rng = np.random.default_rng(seed)
    h = _pair_matrix(pos, neg)
    w, u = _weights(pos.size, n_boot, rng), _weights(neg.size, n_boot, rng)
    aucs = ((w @ h) * u).sum(1) / (pos.size * neg.size)
    return _percentiles(aucs, level)


def paired_auroc_difference(a: tuple[np.ndarray, np.ndarray], others: Sequence[tuple[np.ndarray, np.ndarray]], *,
                            n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``(Δ, lo, hi)``: ``Δ = AUROC(a) − max_k AUROC(others[k])`` for readouts scored on the same prompts
    (each a ``(positives, negatives)`` pair of equal lengths, row ``i`` the same prompt in each), with the
    percentile interval of Δ over stratified bootstrap resamples that draw the same prompts for every
    readout. Against several controls (random sets of several seeds) the maximum is taken per resample, so
    the interval is of the margin over the best control."""
    _check_boot(n_boot, level)
    if not others:
        raise DataError("paired_auroc_difference: no readout to compare with.")
    pos_a, neg_a = _scores(a[0], "paired_auroc_difference"), _scores(a[1], "paired_auroc_difference")
    for p, q in others:
        if np.asarray(p).size != pos_a.size or np.asarray(q).size != neg_a.size:
            raise DataError("paired_auroc_difference: the readouts were not scored on the same prompts.")
    rng = np.random.default_rng(seed)
    w, u = _weights(pos_a.size, n_boot, rng), _weights(neg_a.size, n_boot, rng)
    norm = pos_a.size * neg_a.size

    def boot(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return ((w @ _pair_matrix(p, q)) * u).sum(1) / norm

    base = boot(pos_a, neg_a)
    rivals = np.max([boot(_scores(p, "paired"), _scores(q, "paired")) for p, q in others], axis=0)
    delta = roc_auc(pos_a, neg_a) - max(roc_auc(p, q) for p, q in others)
    lo, hi = _percentiles(base - rivals, level)
    return float(delta), lo, hi


def operating_point(scores_pos: Sequence[float] | np.ndarray, scores_neg: Sequence[float] | np.ndarray,
                    threshold: float) -> dict[str, Any]:
    """Flag ``score > threshold``: ``{threshold, tp, n_pos, tpr, tpr_ci, fp, n_neg, fpr, fpr_ci}`` with 95 %
    Wilson score intervals of both rates (:func:`safeneurons.evaluate.asr.wilson_interval`)."""
    from safeneurons.evaluate.asr import wilson_interval

    pos, neg = _scores(scores_pos, "operating_point positives"), _scores(scores_neg, "operating_point negatives")
    tp, fp = int(np.count_nonzero(pos > threshold)), int(np.count_nonzero(neg > threshold))
    return {"threshold": float(threshold), "tp": tp, "n_pos": int(pos.size), "tpr": tp / pos.size,
            "tpr_ci": list(wilson_interval(tp, pos.size)), "fp": fp, "n_neg": int(neg.size), "fpr": fp / neg.size,
            "fpr_ci": list(wilson_interval(fp, neg.size))}


__all__ = ["auroc_interval", "operating_point", "paired_auroc_difference", "realised_fpr", "roc_auc", "roc_points",
           "threshold_for_fpr", "tpr_at_fpr"]
