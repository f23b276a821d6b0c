"""SafeNeuron identification (arXiv 2602.12158, §3 and Algorithm 1), training-free.

From per-neuron activation moments on harmful (``unsafe``) and benign (``safe``) prompts, per layer l
and neuron j:

* mean shift   ``Δ_j = ā_j^unsafe − ā_j^safe``                                             (Eq. 9)
* pooled SD    ``s_j = sqrt(((n_u−1) σ²_u + (n_s−1) σ²_s) / (n_u + n_s − 2))``             (Eq. 6)
* effect size  ``d_j = Δ_j / s_j`` (Cohen's d, Eq. 5);  ``SN_ES = {j : d_j > τ_ES}`` (one-sided, Eq. 7)
  — option ``statistic="t"``: the pooled two-sample t, ``T_j = Δ_j / (s_j sqrt(1/n_u + 1/n_s))``.
* layer z-score ``z_j = (Δ_j − mean_l(Δ)) / std_l(Δ)`` over the N neurons of the layer;
  ``SN_SAS = {j : z_j > τ_SAS and Δ_j > 0}``                                                  (Eq. 10)
* ``SN = SN_ES ∪ SN_SAS``, per layer (no global top-k).

Zero-variance neurons: if ``s_j = 0`` then ``d_j = 0`` when ``Δ_j = 0`` and ``±inf`` is replaced by a
large finite value (``ZERO_VAR_D``) with the sign of ``Δ_j``, and such neurons are reported; a layer
whose Δ has zero spread has all z-scores 0. The returned arrays never contain NaN or inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from safeneurons.errors import ConfigError, DataError
from safeneurons.neurons import NeuronSet
from safeneurons.stats.collect import ActivationStats

ZERO_VAR_D = 1e6
#: Thresholds of Appendix B.3 (Qwen 3/2, Llama 2/2); other families use 2/2 (not stated in the paper).
FAMILY_THRESHOLDS: dict[str, tuple[float, float]] = {"qwen2": (3.0, 2.0), "qwen3": (3.0, 2.0), "llama": (2.0, 2.0)}
DEFAULT_THRESHOLDS = (2.0, 2.0)

PAPER = {"title": "SafeNeuron: Neuron-Level Safety Alignment for Large Language Models", "arxiv": "2602.12158"}


def thresholds_for(family: str) -> tuple[float, float]:
    """``(τ_ES, τ_SAS)`` defaults for an adapter family."""
    return FAMILY_THRESHOLDS.get(family, DEFAULT_THRESHOLDS)


@dataclass
class SafeNeuronConfig:
    tau_es: float | None = field(default=None, metadata={"help": "ES threshold (default: per family, Qwen 3, others 2)"})
    tau_sas: float | None = field(default=None, metadata={"help": "SAS threshold (default 2)"})
    statistic: str = field(default="d", metadata={"help": "ES statistic: 'd' (Cohen's d, Eq. 5) or 't' (pooled t)"})
    unsafe_group: str = field(default="harmful", metadata={"help": "statistics group of harmful prompts"})
    safe_group: str = field(default="harmless", metadata={"help": "statistics group of benign prompts"})
    site: str = field(default="mlp", metadata={"help": "neuron site (the paper uses mlp)"})

    def __post_init__(self) -> None:
        if self.statistic not in ("d", "t"):
            raise ConfigError(f"identify.statistic must be 'd' or 't', got {self.statistic!r}.")


@dataclass
class SafeNeuronScores:
    """Per-layer arrays ``[L, N]`` (float64, finite): mean shift, effect size, SAS z-score."""

    delta: np.ndarray
    effect: np.ndarray
    z: np.ndarray
    zero_variance: int
    n_unsafe: int
    n_safe: int


def safeneuron_scores(stats: ActivationStats, cfg: SafeNeuronConfig) -> SafeNeuronScores:
    for g in (cfg.unsafe_group, cfg.safe_group):
        if g not in stats.moments:
            raise DataError(f"statistics have no group {g!r} (groups: {stats.groups()}).")
    n_u, mu_u, var_u = stats.table(cfg.unsafe_group, cfg.site)
    n_s, mu_s, var_s = stats.table(cfg.safe_group, cfg.site)
    if n_u < 2 or n_s < 2:
        raise DataError(f"need at least 2 samples per group for a pooled SD; got {n_u} harmful and {n_s} benign.")
    delta = (mu_u - mu_s).numpy()
    pooled = torch.sqrt(((n_u - 1) * var_u + (n_s - 1) * var_s) / (n_u + n_s - 2)).numpy()
    if cfg.statistic == "t":
        pooled = pooled * np.sqrt(1.0 / n_u + 1.0 / n_s)
    zero = pooled <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = np.where(zero, np.sign(delta) * ZERO_VAR_D, delta / np.where(zero, 1.0, pooled))
    mu_l = delta.mean(axis=1, keepdims=True)
    sd_l = delta.std(axis=1, keepdims=True)  # population SD over the layer's neurons
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd_l > 0, (delta - mu_l) / np.where(sd_l > 0, sd_l, 1.0), 0.0)
    return SafeNeuronScores(delta, effect, z, int(zero.sum()), n_u, n_s)


def _set_from_mask(stats: ActivationStats, mask: np.ndarray, site: str, name: str, prov: dict[str, Any]) -> NeuronSet:
    groups = {(layer, site): np.nonzero(mask[layer])[0] for layer in range(mask.shape[0])}
    return NeuronSet(stats.shape, groups, name=name, provenance=prov)


def identify_safeneurons(stats: ActivationStats, cfg: SafeNeuronConfig, family: str = "") -> dict[str, NeuronSet]:
    """Return ``{"ES": ..., "SAS": ..., "FULL": ...}`` (FULL = ES ∪ SAS), thresholds applied per layer."""
    tau_es_d, tau_sas_d = thresholds_for(family)
    tau_es = cfg.tau_es if cfg.tau_es is not None else tau_es_d
    tau_sas = cfg.tau_sas if cfg.tau_sas is not None else tau_sas_d
    sc = safeneuron_scores(stats, cfg)
    es_mask = sc.effect > tau_es
    sas_mask = (sc.z > tau_sas) & (sc.delta > 0)
    prov = {
        "method": "safeneuron", "paper": PAPER, "tau_es": tau_es, "tau_sas": tau_sas, "statistic": cfg.statistic,
        "site": cfg.site, "position": stats.position, "n_unsafe": sc.n_unsafe, "n_safe": sc.n_safe,
        "zero_variance_neurons": sc.zero_variance, "data": stats.meta.get("groups", {}),
    }
    es = _set_from_mask(stats, es_mask, cfg.site, "ES", {**prov, "criterion": f"d > {tau_es}"})
    sas = _set_from_mask(stats, sas_mask, cfg.site, "SAS", {**prov, "criterion": f"z > {tau_sas} and delta > 0"})
    full = _set_from_mask(stats, es_mask | sas_mask, cfg.site, "FULL", {**prov, "criterion": "ES ∪ SAS"})
    return {"ES": es, "SAS": sas, "FULL": full}


def mean_difference_topk(stats: ActivationStats, k: int, cfg: SafeNeuronConfig | None = None) -> NeuronSet:
    """Baseline: the ``k`` neurons per layer with the largest raw mean shift ``Δ_j`` (no normalisation)."""
    cfg = cfg or SafeNeuronConfig()
    sc = safeneuron_scores(stats, cfg)
    k = min(k, sc.delta.shape[1])
    mask = np.zeros_like(sc.delta, dtype=bool)
    top = np.argsort(-sc.delta, axis=1)[:, :k]
    np.put_along_axis(mask, top, True, axis=1)
    return _set_from_mask(stats, mask, cfg.site, f"MEANDIFF-top{k}",
                          {"method": "mean_difference_topk", "k_per_layer": k, "position": stats.position})
