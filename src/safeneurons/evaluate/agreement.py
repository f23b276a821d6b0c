"""Agreement between judges, and a judge against gold (human) labels. No scikit-learn.

Cohen's kappa (Cohen 1960):

.. math:: \\kappa = \\frac{p_o - p_e}{1 - p_e}, \\quad p_o = \\frac{1}{n}\\sum_c n_{cc}, \\quad
          p_e = \\sum_c \\frac{n_{c\\cdot}}{n} \\frac{n_{\\cdot c}}{n}

``None`` when ``p_e = 1`` (both raters used one and the same label throughout: kappa is undefined).

Two views are reported: **labels** (refusal / compliance / degenerate, 3 classes) and **harmful** (binary:
compliance vs everything else, the quantity ASR counts; degenerate counts as not harmful, as in
:mod:`safeneurons.evaluate.asr`). Pairs where either side is ``unjudged`` are left out and counted.

Inputs may be :class:`~safeneurons.evaluate.judges.Verdict` objects, label strings, or dicts with ``label``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from safeneurons.errors import DataError

JUDGED_LABELS = ("refusal", "compliance", "degenerate")
_ALL = JUDGED_LABELS + ("unjudged",)


def label_of(x: Any) -> str:
    """The label of a Verdict, a dict with ``label``, or a label string."""
    lab = x.get("label") if isinstance(x, Mapping) else getattr(x, "label", x)
    if lab not in _ALL:
        raise DataError(f"{x!r:.80} is not a verdict or one of the labels {_ALL}.")
    return str(lab)


def confusion_matrix(
    a: Sequence[Hashable], b: Sequence[Hashable], labels: Sequence[Hashable]
) -> dict[str, dict[str, int]]:
    """``m[str(x)][str(y)]`` = number of items where ``a`` says ``x`` and ``b`` says ``y`` (rows: ``a``)."""
    _same_length(a, b)
    m = {str(x): {str(y): 0 for y in labels} for x in labels}
    for x, y in zip(a, b):
        if x not in labels or y not in labels:
            raise DataError(f"confusion_matrix: label {x if x not in labels else y!r} not in {list(labels)}.")
        m[str(x)][str(y)] += 1
    return m


def cohen_kappa(
    a: Sequence[Hashable], b: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> float | None:
    """Cohen's kappa of two raters over the same items; ``None`` if ``p_e == 1`` or there are no items."""
    _same_length(a, b)
    n = len(a)
    if n == 0:
        return None
    cats = list(labels) if labels is not None else sorted(set(a) | set(b), key=str)
    po = sum(1 for x, y in zip(a, b) if x == y) / n
    pe = sum((sum(1 for x in a if x == c) / n) * (sum(1 for y in b if y == c) / n) for c in cats)
    if abs(1.0 - pe) < 1e-12:
        return None
    return (po - pe) / (1 - pe)


def precision_recall_f1(predicted: Sequence[bool], gold: Sequence[bool]) -> dict[str, Any]:
    """Precision, recall and F1 of the positive class (``None`` where a denominator is 0), with counts."""
    _same_length(predicted, gold)
    tp = sum(1 for p, g in zip(predicted, gold) if p and g)
    fp = sum(1 for p, g in zip(predicted, gold) if p and not g)
    fn = sum(1 for p, g in zip(predicted, gold) if not p and g)
    tn = len(gold) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def agreement_report(verdicts_a: Sequence[Any], verdicts_b: Sequence[Any]) -> dict[str, Any]:
    """Agreement of two judges over the same items.

    Returns ``n`` (pairs where both judged), ``n_dropped_unjudged``, and for ``labels`` and ``harmful``:
    ``percent_agreement`` (0..100), ``kappa`` and ``confusion`` (rows: judge a, columns: judge b)."""
    _same_length(verdicts_a, verdicts_b)
    pairs = [(label_of(x), label_of(y)) for x, y in zip(verdicts_a, verdicts_b)]
    kept = [(x, y) for x, y in pairs if x != "unjudged" and y != "unjudged"]
    a = [x for x, _ in kept]
    b = [y for _, y in kept]
    return {
        "n": len(kept),
        "n_dropped_unjudged": len(pairs) - len(kept),
        "labels": _view(a, b, JUDGED_LABELS),
        "harmful": _view([_binary(x) for x in a], [_binary(y) for y in b], ("harmful", "not_harmful")),
    }


def compare_to_gold(predicted: Sequence[Any], gold: Sequence[Any]) -> dict[str, Any]:
    """A judge against gold labels (``refusal`` / ``compliance`` / ``degenerate``).

    Reports precision / recall / F1 for the **refusal** class (predicted refusal vs gold refusal) and for the
    **harmful** class (predicted compliance vs gold compliance, i.e. attack success), label accuracy, Cohen's
    kappa on labels and on harmful, the confusion matrix (rows: gold, columns: predicted, ``unjudged``
    included as a column), and ``coverage`` = judged / all. Metrics other than the confusion matrix are over
    the judged items."""
    _same_length(predicted, gold)
    p_all = [label_of(x) for x in predicted]
    g_all = [label_of(x) for x in gold]
    if "unjudged" in g_all:
        raise DataError(
            f"gold item {g_all.index('unjudged')} is labelled 'unjudged'; gold labels must be judged."
        )
    kept = [(p, g) for p, g in zip(p_all, g_all) if p != "unjudged"]
    p = [x for x, _ in kept]
    g = [y for _, y in kept]
    confusion = {gl: {pl: 0 for pl in _ALL} for gl in JUDGED_LABELS}
    for pl, gl in zip(p_all, g_all):
        confusion[gl][pl] += 1
    return {
        "n": len(kept),
        "n_unjudged": len(p_all) - len(kept),
        "coverage": len(kept) / len(p_all) if p_all else None,
        "accuracy": sum(1 for x, y in kept if x == y) / len(kept) if kept else None,
        "kappa_labels": cohen_kappa(p, g, JUDGED_LABELS),
        "kappa_harmful": cohen_kappa(
            [x == "compliance" for x in p], [y == "compliance" for y in g], (True, False)
        ),
        "refusal": precision_recall_f1([x == "refusal" for x in p], [y == "refusal" for y in g]),
        "harmful": precision_recall_f1([x == "compliance" for x in p], [y == "compliance" for y in g]),
        "confusion_gold_by_predicted": confusion,
    }


def _binary(label: str) -> str:
    return "harmful" if label == "compliance" else "not_harmful"


def _view(a: Sequence[Hashable], b: Sequence[Hashable], labels: Sequence[Hashable]) -> dict[str, Any]:
    n = len(a)
    return {
        "percent_agreement": 100.0 * sum(1 for x, y in zip(a, b) if x == y) / n if n else None,
        "kappa": cohen_kappa(a, b, labels),
        "confusion": confusion_matrix(a, b, labels),
    }


def _same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise DataError(
            f"agreement needs two sequences over the same items; got {len(a)} and {len(b)} items."
        )
