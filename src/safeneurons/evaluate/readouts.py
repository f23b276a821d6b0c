"""Linear readouts of feature vectors: the standardised L2 logistic readout the monitor uses, and the
residual-stream probe whose layer is chosen on a validation part.

**Readout.** Features ``x`` are standardised with the training rows' mean ``μ`` and standard deviation ``σ``
(``σ = 1`` for a feature that does not vary), ``z = (x - μ) / σ``, and scored
``p = σ(w·z + b)`` with ``(w, b)`` the class-balanced, L2-penalised logistic fit of
:func:`safeneurons.evaluate.judges.guard.fit_logistic` (the bias not penalised; see
:mod:`safeneurons.evaluate.monitor` for why this readout). The monitor (:class:`~safeneurons.evaluate.monitor.Monitor`)
is this readout over a neuron set's activations; the residual probe is the same readout over the residual
stream of one layer, the standard linear-probe baseline.

**Probe layer.** :func:`fit_probe` fits one readout per layer on the training rows and keeps the layer with the
largest AUROC on the *validation* rows (ties: the earliest layer). Nothing else enters the choice, so data
scored later cannot move it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from safeneurons.errors import DataError
from safeneurons.evaluate.roc import roc_auc


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` of the rows of ``x``: the column means and standard deviations, a scale of 1 where a
    column does not vary (``sd ≤ 1e-12 · max(1, |mean|)``)."""
    mean = x.mean(0)
    sd = x.std(0)
    scale = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(mean)), sd, 1.0)
    return mean, scale


@dataclass(frozen=True)
class LinearReadout:
    """``score(x) = σ(w·(x - mean)/scale + b)`` for feature rows ``x``."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``w·z + b``, rounded to 1e-9: a matrix product may sum two identical rows in different orders (BLAS
        blocks), and rows with the same features must tie exactly (a zeroed set scores every prompt alike, AUROC
        0.5), not be ordered by float noise."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.weight.size:
            raise DataError(f"the readout reads {self.weight.size} features; got rows of shape {x.shape}.")
        return np.round(((x - self.mean) / self.scale) @ self.weight + self.bias, 9)

    def scores(self, x: np.ndarray) -> np.ndarray:
        from scipy.special import expit

        return expit(self.logits(x))


def fit_readout(x: np.ndarray, y: np.ndarray, l2: float) -> LinearReadout:
    """Fit the readout on rows ``x`` with boolean labels ``y`` (True: harmful); needs both labels."""
    from safeneurons.evaluate.judges.guard import balanced_weights, fit_logistic

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=bool)
    if x.ndim != 2 or x.shape[0] != y.size:
        raise DataError(f"fit_readout: {x.shape[0] if x.ndim else 0} feature rows for {y.size} labels.")
    if y.all() or not y.any():
        raise DataError("fit_readout: the training rows hold one label only; both groups are needed.")
    mean, scale = standardiser(x)
    weight, bias = fit_logistic((x - mean) / scale, y, l2, sample_weight=balanced_weights(y))
    return LinearReadout(mean, scale, weight, bias)


@dataclass(frozen=True)
class ProbeFit:
    """The residual probe: the chosen ``layer`` (0-based decoder layer whose output it reads), its readout and
    every layer's validation AUROC (the choice's whole evidence)."""

    layer: int
    readout: LinearReadout
    validation_auroc: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "validation_auroc": [round(a, 6) for a in self.validation_auroc]}


def fit_probe(train: np.ndarray, y_train: np.ndarray, validation: np.ndarray, y_validation: np.ndarray,
              l2: float) -> ProbeFit:
    """A readout per layer of ``train`` (``[n, layers, width]``), fitted on the training rows; the layer whose
    readout has the largest AUROC on ``validation`` (ties: the earliest) is kept."""
    train, validation = np.asarray(train), np.asarray(validation)
    yv = np.asarray(y_validation, dtype=bool)
    if train.ndim != 3 or validation.ndim != 3 or train.shape[1:] != validation.shape[1:]:
        raise DataError(f"fit_probe: expected [n, layers, width] rows for both parts, got {train.shape} and "
                        f"{validation.shape}.")
    if yv.all() or not yv.any():
        raise DataError("fit_probe: the validation rows hold one label only; the layer cannot be chosen.")
    readouts, aucs = [], []
    for layer in range(train.shape[1]):
        r = fit_readout(train[:, layer], y_train, l2)
        s = r.scores(validation[:, layer])
        readouts.append(r)
        aucs.append(roc_auc(s[yv], s[~yv]))
    best = int(np.argmax(aucs))  # argmax keeps the first of equal values
    return ProbeFit(best, readouts[best], aucs)


__all__ = ["LinearReadout", "ProbeFit", "fit_probe", "fit_readout", "standardiser"]
