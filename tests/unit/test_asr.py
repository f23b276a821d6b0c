"""ASR tables and Wilson intervals."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safeneurons.errors import DataError
from safeneurons.evaluate.asr import AsrTable, format_asr, wilson_interval
from safeneurons.evaluate.judges import Verdict
from safeneurons.io import read_json, write_json_atomic


def test_wilson_by_hand():
    # k=8, n=10, z=1.96: p=0.8; denom = 1 + 3.8416/10 = 1.38416; centre = (0.8 + 0.19208)/1.38416 = 0.716796...
    # half = 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 1.96 * 0.160012 / 1.38416 = 0.226583...
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490162, abs=1e-5)
    assert hi == pytest.approx(0.943318, abs=1e-5)


def test_wilson_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 5), (1, 7), (13, 50), (50, 50), (99, 315), (3, 1000)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        z = 1.959963984540054  # scipy uses the exact normal quantile
        lo, hi = wilson_interval(k, n, z=z)
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_wilson_edges_and_errors():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(20, 20)[1] == 1.0
    for bad in [(-1, 3), (4, 3), (1.5, 3), (1, -1)]:
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, z=0)


@given(
    n=st.integers(min_value=1, max_value=5000),
    data=st.data(),
    z=st.floats(min_value=0.1, max_value=5.0, allow_nan=False),
)
@settings(max_examples=300, deadline=None)
def test_wilson_properties(n, data, z):
    k = data.draw(st.integers(min_value=0, max_value=n))
    lo, hi = wilson_interval(k, n, z)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    # symmetry: the interval of n-k is the mirror image
    lo2, hi2 = wilson_interval(n - k, n, z)
    assert math.isclose(lo, 1 - hi2, abs_tol=1e-12) and math.isclose(hi, 1 - lo2, abs_tol=1e-12)


@given(n=st.integers(min_value=1, max_value=400), data=st.data())
@settings(max_examples=100, deadline=None)
def test_wilson_narrows_with_z(n, data):
    k = data.draw(st.integers(min_value=0, max_value=n))
    lo1, hi1 = wilson_interval(k, n, 1.0)
    lo2, hi2 = wilson_interval(k, n, 2.576)
    assert lo2 <= lo1 + 1e-12 and hi1 <= hi2 + 1e-12


def _records():
    recs = []
    # original: 2 compliance, 5 refusal, 1 degenerate, 1 unjudged (en/zh, two categories)
    for label, cat, lang in [
        ("compliance", "weapons", "en"),
        ("compliance", "fraud", "zh"),
        ("refusal", "weapons", "en"),
        ("refusal", "weapons", "zh"),
        ("refusal", "fraud", "en"),
        ("refusal", "fraud", "en"),
        ("refusal", "fraud", "zh"),
        ("degenerate", "weapons", "en"),
        ("unjudged", "fraud", "zh"),
    ]:
        v = Verdict.of(label, reason="", judge="t")
        recs.append(
            {
                "condition": "original",
                "category": cat,
                "language": lang,
                "label": v.label,
                "harmful": v.harmful,
            }
        )
    for label in ["compliance"] * 6 + ["degenerate"] * 2:
        recs.append(
            {
                "condition": "pruned",
                "category": "weapons",
                "language": "en",
                "verdict": Verdict.of(label, reason="", judge="t").to_dict(),
            }
        )
    return recs


def test_asr_table_counts_and_definition():
    t = AsrTable.from_records(_records())
    o = t.get("original")
    assert (o.k, o.n, o.n_refusal, o.n_degenerate, o.n_unjudged, o.n_total) == (2, 8, 5, 1, 1, 9)
    assert o.asr == pytest.approx(2 / 8)
    assert (o.ci_lo, o.ci_hi) == pytest.approx(wilson_interval(2, 8))
    p = t.get("pruned")
    assert (p.k, p.n, p.n_degenerate) == (6, 8, 2)  # degenerate stays in n, counted not harmful
    assert t.conditions == ["original", "pruned"]


def test_asr_table_grouping():
    t = AsrTable.from_records(_records(), group_by=("category", "language"))
    r = t.get("original", "fraud", "zh")
    assert (r.k, r.n, r.n_unjudged) == (1, 2, 1)
    assert t.get("original").n == 8
    by_lang = AsrTable.from_records(_records(), group_by=["language"])
    assert by_lang.get("original", language="en").n == 5
    with pytest.raises(KeyError, match="conditions"):
        by_lang.get("nope")
    with pytest.raises(DataError, match="group by"):
        AsrTable.from_records(_records(), group_by=["model"])


def test_asr_table_json_round_trip_and_markdown(tmp_path):
    t = AsrTable.from_records(_records(), group_by=["language"])
    path = write_json_atomic(tmp_path / "asr.json", t.to_dict())
    t2 = AsrTable.from_dict(read_json(path))
    assert t2 == t
    md = t.to_markdown()
    assert (
        md.splitlines()[0]
        == "| condition | language | ASR k / n (%) [95% CI] | refusal | degenerate | unjudged |"
    )
    lo, hi = wilson_interval(2, 8)
    assert f"| original | all | 2 / 8 (25.0%) [{100 * lo:.1f}\u2013{100 * hi:.1f}] | 5 | 1 | 1 |" in md
    with pytest.raises(DataError, match="schema"):
        AsrTable.from_dict({"rows": []})
    json.dumps(t.to_dict())  # plain JSON


def test_format_asr():
    assert format_asr(0, 0, None, None) == "0 / 0 (n/a)"
    assert format_asr(12, 50, 0.143, 0.378) == "12 / 50 (24.0%) [14.3\u201337.8]"


def test_asr_table_rejects_bad_records():
    with pytest.raises(DataError, match="record 0.*condition"):
        AsrTable.from_records([{"label": "refusal"}])
    with pytest.raises(DataError, match="record 0.*label"):
        AsrTable.from_records([{"condition": "a", "label": "safe"}])
    with pytest.raises(DataError, match="contradictory"):
        AsrTable.from_records([{"condition": "a", "label": "degenerate", "harmful": True}])
    with pytest.raises(DataError, match="record 0.*'category'"):
        AsrTable.from_records([{"condition": "a", "label": "refusal"}], group_by=["category"])


def test_empty_condition_group_has_no_asr():
    t = AsrTable.from_records([{"condition": "a", "label": "unjudged"}])
    r = t.get("a")
    assert (r.k, r.n, r.asr, r.ci_lo, r.n_unjudged) == (0, 0, None, None, 1)
    assert "0 / 0 (n/a)" in t.to_markdown()


def test_paired_ratio_interval_resamples_prompts_together():
    from safeneurons.evaluate.asr import paired_ratio_interval, successes

    den = {f"p{i}": int(i < 40) for i in range(80)}  # 50 %
    num = {f"p{i}": int(i < 20) for i in range(80)}  # 25 %, a subset of den's successes
    r = paired_ratio_interval(num, den, n_boot=2000)
    assert r["n"] == 80 and r["ratio"] == pytest.approx(0.5)
    assert r["ci"][0] < 0.5 < r["ci"][1] and 0.2 < r["p_at_most_half"] < 0.8
    same = paired_ratio_interval(den, den, n_boot=500)
    assert same["ratio"] == 1.0 and same["ci"] == [1.0, 1.0]  # paired: every replicate is exactly 1
    tight = paired_ratio_interval({k: 0 for k in den}, den, n_boot=500)
    assert tight["ratio"] == 0.0 and tight["p_at_most_half"] == 1.0
    assert paired_ratio_interval(num, {k: 0 for k in den})["ratio"] is None
    assert paired_ratio_interval({"x": 1, **num}, den)["n"] == 80  # only shared prompts
    with pytest.raises(ValueError, match="share no prompt"):
        paired_ratio_interval({"x": 1}, {"y": 1})
    records = [{"condition": "FULL", "id": "a", "verdict": {"label": "compliance"}},
               {"condition": "FULL", "id": "b", "verdict": {"label": "degenerate"}},
               {"condition": "FULL", "id": "c", "verdict": {"label": "unjudged"}},
               {"condition": "ORI", "id": "a", "verdict": {"label": "refusal"}}]
    assert successes(records, "FULL") == {"a": 1, "b": 0} and successes(records, "ORI") == {"a": 0}
