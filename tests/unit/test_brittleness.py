"""The brittleness curve (issue 36): the ranking and the attack sets cut from it (pure functions, property
tests), and the pipeline end to end on a tiny random model (plumbing, resuming, exclusion, outputs)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from safeneurons.errors import ConfigError, DataError
from safeneurons.identify import SafeNeuronConfig, identify
from safeneurons.identify.ranking import (
    count_for_fraction,
    iterative_masks,
    mask_to_set,
    matched_random,
    one_shot_masks,
    ranking_score,
    safeneuron_ranking,
    step_targets,
)
from safeneurons.neurons import ModelShape, NeuronSet
from safeneurons.stats import ActivationStats, RunningMoments

# -- synthetic statistics -------------------------------------------------------------------------------------


def stats_from(delta: np.ndarray, var_h: np.ndarray | None = None, var_s: np.ndarray | None = None,
               n: int = 100) -> ActivationStats:
    """Statistics with harmful means ``delta`` and benign means 0 (so the mean shift is ``delta``), unit
    variances unless given."""
    L, N = delta.shape
    var_h = np.ones_like(delta) if var_h is None else var_h
    var_s = np.ones_like(delta) if var_s is None else var_s
    moments = {}
    for group, mean, var in (("harmful", delta, var_h), ("harmless", np.zeros_like(delta), var_s)):
        moments[group] = {(layer, "mlp"): RunningMoments(N, n=n, mean=torch.tensor(mean[layer], dtype=torch.float64),
                                                         m2=torch.tensor(var[layer] * (n - 1), dtype=torch.float64))
                          for layer in range(L)}
    return ActivationStats(ModelShape(L, {"mlp": N}), "last", moments)


# -- the ranking score ----------------------------------------------------------------------------------------


@given(seed=st.integers(0, 10_000), tau_es=st.floats(0.3, 4), tau_sas=st.floats(0.3, 4),
       statistic=st.sampled_from(["d", "t"]))
def test_the_top_of_the_ranking_is_the_identified_set(seed, tau_es, tau_sas, statistic):
    """FULL = {r > 1}: the |FULL| best neurons of the ranking are exactly ES ∪ SAS, for any thresholds (a
    raw max(d, z) fails this whenever τ_ES ≠ τ_SAS)."""
    rng = np.random.default_rng(seed)
    delta = rng.normal(0, 1, (3, 40)) * rng.choice([0.2, 3.0], (3, 40), p=[0.85, 0.15])
    stats = stats_from(delta, var_h=rng.uniform(0.5, 2, (3, 40)), var_s=rng.uniform(0.5, 2, (3, 40)))
    cfg = SafeNeuronConfig(tau_es=tau_es, tau_sas=tau_sas, statistic=statistic)
    full = identify(stats, "safeneuron", cfg, allow_empty=True)["FULL"]
    score = safeneuron_ranking(stats, cfg)
    assume(np.all(np.abs(score - 1) > 1e-9))  # no neuron exactly on the threshold
    top = one_shot_masks(score, [len(full)])[0]
    assert set(mask_to_set(stats.shape, "mlp", top)) == set(full)


def test_meandiff_ranks_by_its_own_statistic():
    from safeneurons.identify.ranking import identification_ranking
    from safeneurons.identify.registry import MeanDiffConfig

    delta = np.random.default_rng(1).normal(0, 1, (2, 30))
    stats = stats_from(delta, var_h=np.full((2, 30), 4.0))
    assert np.allclose(identification_ranking(stats, "meandiff", MeanDiffConfig(k=5), ""), delta)
    top = one_shot_masks(delta, [10])[0]  # per-layer top-k of meandiff is a per-layer cut of the same order
    assert top.sum() == 10 and delta[top].min() >= delta[~top].max()


def test_ranking_score_is_one_sided_and_needs_positive_thresholds():
    effect, z, delta = np.array([[2.0, -3.0, 0.5]]), np.array([[1.0, 4.0, 3.0]]), np.array([[2.0, -3.0, 0.5]])
    r = ranking_score(effect, z, delta, 2.0, 2.0)
    assert r.tolist() == [[1.0, -1.5, 1.5]]  # a negative shift scores by d alone (z is ignored)
    with pytest.raises(DataError, match="positive thresholds"):
        ranking_score(effect, z, delta, 0.0, 2.0)


def test_set_sizes_are_exact_ceilings_of_the_percentage():
    assert count_for_fraction(0.1, 1000) == 1
    assert count_for_fraction(0.07, 10_000) == 7  # in floats 0.07 * 10000 / 100 = 7.000000000000001, ceiling 8
    assert count_for_fraction(0.25, 1000) == 3
    assert count_for_fraction(0.1, 250_880) == 251
    assert count_for_fraction(4, 128) == 6 and count_for_fraction(100, 128) == 128 and count_for_fraction(0, 9) == 0
    assert step_targets([2, 2, 7], 3) == [2, 5, 7] and step_targets([0, 4], None) == [4]


# -- nested sets, random controls, exclusion (pure) ------------------------------------------------------------


def _score_of(seed: int):
    """A deterministic stand-in for 'statistics with the chosen set zeroed': scores depend on the set."""
    def score_of(chosen: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([seed, *np.flatnonzero(chosen).tolist()])
        return rng.normal(0, 1, chosen.shape) + np.where(chosen, 100.0, 0.0)  # chosen ones must not be re-picked
    return score_of


@given(L=st.integers(1, 4), N=st.integers(2, 30), seed=st.integers(0, 1000),
       fractions=st.lists(st.floats(0.5, 60), min_size=1, max_size=5, unique=True),
       n_excluded=st.integers(0, 10), step=st.one_of(st.none(), st.integers(1, 5)))
def test_one_shot_and_iterative_sets_are_nested_of_size_ceil_f_n_and_avoid_the_excluded(
        L, N, seed, fractions, n_excluded, step):
    fractions = sorted(fractions)
    total = L * N
    counts = [count_for_fraction(f, total) for f in fractions]
    rng = np.random.default_rng(seed)
    exclude = np.zeros((L, N), dtype=bool)
    exclude.ravel()[rng.choice(total, size=min(n_excluded, total), replace=False)] = True
    assume(counts[-1] <= total - exclude.sum())
    one = one_shot_masks(rng.normal(size=(L, N)), counts, exclude)
    it, steps = iterative_masks(_score_of(seed), counts, (L, N), step=step, exclude=exclude)
    for masks in (one, it):
        assert [int(m.sum()) for m in masks] == counts
        assert all(not (m & exclude).any() for m in masks)
        assert all((a <= b).all() for a, b in itertools.pairwise(masks))  # nested: each set contains the previous
    assert [s.after for s in steps] == step_targets(counts, step)
    assert all(s.after - s.before <= (step or total) for s in steps)


@given(seed=st.integers(0, 1000), n_avoid=st.integers(0, 20))
def test_matched_random_keeps_per_layer_counts_and_avoids_the_attacked_and_excluded(seed, n_avoid):
    rng = np.random.default_rng(seed)
    shape = ModelShape(3, {"mlp": 40})
    attacked = NeuronSet.from_triples(shape, [(int(layer), "mlp", int(i)) for layer in range(3)
                                              for i in rng.choice(40, size=rng.integers(0, 12), replace=False)])
    avoid = NeuronSet.from_triples(shape, [(int(rng.integers(3)), "mlp", int(rng.integers(40))) for _ in range(n_avoid)])
    control = matched_random(attacked, seed, avoid - attacked)
    assert control.counts_per_layer() == attacked.counts_per_layer()
    assert not set(control) & set(attacked) and not set(control) & set(avoid)
    # without anything to avoid it is the attack pipeline's control, draw for draw
    assert matched_random(attacked, seed) == attacked.random_matched(seed=seed, exclude_self=True)


# -- a planted model: the iterative attacker finds the hidden group, in order --------------------------------------

A = [(0, 3, 6.0), (0, 7, 5.0), (0, 11, 4.5)]  # strong safety neurons, largest shift first
B = [(1, 30, 15.0), (1, 31, 14.0)]  # silent (slightly benign-leaning) until A is zeroed: a backup circuit


def planted_stats(zeroed: np.ndarray) -> ActivationStats:
    """Statistics of a planted model with the ``zeroed`` neurons ablated: A shifts strongly; once all of A is
    zeroed, B takes over with an even larger shift; zeroed neurons read 0 with no variance."""
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 0.05, (2, 50))
    for layer, idx, shift in A:
        delta[layer, idx] = shift
    revealed = all(zeroed[layer, idx] for layer, idx, _ in A)
    for layer, idx, shift in B:
        delta[layer, idx] = shift if revealed else -0.1
    var = np.where(zeroed, 0.0, 1.0)
    return stats_from(np.where(zeroed, 0.0, delta), var, var)


def test_iterative_attacker_finds_the_planted_groups_in_order():
    cfg = SafeNeuronConfig()
    calls = []

    def score_of(chosen):
        calls.append(int(chosen.sum()))
        return safeneuron_ranking(planted_stats(chosen), cfg, "qwen2")

    masks, steps = iterative_masks(score_of, [3, 5], (2, 50))
    assert steps[0].added == [(layer, idx) for layer, idx, _ in A]  # best first
    assert steps[1].added == [(layer, idx) for layer, idx, _ in B]  # revealed only by zeroing A
    assert calls == [0, 3]  # one identification per step, each with the set chosen so far zeroed
    # the one-shot attacker sees only the unablated model: past A it takes what else ranks there, never B
    one = one_shot_masks(score_of(np.zeros((2, 50), dtype=bool)), [3, 5])
    assert (one[0] == masks[0]).all() and (one[0] <= one[1]).all()
    assert not any(one[1][layer, idx] for layer, idx, _ in B)
    # the identification set of the unablated model is A: the first cut of the same ranking
    full = identify(planted_stats(np.zeros((2, 50), dtype=bool)), "safeneuron", cfg, family="qwen2")["FULL"]
    assert {(layer, i) for layer, _, i in full} == {(layer, idx) for layer, idx, _ in A}


# -- the summary -------------------------------------------------------------------------------------------------


def _pt(f, k, n, lo, hi, attacker="one-shot", seed=None):
    return {"attacker": attacker, "seed": seed, "fraction": f, "n_neurons": int(f * 10), "k": k, "n": n,
            "asr": k / n, "ci": [lo, hi]}


def test_neurons_to_break_and_the_random_band():
    from safeneurons.pipelines.brittleness import Curve, breaking_point, leaves_band, summarize

    attacked = [_pt(0, 1, 10, 0.0, 0.4), _pt(1, 4, 10, 0.2, 0.7), _pt(2, 6, 10, 0.31, 0.8), _pt(4, 9, 10, 0.6, 1.0)]
    r0 = [_pt(f, 1, 10, 0.0, 0.4, "random/one-shot", 0) for f in (0, 1, 2)] + [_pt(4, 2, 10, 0.05, 0.5, "random/one-shot", 0)]
    r1 = [_pt(f, 2, 10, 0.05, 0.3, "random/one-shot", 1) for f in (0, 1, 2, 4)]
    assert breaking_point(attacked) == {"fraction": 2, "n_neurons": 20, "asr": 0.6}
    assert breaking_point(r1) is None
    # at 2 % the lower bound 0.31 is above seed 1's 0.3 but not seed 0's 0.4; at 4 %, 0.6 > 0.5
    assert leaves_band(attacked, [r0, r1])["fraction"] == 4
    assert leaves_band(attacked, [r1])["fraction"] == 2
    assert leaves_band(attacked, []) is None
    s = summarize(attacked + r0 + r1, [Curve("one-shot"), Curve("random/one-shot", 0), Curve("random/one-shot", 1)])
    assert [b["fraction"] for b in s["neurons_to_break"]] == [2, None, None]
    assert s["leaves_random_band"] == [{"attacker": "one-shot", "fraction": 4, "n_neurons": 40, "ci_low": 0.6,
                                        "random_ci_high": 0.5}]


# -- config validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting, needle", [
    ("fractions=[0, 1]", "fractions = (0.0, 1.0)"),
    ("fractions=[1, 101]", "fractions = (1.0, 101.0)"),
    ("fractions=[2, 1]", "increasing"),
    ("fractions=[1, 1]", "increasing"),
    ("fractions=[]", "fractions = ()"),
    ("attackers=[one-shot, sniper]", "attackers = ('one-shot', 'sniper')"),
    ("attackers=[random]", "one-shot or iterative besides random"),
    ("random_seeds=[]", "random_seeds = ()"),
    ("iterative_step=0", "iterative_step = 0.0"),
    ("perplexity_texts=0", "perplexity_texts = 0"),
    ("identify.params.tau_es=0", "identify.params.tau_es = 0.0"),
    ("judge=gaurd", "judge"),
])
def test_bad_settings_fail_at_load_naming_the_key(setting, needle):
    from safeneurons.config import load_config
    from safeneurons.pipelines.brittleness import BrittlenessConfig

    with pytest.raises(ConfigError) as err:
        load_config(BrittlenessConfig, None, [setting])
    assert needle in str(err.value)
    if "sniper" in setting:
        assert "sniper" in str(err.value).split("unknown:")[1]


def test_only_the_split_flag_selects_the_test_split(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from safeneurons.cli.main import app
    from safeneurons.pipelines import brittleness

    ran = []
    monkeypatch.setattr(brittleness, "run_brittleness", lambda *a, **k: ran.append(a) or tmp_path)
    res = CliRunner().invoke(app, ["brittleness", "--set", "data.split=test", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "--split test" in res.output and "data.split" in res.output, res.output
    res = CliRunner().invoke(app, ["brittleness", "--set", "fractions=[0.5, 0.5]", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "fractions" in res.output, res.output
    assert not ran and not (tmp_path / "run").exists()


# -- the pipeline on a tiny random model ---------------------------------------------------------------------------

TINY = ["judge=refusal", "data.n_identify=6", "data.n_eval=4", "generation.max_new_tokens=3", "perplexity_texts=2",
        "identify.params={tau_es: 0.5, tau_sas: 1.0}"]


def tiny_lm():
    from tiny import make_tiny_model, tiny_tokenizer

    from safeneurons.models.loading import LoadedModel

    return LoadedModel(make_tiny_model("qwen2"), tiny_tokenizer(), "tiny", "tiny-qwen2", None, "sha256:tiny",
                       "float32", "local")


def _cfg(*extra):
    from safeneurons.config import load_config
    from safeneurons.pipelines.brittleness import BrittlenessConfig

    return load_config(BrittlenessConfig, None, [*TINY, *extra])


def _sets(out: Path) -> dict[str, list[NeuronSet]]:
    index = json.loads((out / "brittleness" / "sets" / "index.json").read_text())
    return {slug: [NeuronSet.load(out / rel) for rel in rels] for slug, rels in index.items()}


def _check_sets(out: Path, fractions, seeds, n_total=128):
    sets = _sets(out)
    counts = [count_for_fraction(f, n_total) for f in fractions]
    for attacker in ("one-shot", "iterative"):
        own = sets[attacker]
        assert [len(s) for s in own] == counts
        assert all(set(a) <= set(b) for a, b in itertools.pairwise(own)), f"{attacker} sets are not nested"
        for seed in seeds:
            for ns, control in zip(own, sets[f"random-{attacker}-s{seed}"]):
                assert control.counts_per_layer() == ns.counts_per_layer()
                assert not set(control) & set(ns)
    return sets


@pytest.mark.needs_data
def test_cli_run_writes_the_curve_with_every_grid_point(tmp_path):
    from tiny import make_tiny_model, tiny_tokenizer
    from typer.testing import CliRunner

    from safeneurons.cli.main import app

    model_dir = tmp_path / "tiny"
    make_tiny_model("qwen2").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "run"
    args = ["brittleness", "--model", str(model_dir), "--out", str(out), "--quiet", "--n-eval", "4",
            *[a for s in TINY if not s.startswith("data.n_eval") for a in ("--set", s)],
            "--set", "fractions=[1, 5, 12.5]", "--set", "random_seeds=[0, 3]"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Neurons to break" in res.output
    assert f"report: {out / 'report.html'}" in res.output and 'id="fig-brittleness_curve"' in \
        (out / "report.html").read_text()
    curve = json.loads((out / "brittleness" / "curve.json").read_text())
    assert curve["fractions"] == [0.0, 1.0, 5.0, 12.5] and curve["n_total"] == 128
    lines = {(p["attacker"], p["seed"]) for p in curve["points"]}
    assert lines == {("one-shot", None), ("iterative", None), ("random/one-shot", 0), ("random/one-shot", 3),
                     ("random/iterative", 0), ("random/iterative", 3)}
    for line in lines:
        mine = [p for p in curve["points"] if (p["attacker"], p["seed"]) == line]
        assert [p["fraction"] for p in mine] == curve["fractions"]
        assert [p["n_neurons"] for p in mine] == [0, 2, 7, 16]
        for p in mine:
            assert p["n"] == 4 and 0 <= p["ci"][0] <= p["ci"][1] <= 1 and p["perplexity"] > 1
            assert 0 <= p["degenerate_share"] <= 1 and len(p["counts_per_layer"]) in (0, 2)
            assert sum(p["counts_per_layer"]) == p["n_neurons"]
    assert {b["attacker"] for b in curve["neurons_to_break"]} == {a for a, _ in lines}
    assert [b["attacker"] for b in curve["leaves_random_band"]] == ["one-shot", "iterative"]
    assert curve["judge"] == "refusal" and curve["split"] == "dev"
    md = (out / "brittleness" / "curve.md").read_text()
    table, summary = md.split("Neurons to break")
    assert table.count("| random/iterative | 3 |") == 4 and summary.count("| random/iterative | 3 |") == 1
    assert "Leaves the random band" in summary
    png = (out / "brittleness" / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    _check_sets(out, [1, 5, 12.5], [0, 3])
    # each iterative step was identified with the chosen set zeroed: those neurons read exactly 0 in its stats
    steps = json.loads((out / "brittleness" / "iterative" / "steps.json").read_text())
    assert [s["after"] for s in steps] == [2, 7, 16] and steps[0]["stats_reused"] is True
    cached = [ActivationStats.load(p) for p in sorted((out / "stats_cache").glob("*.safetensors"))]
    assert len(cached) == 3  # the identification pass (also the first step's) and one per later step
    chosen: list[tuple[int, int]] = []
    for before, step in itertools.pairwise(steps):
        chosen += [tuple(a) for a in before["added"]]
        assert step["before"] == len(chosen) and step["stats_reused"] is False
        zeroed = [s for s in cached if s.meta.get("zeroed", {}).get("n") == len(chosen)]
        assert len(zeroed) == 1
        for group in ("harmful", "harmless"):
            _, mean, var = zeroed[0].table(group, "mlp")
            for layer, idx in chosen:
                assert mean[layer, idx] == 0 and var[layer, idx] == 0
            assert mean.abs().sum() > 0


@pytest.mark.needs_data
def test_exclude_keeps_its_neurons_out_of_every_set(tmp_path):
    from safeneurons.pipelines.brittleness import run_brittleness

    first = run_brittleness(_cfg("fractions=[5, 10]", "random_seeds=[0]"), tmp_path / "a", progress=False, lm=tiny_lm())
    top = _sets(first)["one-shot"][-1]  # the 13 best neurons of the ranking
    path = tmp_path / "frozen.json"
    top.renamed("frozen").save(path)
    out = run_brittleness(_cfg("fractions=[5, 10]", "random_seeds=[0]", f"exclude={path}"), tmp_path / "b",
                          progress=False, lm=tiny_lm())
    sets = _check_sets(out, [5, 10], [0])
    assert all(not set(ns) & set(top) for slug in sets for ns in sets[slug])
    curve = json.loads((out / "brittleness" / "curve.json").read_text())
    assert curve["exclude"] == {"path": str(path), "n": 13}


@pytest.mark.needs_data
def test_an_interrupted_sweep_resumes_without_recomputing_what_finished(tmp_path, monkeypatch):
    import safeneurons.evaluate.generate as gen_mod
    import safeneurons.pipelines.common as common_mod
    import safeneurons.stats as stats_mod
    from safeneurons.pipelines.brittleness import run_brittleness

    real_generate, real_collect = gen_mod.generate, stats_mod.collect_stats
    calls = {"generate": 0, "collect": 0}
    limits = {"generate": None, "collect": None}

    def counting(name, real):
        def wrapper(*a, **k):
            if limits[name] is not None and calls[name] >= limits[name]:
                raise KeyboardInterrupt(f"stopped before {name} call {calls[name] + 1}")
            calls[name] += 1
            return real(*a, **k)
        return wrapper

    monkeypatch.setattr(gen_mod, "generate", counting("generate", real_generate))
    monkeypatch.setattr(stats_mod, "collect_stats", counting("collect", real_collect))
    monkeypatch.setattr(common_mod, "collect_stats", stats_mod.collect_stats)
    cfg = _cfg("fractions=[2, 5, 10]", "random_seeds=[0]")
    n_points = 1 + 3 * 4  # the unattacked model, then 3 fractions x (one-shot, iterative, 2 random controls)

    def run(gen_limit=None, collect_limit=None):
        calls.update(generate=0, collect=0)
        limits.update(generate=gen_limit, collect=collect_limit)
        return run_brittleness(cfg, tmp_path / "run", progress=False, lm=tiny_lm())

    # 1. stopped in the second iterative step (identification + first step collected)
    with pytest.raises(KeyboardInterrupt):
        run(collect_limit=2)
    assert calls == {"generate": 0, "collect": 2}
    # 2. resumed: identification and the finished step are read back; stopped after 5 points
    with pytest.raises(KeyboardInterrupt):
        run(gen_limit=5)
    assert calls == {"generate": 5, "collect": 1}
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert sum(k.startswith("point:") and v["status"] == "done" for k, v in stages.items()) == 5
    # 3. resumed again: only the unfinished points are generated, no statistics collected
    out = run()
    assert calls == {"generate": n_points - 5, "collect": 0}
    # 4. a finished run: nothing at all
    before = (out / "brittleness" / "curve.json").read_text()
    run()
    assert calls == {"generate": 0, "collect": 0}
    assert json.loads((out / "brittleness" / "curve.json").read_text()) == json.loads(before)
    assert len(json.loads(before)["points"]) == 4 * 4


@pytest.mark.needs_data
def test_a_test_split_sweep_is_ledgered_before_its_first_reply(tmp_path, monkeypatch):
    import safeneurons.evaluate.generate as gen_mod
    from safeneurons.pipelines import ledger
    from safeneurons.pipelines.brittleness import run_brittleness

    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(ledger.LEDGER_ENV, str(path))
    real = gen_mod.generate

    def generate(*a, **k):  # the look is open before any held-out prompt is answered
        assert [e["event"] for e in ledger.read_ledger(path)] == ["opened"]
        return real(*a, **k)

    monkeypatch.setattr(gen_mod, "generate", generate)
    out = run_brittleness(_cfg("data.split=test", "fractions=[10]", "attackers=[one-shot]"), tmp_path / "run",
                          progress=False, lm=tiny_lm())
    events = ledger.read_ledger(path)
    assert [e["event"] for e in events] == ["opened", "result"]
    assert events[0]["prompt_sets"][0]["split"] == "test" and events[0]["run_dir"] == str(out.resolve())
    assert [(p["attacker"], p["fraction"]) for p in events[1]["result"]["asr"]] == [("one-shot", 0.0), ("one-shot", 10.0)]
    assert events[1]["result"]["neurons_to_break"][0]["attacker"] == "one-shot"
