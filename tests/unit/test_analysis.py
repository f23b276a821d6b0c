import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safeneurons.errors import DataError
from safeneurons.identify.analysis import category_decomposition, normalised_layer_profile, overlap_curve, pairwise_overlap
from safeneurons.neurons import ModelShape, NeuronSet

SHAPE = ModelShape(n_layers=5, site_sizes={"mlp": 20})


def ns(name, triples):
    return NeuronSet.from_triples(SHAPE, [(l, "mlp", i) for l, i in triples], name=name)


def test_decomposition_hand_checked():
    a = ns("a", [(0, 1), (1, 2), (2, 3)])
    b = ns("b", [(0, 1), (1, 2), (3, 4)])
    c = ns("c", [(0, 1), (4, 5)])
    d = category_decomposition({"a": a, "b": b, "c": c})
    assert (d["core"], d["shared"], d["specific"], d["union"]) == (1, 1, 3, 5)
    assert d["specific_per_category"] == {"a": 1, "b": 1, "c": 1}
    assert set(d["core_set"]) == {(0, "mlp", 1)}
    with pytest.raises(DataError, match="at least 2"):
        category_decomposition({"a": a})


def test_overlap_curve_all_subsets():
    a = ns("a", [(0, 1), (1, 2)])
    b = ns("b", [(0, 1), (2, 3)])
    c = ns("c", [(0, 1)])
    curve = overlap_curve({"a": a, "b": b, "c": c})
    assert [r["K"] for r in curve] == [1, 2, 3] and curve[1]["n_subsets"] == 3
    assert curve[0]["mean"] == 1.0
    assert math.isclose(curve[1]["mean"], (1 / 3 + 1 / 2 + 1 / 2) / 3)
    assert math.isclose(curve[2]["mean"], 1 / 3)


@given(st.lists(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 19)), max_size=15), min_size=2, max_size=5))
@settings(max_examples=40, deadline=None)
def test_overlap_is_monotone_in_k_and_parts_partition_union(raw):
    sets = {f"c{i}": ns(f"c{i}", t) for i, t in enumerate(raw)}
    d = category_decomposition(sets)
    assert d["core"] + d["shared"] + d["specific"] == d["union"]
    curve = overlap_curve(sets)
    full = curve[-1]["mean"]
    assert all(r["min"] >= full - 1e-12 for r in curve)  # the all-category overlap is the smallest


def test_layer_profile_and_pairwise():
    a = ns("a", [(0, 1), (4, 2), (4, 3)])
    prof = normalised_layer_profile(a, bins=4)
    assert prof["per_layer"] == [1, 0, 0, 0, 2] and prof["per_depth_bin"] == [1, 0, 0, 2]
    po = pairwise_overlap({"a": a, "b": ns("b", [(4, 2)])})
    assert po["intersection"][0][1] == 1 and math.isclose(po["jaccard"][0][1], 1 / 3)
