"""Agreement between judges and against gold labels (Cohen's kappa by hand; no scikit-learn)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safeneurons.errors import DataError
from safeneurons.evaluate.agreement import (
    agreement_report,
    cohen_kappa,
    compare_to_gold,
    confusion_matrix,
    precision_recall_f1,
)
from safeneurons.evaluate.judges import Verdict


def test_kappa_by_hand():
    # 2x2 table: a=yes,b=yes 20; yes,no 5; no,yes 10; no,no 15 (n=50)
    # po = 35/50 = 0.7; pa(yes)=25/50, pb(yes)=30/50 -> pe = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_three_classes_by_hand():
    a = ["r", "r", "c", "c", "d", "r"]
    b = ["r", "c", "c", "c", "d", "d"]
    # po = 4/6; marginals a: r 3, c 2, d 1; b: r 1, c 3, d 2 -> pe = (3*1 + 2*3 + 1*2)/36 = 11/36
    po, pe = 4 / 6, 11 / 36
    assert cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))


def test_kappa_edges():
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # p_e = 1: undefined
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    with pytest.raises(DataError, match="same items"):
        cohen_kappa(["a"], ["a", "b"])


@given(st.lists(st.tuples(st.sampled_from("rcd"), st.sampled_from("rcd")), min_size=1, max_size=60))
@settings(max_examples=200, deadline=None)
def test_kappa_properties(pairs):
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    k = cohen_kappa(a, b)
    if k is not None:
        assert -1.0 - 1e-9 <= k <= 1.0 + 1e-9
        assert k == pytest.approx(cohen_kappa(b, a))  # symmetric
    if a == b and k is not None:
        assert k == pytest.approx(1.0)


def test_kappa_matches_sklearn_when_available():
    sk = pytest.importorskip("sklearn.metrics")
    a = ["r", "c", "c", "d", "r", "r", "c", "d", "d", "c", "r", "c"]
    b = ["r", "c", "r", "d", "r", "c", "c", "c", "d", "c", "d", "c"]
    assert cohen_kappa(a, b) == pytest.approx(sk.cohen_kappa_score(a, b))


def _v(label):
    return Verdict.of(label, reason="", judge="t")


def test_agreement_report():
    a = [_v(x) for x in ["refusal", "refusal", "compliance", "degenerate", "unjudged", "compliance"]]
    b = ["refusal", "compliance", "compliance", "refusal", "refusal", {"label": "compliance"}]
    r = agreement_report(a, b)
    assert r["n"] == 5 and r["n_dropped_unjudged"] == 1
    assert r["labels"]["percent_agreement"] == pytest.approx(60.0)
    assert r["labels"]["confusion"]["degenerate"]["refusal"] == 1
    # binary: a harmful = [F, F, T, F, T], b = [F, T, T, F, T] -> 4/5 agree
    assert r["harmful"]["percent_agreement"] == pytest.approx(80.0)
    assert r["harmful"]["confusion"]["not_harmful"]["harmful"] == 1
    assert r["harmful"]["kappa"] == pytest.approx(cohen_kappa([0, 0, 1, 0, 1], [0, 1, 1, 0, 1]))
    with pytest.raises(DataError):
        agreement_report(["refusal"], ["nonsense"])


def test_precision_recall_f1():
    m = precision_recall_f1([True, True, False, False, True], [True, False, True, False, True])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    empty = precision_recall_f1([False], [False])
    assert empty["precision"] is None and empty["recall"] is None and empty["f1"] is None


def test_compare_to_gold():
    gold = ["refusal", "refusal", "refusal", "compliance", "compliance", "degenerate", "compliance"]
    pred = [
        _v(x) for x in ["refusal", "compliance", "refusal", "compliance", "refusal", "degenerate", "unjudged"]
    ]
    r = compare_to_gold(pred, gold)
    assert r["n"] == 6 and r["n_unjudged"] == 1 and r["coverage"] == pytest.approx(6 / 7)
    assert r["refusal"]["precision"] == pytest.approx(2 / 3) and r["refusal"]["recall"] == pytest.approx(
        2 / 3
    )
    assert r["harmful"]["precision"] == pytest.approx(1 / 2) and r["harmful"]["recall"] == pytest.approx(
        1 / 2
    )
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion_gold_by_predicted"]["compliance"]["unjudged"] == 1
    assert r["kappa_labels"] == pytest.approx(
        cohen_kappa([v.label for v in pred[:6]], gold[:6], ["refusal", "compliance", "degenerate"])
    )
    with pytest.raises(DataError, match="gold"):
        compare_to_gold(["refusal"], ["unjudged"])


def test_confusion_matrix_rejects_unknown_label():
    assert confusion_matrix(["a"], ["b"], ["a", "b"]) == {"a": {"a": 0, "b": 1}, "b": {"a": 0, "b": 0}}
    with pytest.raises(DataError, match="'z'"):
        confusion_matrix(["z"], ["a"], ["a", "b"])
