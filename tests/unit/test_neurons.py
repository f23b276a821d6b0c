import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safeneurons.errors import DataError, NeuronSetMismatchError
from safeneurons.neurons import ModelShape, NeuronSet

SHAPE = ModelShape(n_layers=3, site_sizes={"mlp": 16, "q": 8, "k": 4, "v": 4, "o": 8},
                   params_per_neuron={"mlp": 30, "q": 10, "k": 10, "v": 10, "o": 10}, total_params=10_000,
                   model_name="toy", model_checksum="sha256:abc")

triple = st.sampled_from(["mlp", "q", "k", "v", "o"]).flatmap(
    lambda s: st.tuples(st.integers(0, 2), st.just(s), st.integers(0, SHAPE.site_sizes[s] - 1)))
sets = st.lists(triple, max_size=40).map(lambda ts: NeuronSet.from_triples(SHAPE, ts, name="x"))


def as_py(ns):
    return set(ns)


@given(sets, sets)
def test_algebra_matches_python_sets(a, b):
    assert as_py(a | b) == as_py(a) | as_py(b)
    assert as_py(a & b) == as_py(a) & as_py(b)
    assert as_py(a - b) == as_py(a) - as_py(b)
    assert len(a | b) == len(a) + len(b) - len(a & b)


@given(sets, sets, sets)
def test_set_laws(a, b, c):
    assert (a | b) == (b | a) and (a & b) == (b & a)
    assert ((a | b) | c) == (a | (b | c))
    assert (a & (b | c)) == ((a & b) | (a & c))
    assert (a - b) & b == NeuronSet.empty(SHAPE)
    assert (a | a) == a and (a & a) == a


@given(sets)
@settings(max_examples=50)
def test_json_round_trip(a):
    b = NeuronSet.from_dict(json.loads(json.dumps(a.to_dict())))
    assert a == b and b.shape == SHAPE


@given(sets, st.integers(0, 1000))
@settings(max_examples=50)
def test_random_matched_same_cell_counts(a, seed):
    r = a.random_matched(seed=seed)
    assert {k: v.size for k, v in r.groups().items()} == {k: v.size for k, v in a.groups().items()}
    assert r == a.random_matched(seed=seed)
    for (layer, site), idx in a.groups().items():
        if SHAPE.site_sizes[site] - idx.size >= idx.size:  # room to avoid the original neurons
            assert not np.intersect1d(idx, r.indices(layer, site)).size


def test_counts_and_fractions():
    ns = NeuronSet.from_triples(SHAPE, [(0, "mlp", 1), (0, "mlp", 2), (2, "q", 0)])
    assert ns.counts_per_layer() == {0: 2, 1: 0, 2: 1}
    assert ns.counts_per_site() == {"mlp": 2, "q": 1}
    assert ns.fraction_of_neurons(["mlp"]) == 2 / 48
    assert ns.n_params() == 2 * 30 + 10
    assert ns.fraction_of_parameters() == pytest.approx(70 / 10_000)
    assert (1, "mlp", 1) not in ns and (0, "mlp", 2) in ns


def test_out_of_range_and_unknown_site():
    with pytest.raises(NeuronSetMismatchError, match="layer 5"):
        NeuronSet.from_triples(SHAPE, [(5, "mlp", 0)])
    with pytest.raises(NeuronSetMismatchError, match="out of range 0..15"):
        NeuronSet.from_triples(SHAPE, [(0, "mlp", 16)])
    with pytest.raises(NeuronSetMismatchError, match="site 'x'"):
        NeuronSet.from_triples(SHAPE, [(0, "x", 0)])


def test_load_checks_model(tmp_path):
    ns = NeuronSet.from_triples(SHAPE, [(0, "mlp", 1)], name="FULL", provenance={"method": "t"})
    path = tmp_path / "n.json"
    ns.save(path)
    saved = json.loads(path.read_text())
    assert saved["provenance"]["method"] == "t" and "safeneurons_version" in saved["provenance"]
    other = ModelShape(n_layers=4, site_sizes=SHAPE.site_sizes, model_name="big")
    with pytest.raises(NeuronSetMismatchError, match="3-layer model.*has 4 layers"):
        NeuronSet.load(path, shape=other)
    wider = ModelShape(n_layers=3, site_sizes={**SHAPE.site_sizes, "mlp": 32})
    with pytest.raises(NeuronSetMismatchError, match="site 'mlp'"):
        NeuronSet.load(path, shape=wider)
    assert NeuronSet.load(path, shape=SHAPE) == ns


def test_load_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        NeuronSet.load(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a safeneurons neuron set"):
        NeuronSet.load(bad)
    with pytest.raises(DataError, match="does not exist"):
        NeuronSet.load(tmp_path / "missing.json")


def test_incompatible_algebra():
    other = ModelShape(n_layers=2, site_sizes={"mlp": 16})
    with pytest.raises(NeuronSetMismatchError, match="different model shapes"):
        NeuronSet.empty(SHAPE, "a") | NeuronSet.empty(other, "b")
