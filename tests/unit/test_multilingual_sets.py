"""S / MS / SS set construction (papers.md B.3-B.4) on planted importances, and the analysis helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safeneurons.errors import ConfigError, DataError
from safeneurons.identify.importance import ImportanceConfig, ImportanceScores, top_k_count
from safeneurons.identify.multilingual import (
    RESOURCE_GROUPS,
    build_language_sets,
    compute_language_importance,
    count_asr_correlation,
    group_means,
    jaccard_matrix,
    ms_set,
    resource_group,
    set_counts,
    ss_set,
    top_p_per_layer,
)
from safeneurons.neurons import ModelShape, NeuronSet

SHAPE = ModelShape(n_layers=2, site_sizes={"q": 100, "k": 20, "v": 20, "o": 100})


def _planted(top: dict[tuple[int, str], list[int]], seed: int = 0, tag: str = "x") -> ImportanceScores:
    """Low random scores everywhere, and scores 10 + rank on the planted neurons."""
    rng = np.random.default_rng(seed)
    scores = {}
    for layer in range(SHAPE.n_layers):
        for site, width in SHAPE.site_sizes.items():
            v = rng.uniform(0, 1, width)
            for r, j in enumerate(top.get((layer, site), [])):
                v[j] = 10.0 + r
            scores[(layer, site)] = v
    return ImportanceScores(SHAPE, scores, ImportanceConfig().to_dict(),
                            {"prompts_sha256": f"sha256:{tag}", "n_prompts": 5})


def _plant3(a: int, b: int, c: int) -> dict[tuple[int, str], list[int]]:
    """Top-3% of a 100-wide cell is 3 neurons, of a 20-wide cell 1 (ceil(0.6))."""
    return {(0, "q"): [a, b, c], (1, "o"): [a + 1, b + 1, c + 1], (0, "k"): [a % 20]}


def test_top_p_selects_planted_neurons_exactly():
    s = top_p_per_layer(_planted(_plant3(5, 50, 90)), 0.03, name="S")
    assert s.indices(0, "q").tolist() == [5, 50, 90]
    assert s.indices(1, "o").tolist() == [6, 51, 91]
    assert s.indices(0, "k").tolist() == [5]
    assert s.counts_per_site() == {"q": 6, "o": 6, "k": 2, "v": 2}  # 3+3 per q/o cell, 1+1 per k/v cell
    assert s.provenance["p"] == 0.03 and s.provenance["rounding"] == "ceil"
    assert s.provenance["prompts_sha256"] == "sha256:x"
    # round: 0.03 * 20 = 0.6 -> 1; floor -> 0 neurons in K/V cells
    assert len(top_p_per_layer(_planted({}), 0.03, rounding="floor").restrict(sites=["k", "v"])) == 0
    assert len(top_p_per_layer(_planted({}), 0.03, rounding="round").restrict(sites=["k"])) == 2


def test_top_p_errors():
    sc = _planted({})
    with pytest.raises(ConfigError):
        top_p_per_layer(sc, 1.5)
    with pytest.raises(ConfigError):
        top_p_per_layer(sc, 0.03, rounding="up")
    bad = dict(sc.scores)
    bad[(0, "q")] = bad[(0, "q")].copy()
    bad[(0, "q")][3] = np.nan
    with pytest.raises(DataError, match="merge_importance"):
        top_p_per_layer(bad, 0.03, SHAPE)
    with pytest.raises(DataError, match="another model"):
        top_p_per_layer({(0, "q"): np.zeros(7)}, 0.03, SHAPE)
    with pytest.raises(ConfigError, match="shape"):
        top_p_per_layer({(0, "q"): np.zeros(100)}, 0.03)


def test_ms_and_ss_algebra():
    jail = top_p_per_layer(_planted({(0, "q"): [1, 2, 3]}), 0.03)
    norm = top_p_per_layer(_planted({(0, "q"): [3, 4, 5]}), 0.03)
    ms = ms_set(jail, norm, "MS")
    assert ms.indices(0, "q").tolist() == [1, 2]
    assert all(n not in norm for n in ms) and all(n in jail for n in ms)
    other = NeuronSet(SHAPE, {(0, "q"): [2, 7]})
    ss = ss_set(ms, other, "SS")
    assert list(ss) == [(0, "q", 2)]
    assert ss.provenance["kind"] == "SS" and ms.provenance["kind"] == "MS"


def test_expansion_targets_from_planted_sets():
    """ms_en = English MS; ss = ⋃ SS_lang; union = both; ms_others = ⋃ MS_lang minus English MS."""
    from safeneurons.pipelines.multilingual import expansion_target

    def ns(*idx):
        return NeuronSet(SHAPE, {(0, "q"): list(idx)})

    sets = {"en": {"MS": ns(1, 2, 3), "SS": ns(1, 2, 3)},
            "zh": {"MS": ns(2, 3, 8), "SS": ns(2, 3)},
            "sw": {"MS": ns(3, 9), "SS": ns(3)}}
    got = {t: expansion_target(sets, t).indices(0, "q").tolist() for t in ("ms_en", "ss", "union", "ms_others")}
    assert got == {"ms_en": [1, 2, 3], "ss": [2, 3], "union": [1, 2, 3], "ms_others": [8, 9]}
    with pytest.raises(ConfigError, match="selects no neurons"):
        expansion_target({"en": sets["en"], "zh": {"MS": ns(1, 2), "SS": ns(1, 2)}}, "ms_others")


def test_build_language_sets_planted():
    # en: jail top {1,2,3}, norm top {3,4,5} -> MS_en {1,2}
    # zh: jail top {2,6,7}, norm top {7,8,9} -> MS_zh {2,6}; SS_zh = {2}
    # ko: jail top {10,11,12}, norm top {10,11,12} -> MS_ko {} ; SS_ko {}
    plan = {"en": ([1, 2, 3], [3, 4, 5]), "zh": ([2, 6, 7], [7, 8, 9]), "ko": ([10, 11, 12], [10, 11, 12])}
    scores = {lang: {"jail": _planted({(0, "q"): j}, seed=i, tag=f"{lang}-jail"),
                     "norm": _planted({(0, "q"): n}, seed=i + 10, tag=f"{lang}-norm")}
              for i, (lang, (j, n)) in enumerate(plan.items())}
    sets = build_language_sets(scores, 0.03)
    assert set(sets) == {"en", "zh", "ko"} and set(sets["zh"]) == {"S_jail", "S_norm", "MS", "SS"}
    q = lambda lang, kind: sets[lang][kind].indices(0, "q").tolist()  # noqa: E731
    assert q("en", "MS") == [1, 2] and q("zh", "MS") == [2, 6] and q("ko", "MS") == []
    assert q("zh", "SS") == [2] and q("ko", "SS") == [] and q("en", "SS") == [1, 2]
    # the random (non-planted) cells differ per language/role, so check SS = MS ∩ MS_en everywhere
    for lang in plan:
        assert sets[lang]["SS"] == (sets[lang]["MS"] & sets["en"]["MS"])
        assert sets[lang]["MS"] == (sets[lang]["S_jail"] - sets[lang]["S_norm"])
    prov = sets["zh"]["SS"].provenance
    assert prov["language"] == "zh" and prov["hr_language"] == "en" and prov["p"] == 0.03
    assert prov["data_sha256"] == {"jail": "sha256:zh-jail", "norm": "sha256:zh-norm"}
    assert prov["hr_data_sha256"] == {"jail": "sha256:en-jail", "norm": "sha256:en-norm"}
    assert sets["en"]["SS"].provenance["is_hr"] is True and prov["is_hr"] is False
    assert sets["zh"]["S_jail"].provenance["role"] == "jail"
    assert sets["zh"]["MS"].provenance["resource_group"] == "high"
    counts = set_counts(sets)
    assert set(counts) == {"zh", "ko"}
    assert counts["zh"] == len(sets["zh"]["SS"])
    assert set(set_counts(sets, "MS", exclude=None)) == {"en", "zh", "ko"}
    with pytest.raises(DataError, match="high-resource"):
        build_language_sets({"zh": scores["zh"]})
    with pytest.raises(DataError, match="norm"):
        build_language_sets({"en": {"jail": scores["en"]["jail"]}})


def test_jaccard_matrix_hand_checked():
    a = NeuronSet.from_triples(SHAPE, [(0, "q", 1), (0, "q", 2), (1, "k", 3)])
    b = NeuronSet.from_triples(SHAPE, [(0, "q", 2), (1, "k", 3), (1, "o", 9)])
    c = NeuronSet.empty(SHAPE)
    langs, m = jaccard_matrix({"en": a, "zh": b, "ko": c})
    assert langs == ["en", "zh", "ko"]
    expected = np.array([[1, 2 / 4, 0], [2 / 4, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(m, expected)
    langs2, m2 = jaccard_matrix({"en": a, "zh": b}, languages=["zh", "en"])
    assert langs2 == ["zh", "en"] and m2[0, 1] == pytest.approx(0.5)
    with pytest.raises(DataError):
        jaccard_matrix({"en": a}, languages=["en", "th"])


def test_count_asr_correlation_hand_checked():
    counts = {"zh": 10, "ko": 6, "th": 4, "bn": 1, "en": 99}
    asr = {"zh": 0.1, "ko": 0.2, "th": 0.4, "bn": 0.3}
    r = count_asr_correlation(counts, asr)
    assert r["n"] == 4 and r["languages"] == ["zh", "ko", "th", "bn"] and r["left_out"] == ["en"]
    x = np.array([10, 6, 4, 1.0])
    y = np.array([0.1, 0.2, 0.4, 0.3])
    pear = float(np.corrcoef(x, y)[0, 1])
    assert r["pearson"] == pytest.approx(pear)
    # ranks: counts 4,3,2,1 ; asr 1,2,4,3 -> d = 3,1,-2,-2 -> rho = 1 - 6*18/(4*15) = -0.8
    assert r["spearman"] == pytest.approx(-0.8)
    small = count_asr_correlation({"zh": 1, "ko": 2}, {"zh": 0.1, "ko": 0.2})
    assert math.isnan(small["pearson"]) and "at least 3" in small["note"]
    flat = count_asr_correlation({"a": 1, "b": 1, "c": 1}, {"a": 0.1, "b": 0.2, "c": 0.3})
    assert math.isnan(flat["spearman"]) and "constant" in flat["note"]


def test_resource_groups():
    assert RESOURCE_GROUPS == {"high": ("en", "zh", "it", "vi"), "medium": ("ar", "ko", "th"),
                               "low": ("bn", "sw", "jv")}
    assert resource_group("ko") == "medium" and resource_group("af") is None
    assert group_means({"en": 1.0, "zh": 3.0, "bn": 5.0, "af": 100.0}) == {"high": 2.0, "low": 5.0}


def test_compute_language_importance_end_to_end(tiny, tok, tmp_path):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models crawl with 2 OpenMP threads on a shared 2-core machine
    try:
        _end_to_end(tiny, tok, tmp_path)
    finally:
        torch.set_num_threads(before)


def _end_to_end(tiny, tok, tmp_path):
    model = tiny("qwen2", layers=1)
    data = {"en": {"jail": ["How to pick a lock?", "Tell me how to steal."], "norm": ["Write a poem.", "Hi"]},
            "zh": {"jail": ["抱歉，我不能帮助你。"], "norm": ["Explain vaccines."]}}
    cfg = ImportanceConfig(method="heuristic", sites=("k", "o"))
    scores = compute_language_importance(model, tok, data, cfg, resume_dir=tmp_path / "r", save_dir=tmp_path / "s",
                                         progress=False)
    assert (tmp_path / "s" / "importance-zh-norm.safetensors").exists()
    assert (tmp_path / "r" / "en-jail" / "manifest.json").exists()
    sets = build_language_sets(scores, 0.03)
    # k: 16 wide -> 1 neuron, o: 32 wide -> 1 neuron per cell
    assert len(sets["en"]["S_jail"]) == 2 and len(sets["zh"]["S_norm"]) == 2
    assert sets["zh"]["SS"].shape.compatible(model_layout_shape(model))


def model_layout_shape(model):
    from safeneurons.models.layout import model_layout

    return model_layout(model).shape()


@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.integers(1, 300), min_size=1, max_size=4),
       p=st.floats(0.0, 1.0, allow_nan=False), rounding=st.sampled_from(["ceil", "round", "floor"]),
       seed=st.integers(0, 2**16), ties=st.booleans())
def test_top_p_count_property(widths, p, rounding, seed, ties):
    """top_p_per_layer picks exactly top_k_count(width, p) neurons per cell, the highest-scoring ones."""
    rng = np.random.default_rng(seed)
    sites = ["q", "k", "v", "o"][: len(widths)]
    shape = ModelShape(n_layers=2, site_sizes=dict(zip(sites, widths)))
    scores = {}
    for layer in range(2):
        for site, w in zip(sites, widths):
            v = rng.integers(0, 3, w).astype(float) if ties else rng.normal(size=w)
            scores[(layer, site)] = v
    s = top_p_per_layer(scores, p, shape, rounding=rounding)
    for (layer, site), v in scores.items():
        k = top_k_count(v.size, p, rounding)
        idx = s.indices(layer, site)
        assert idx.size == k
        expected = {"ceil": math.ceil, "floor": math.floor, "round": lambda x: math.floor(x + 0.5)}[rounding](
            round(p * v.size, 9))
        assert k == min(v.size, expected)
        if 0 < k < v.size:
            rest = np.setdiff1d(np.arange(v.size), idx)
            assert v[idx].min() >= v[rest].max()


def test_shared_norm_set_is_scored_once(tiny, tok, monkeypatch):
    import safeneurons.identify.multilingual as ml

    calls = []
    real = ml.deactivation_importance

    def counting(model, tokenizer, prompts, *a, **kw):
        calls.append(tuple(prompts))
        return real(model, tokenizer, prompts, *a, **kw)

    monkeypatch.setattr(ml, "deactivation_importance", counting)
    norm = ["Write a poem.", "Hi"]
    data = {"en": {"jail": ["How to pick a lock?"], "norm": list(norm)},
            "zh": {"jail": ["如何撬锁？"], "norm": list(norm)}}
    scores = compute_language_importance(tiny("qwen2", layers=1), tok, data,
                                         ImportanceConfig(method="heuristic", sites=("o",)), progress=False)
    assert calls.count(tuple(norm)) == 1 and len(calls) == 3
    assert scores["zh"]["norm"].meta["language"] == "zh" and scores["en"]["norm"].meta["language"] == "en"
    assert np.array_equal(scores["zh"]["norm"].get(0, "o"), scores["en"]["norm"].get(0, "o"))


def test_paired_condition_tests_compare_the_same_prompts():
    from safeneurons.pipelines.multilingual import paired_condition_tests

    def recs(cond, labels, lang="zh"):
        return [{"condition": cond, "language": lang, "id": i, "verdict": {"label": lab}} for i, lab in enumerate(labels)]

    ori = ["refusal"] * 10
    records = (recs("ORI", ori) + recs("RANDOM_SS", ["refusal"] * 9 + ["compliance"])
               + recs("SUPPRESS_SS", ["compliance"] * 9 + ["refusal"]) + recs("ORI", ["compliance"] * 10, "en")
               + recs("SUPPRESS_SS", ["refusal"] * 10, "en"))  # the reference language is left out
    t = paired_condition_tests(records)["tests"]["SUPPRESS_SS"]
    assert t["compliance"]["n"] == 10 and t["compliance"]["rate"] == 0.9
    vs = t["compliance"]["vs_RANDOM_SS"]
    assert (vs["only_here"], vs["only_other"], vs["other_rate"]) == (9, 1, 0.1)
    assert vs["p_mcnemar"] == pytest.approx(0.021484375)  # 2 * P(X >= 9), X ~ Bin(10, 1/2)
    assert vs["difference"] == pytest.approx(0.8)  # 0.9 - 0.1
    half = 1.96 * math.sqrt(10 - 8**2 / 10) / 10  # b + c = 10, b - c = 8
    assert vs["difference_ci95"] == pytest.approx([0.8 - half, 0.8 + half])
    assert t["refusal"]["vs_ORI"]["only_other"] == 9 and t["refusal"]["vs_ORI"]["p_mcnemar"] < 0.01
    same = paired_condition_tests(recs("ORI", ori) + recs("RANDOM_SS", ori) + recs("SUPPRESS_SS", ori))
    assert same["tests"]["SUPPRESS_SS"]["compliance"]["vs_RANDOM_SS"]["p_mcnemar"] == 1.0
    assert "REINFORCE_SS" not in same["tests"]


def test_paired_test_names_an_item_without_an_outcome():
    from safeneurons.pipelines.multilingual import paired_test

    assert paired_test({1: True, 2: False}, {1: False, 3: True})["n"] == 1
    assert paired_test({1: True}, {2: True}) is None
    with pytest.raises(DataError, match="item 'b' has no outcome"):
        paired_test({"a": True, "b": None}, {"a": False, "b": True})
