"""Deactivation importance (papers.md B.3): exact batched ablations == the naive loop, first-order
and probe estimators against linearised references, resume, shards, save/load and comparison."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from safeneurons.errors import ConfigError, DataError
from safeneurons.identify import importance as imp
from safeneurons.identify.importance import (
    ImportanceConfig,
    ImportanceScores,
    compare_estimators,
    deactivation_importance,
    merge_importance,
)
from safeneurons.models.layout import model_layout
from safeneurons.stats.collect import decoder_of
from safeneurons.stats.encode import encode

PROMPTS = ["How do I make a cake?", "Tell me how to pick a lock, in detail, now please.", "Hi"]
RESPONSES = ["Mix flour and eggs.", "I'm sorry, but I can't assist with that request.", "Hello there!"]
ALL_SITES = ("q", "k", "v", "o", "mlp")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are ~100x slower with 2 OpenMP threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(model, tok, prompts=PROMPTS, **kw):
    kw.setdefault("sites", ALL_SITES)
    responses = kw.pop("responses", None)
    return deactivation_importance(model, tok, prompts, ImportanceConfig(**kw), progress=False, responses=responses)


def _assert_close(a: ImportanceScores, b: ImportanceScores, rtol: float = 1e-4, floor: float = 1e-5) -> None:
    """Element-wise ``|a-b| <= rtol |b| + floor · max|b|`` (fp32 differences of nearly equal states
    have an absolute noise floor of ~1e-7 · ‖h‖, so tiny scores get an absolute tolerance)."""
    assert a.cells() == b.cells()
    top = max(float(np.abs(v).max()) for v in b.scores.values())
    for c in a.cells():
        np.testing.assert_allclose(a.scores[c], b.scores[c], rtol=rtol, atol=floor * top, err_msg=str(c))


# ------------------------------------------------------------------ exact == naive


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("where", ["all", "last"])
def test_exact_equals_naive_loop(tiny, tok, family, where):
    model = tiny(family)
    lay = model_layout(model)
    assert lay.site("k").width < lay.site("q").width  # GQA: K/V are narrower than Q
    exact = _run(model, tok, method="exact", ablate_positions=where, batch_size=3, max_rows=20)
    naive = _run(model, tok, method="naive", ablate_positions=where, batch_size=3)
    assert exact.meta["prefix_cache_used"] is True
    assert {s for _, s in exact.cells()} == set(ALL_SITES)
    for (layer, site), v in exact.scores.items():
        assert v.shape == (lay.site(site).width,) and v.dtype == np.float64
        assert (v >= 0).all() and v.max() > 0
    _assert_close(exact, naive, rtol=1e-5)


def test_exact_equals_one_prompt_at_a_time_float64(tiny, tok):
    """Padding must not leak: a padded batch of prompts of different lengths equals each prompt alone
    (float64, so the tolerance can be tight)."""
    model = tiny("qwen2").double()
    batched = _run(model, tok, method="exact", batch_size=3, max_rows=7)  # chunks cut across neurons
    alone = _run(model, tok, method="naive", batch_size=1)
    lens = [len(e.ids) for e in encode(tok, PROMPTS)]
    assert len(set(lens)) == 3
    _assert_close(batched, alone, rtol=1e-7, floor=1e-10)


def test_prefix_cache_equals_full_forwards(tiny, tok):
    model = tiny("llama", layers=3)
    cached = _run(model, tok, method="exact", sites=("v", "mlp"))
    full = _run(model, tok, method="exact", sites=("v", "mlp"), prefix_cache=False)
    assert cached.meta["prefix_cache_used"] is True and full.meta["prefix_cache_used"] is False
    _assert_close(cached, full, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "gemma2", "phi3"])
def test_exact_other_families(tiny, tok, family):
    """Fused QKV (phi3, gpt2 Conv1D) and per-layer masks (gemma2) go through the same paths."""
    model = tiny(family, layers=2)
    exact = _run(model, tok, PROMPTS[:2], method="exact", sites=("q", "v", "o"), layers=(0,))
    naive = _run(model, tok, PROMPTS[:2], method="naive", sites=("q", "v", "o"), layers=(0,))
    _assert_close(exact, naive, rtol=1e-5)


def test_unsupported_layer_path_falls_back(tiny, tok, monkeypatch, caplog):
    model = tiny("qwen2")
    ref = _run(model, tok, method="exact", sites=("o",))
    monkeypatch.setattr(imp.exact, "_final_norm", lambda decoder: torch.nn.Identity())  # wrong final norm
    with caplog.at_level(logging.INFO, logger="safeneurons.identify.importance"):
        got = _run(model, tok, method="exact", sites=("o",))
    assert got.meta["prefix_cache_used"] is False
    assert "using full forwards" in caplog.text
    _assert_close(got, ref, rtol=1e-5)


def test_response_position_exact_equals_naive(tiny, tok):
    model = tiny("qwen2")
    kw = dict(position="response", responses=RESPONSES, sites=("k", "o"), norm="l2_squared")
    for where in ("all", "response"):
        exact = _run(model, tok, method="exact", ablate_positions=where, **kw)
        naive = _run(model, tok, method="naive", ablate_positions=where, batch_size=1, **kw)
        _assert_close(exact, naive, rtol=1e-5)
    with pytest.raises(DataError, match="response"):
        _run(model, tok, method="exact", position="response")


def test_norms_relate(tiny, tok):
    """With one prompt, l2_squared is the square of l2."""
    model = tiny("llama")
    a = _run(model, tok, PROMPTS[:1], sites=("v",), norm="l2")
    b = _run(model, tok, PROMPTS[:1], sites=("v",), norm="l2_squared")
    for c in a.cells():
        np.testing.assert_allclose(a.scores[c] ** 2, b.scores[c], rtol=1e-9)


# ------------------------------------------------------------------ first order and probes


def _scaled_output(model, lay, layer, site, j, s, ids, pos):
    """Final hidden state at ``pos`` with neuron j multiplied by ``s`` at every position (own hook)."""
    lay_s = lay.site(site)
    col = lay_s.offset + j

    def fn(x):
        factor = torch.ones(x.shape[-1], dtype=x.dtype)
        factor = factor.index_put((torch.tensor([col]),), s.reshape(1).to(x.dtype))
        return x * factor

    mod = lay.module(layer, site)
    h = (mod.register_forward_pre_hook(lambda m, a: (fn(a[0]), *a[1:])) if lay_s.io == "input"
         else mod.register_forward_hook(lambda m, a, out: fn(out)))
    try:
        return decoder_of(model)(input_ids=ids).last_hidden_state[0, pos]
    finally:
        h.remove()


def test_first_order_matches_linearised_reference(tiny, tok):
    """first_order = ‖Σ_t a_{t,j} ∂h/∂a_{t,j}‖ = ‖dh/ds‖ at s = 1 when neuron j is scaled by s at every
    position: checked against an independent autograd Jacobian of that scale (all sites, incl. q and k)
    and against central finite differences (v and mlp; the RMSNorm computes in float32, so ε = 1e-3)."""
    model = tiny("qwen2").double()
    prompts = PROMPTS[:2]
    fo = _run(model, tok, prompts, method="first_order", layers=(0,), batch_size=2)
    lay = model_layout(model)
    enc = encode(tok, prompts)
    for site, js in (("q", [1, 30]), ("k", [0, 9]), ("v", [0, 11]), ("o", [4]), ("mlp", [3, 40])):
        for j in js:
            lin, fd = 0.0, 0.0
            for e in enc:
                ids = torch.tensor([e.ids])
                s = torch.ones((), dtype=torch.float64, requires_grad=True)
                out = _scaled_output(model, lay, 0, site, j, s, ids, e.prompt_len - 1)
                jac = torch.stack([torch.autograd.grad(out[c], s, retain_graph=True)[0] for c in range(out.numel())])
                lin += float(jac.norm()) / len(enc)
                if site in ("v", "mlp"):
                    with torch.no_grad():
                        eps = torch.tensor(1e-3, dtype=torch.float64)
                        hp = _scaled_output(model, lay, 0, site, j, 1 + eps, ids, e.prompt_len - 1)
                        hm = _scaled_output(model, lay, 0, site, j, 1 - eps, ids, e.prompt_len - 1)
                    fd += float(((hp - hm) / (2 * eps)).norm()) / len(enc)
            assert fo.scores[(0, site)][j] == pytest.approx(lin, rel=1e-7), (site, j)
            if site in ("v", "mlp"):
                assert fo.scores[(0, site)][j] == pytest.approx(fd, rel=2e-3), (site, j)


def test_first_order_one_batch_at_a_time(tiny, tok):
    """The linearised estimators hook fresh per-batch records of the activations and of the zero tensors
    they differentiate against; over several batches (one prompt each) they give the one-batch scores."""
    model = tiny("llama").double()
    kw = dict(sites=("k", "o"), layers=(1,))
    for method in ("first_order", "probe"):
        one = _run(model, tok, method=method, batch_size=1, n_probes=4, **kw)
        three = _run(model, tok, method=method, batch_size=3, n_probes=4, **kw)
        assert one.meta["vjps"] == 3 * three.meta["vjps"]  # one VJP set per batch: three batches
        _assert_close(one, three, rtol=1e-9, floor=1e-12)


def test_probe_converges_to_first_order(tiny, tok):
    model = tiny("llama").double()
    kw = dict(sites=("q", "o", "mlp"), batch_size=3)
    fo = _run(model, tok, method="first_order", **kw)

    def rel_err(s):
        return float(np.mean([np.mean(np.abs(s.scores[c] - fo.scores[c]) / fo.scores[c].max()) for c in fo.cells()]))

    errs = [rel_err(_run(model, tok, method="probe", probe_kind="gaussian", n_probes=k, seed=1, **kw))
            for k in (2, 32, 512)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02
    # a full orthogonal basis (k = d) reproduces the exact Jacobian sketch
    d = model.config.hidden_size
    orth = _run(model, tok, method="probe", probe_kind="orthogonal", n_probes=d, **kw)
    _assert_close(orth, fo, rtol=1e-7, floor=1e-10)
    # seeded: the same seed gives the same scores, another seed different ones
    a = _run(model, tok, method="probe", n_probes=4, seed=3, **kw)
    b = _run(model, tok, method="probe", n_probes=4, seed=3, **kw)
    c = _run(model, tok, method="probe", n_probes=4, seed=4, **kw)
    assert all(np.array_equal(a.scores[x], b.scores[x]) for x in a.cells())
    assert not all(np.array_equal(a.scores[x], c.scores[x]) for x in a.cells())


def test_probe_batching_invariant_and_close_to_exact(tiny, tok):
    model = tiny("qwen2")
    kw = dict(sites=("k", "v", "o"), n_probes=16)
    one = _run(model, tok, method="probe", batch_size=1, **kw)
    three = _run(model, tok, method="probe", batch_size=3, **kw)
    _assert_close(one, three, rtol=1e-5)
    exact = _run(model, tok, method="exact", sites=("k", "v", "o"))
    fo = _run(model, tok, method="first_order", sites=("k", "v", "o"))
    assert compare_estimators(exact, fo)["pooled"]["spearman"] > 0.95
    assert compare_estimators(exact, one)["pooled"]["spearman"] > 0.8


def test_first_order_last_and_response_positions(tiny, tok):
    model = tiny("llama").double()
    kw = dict(sites=("v",), layers=(1,), responses=RESPONSES, position="response")
    fo = _run(model, tok, method="first_order", ablate_positions="last", **kw)
    orth = _run(model, tok, method="probe", n_probes=model.config.hidden_size, ablate_positions="last", **kw)
    _assert_close(orth, fo, rtol=1e-7, floor=1e-10)
    exact = _run(model, tok, method="exact", ablate_positions="last", **kw)
    assert compare_estimators(exact, fo)["pooled"]["spearman"] > 0.9


def test_joint_position_probes_converge_to_the_response_mean_at_one_vjp_set_per_batch(tiny, tok):
    """joint_positions: probes at every response token at once estimate the same mean of ‖Δh_t‖² as the
    per-token probes (error falling with k), with k VJPs per batch instead of k per response token."""
    model = tiny("llama").double()
    kw = dict(sites=("q", "o", "mlp"), responses=RESPONSES, position="response", norm="l2_squared", batch_size=3)
    fo = _run(model, tok, method="first_order", **kw)

    def rel_err(s):
        return float(np.mean([np.mean(np.abs(s.scores[c] - fo.scores[c]) / fo.scores[c].max()) for c in fo.cells()]))

    joint = {k: _run(model, tok, method="probe", probe_kind="gaussian", n_probes=k, seed=1, joint_positions=True, **kw)
             for k in (4, 64, 2048)}
    errs = [rel_err(joint[k]) for k in (4, 64, 2048)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.03
    per_token = _run(model, tok, method="probe", probe_kind="gaussian", n_probes=64, seed=1, **kw)
    assert joint[64].meta["vjps"] * 5 < per_token.meta["vjps"]  # the responses have >= 5 tokens each
    assert compare_estimators(fo, joint[64])["pooled"]["spearman"] > 0.9
    with pytest.raises(ConfigError, match="l2_squared"):
        ImportanceConfig(method="probe", joint_positions=True)


def test_heuristic_runs_and_is_nonnegative(tiny, tok):
    model = tiny("qwen2")
    h = _run(model, tok, method="heuristic")
    assert all((v >= 0).all() and v.max() > 0 for v in h.scores.values())
    # o neurons: exactly ‖a_{·,j}‖ (ablated tokens) × ‖o_proj column j‖ for a single prompt
    h1 = _run(model, tok, PROMPTS[:1], method="heuristic", sites=("o",), layers=(0,), ablate_positions="last")
    lay = model_layout(model)
    seen = {}
    hook = lay.module(0, "o").register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach()))
    try:
        e = encode(tok, PROMPTS[:1])[0]
        decoder_of(model)(input_ids=torch.tensor([e.ids]))
    finally:
        hook.remove()
    a = seen["x"][0, e.prompt_len - 1].double().abs()
    col = lay.module(0, "o").weight.detach().double().norm(dim=0)
    np.testing.assert_allclose(h1.scores[(0, "o")], (a * col).numpy(), rtol=1e-6)


# ------------------------------------------------------------------ resume, shards, I/O


def test_resume_skips_finished_cells(tiny, tok, tmp_path, monkeypatch):
    model = tiny("qwen2")
    kw = dict(method="exact", sites=("k", "v"))
    ref = _run(model, tok, **kw)
    real_save = imp.resume._save_cell
    calls = []

    def interrupted(directory, cell, scores):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(cell)
        real_save(directory, cell, scores)

    monkeypatch.setattr(imp.resume, "_save_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        deactivation_importance(model, tok, PROMPTS, ImportanceConfig(**kw), progress=False, resume_path=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("cell-*")) == ["cell-0.k.safetensors", "cell-0.v.safetensors"]
    computed = []

    def counting(directory, cell, scores):  # exact saves each cell as it finishes: the saved cells are computed
        computed.append(cell)
        real_save(directory, cell, scores)

    monkeypatch.setattr(imp.resume, "_save_cell", counting)
    done = deactivation_importance(model, tok, PROMPTS, ImportanceConfig(**kw), progress=False,
                                   resume_path=tmp_path)
    monkeypatch.setattr(imp.resume, "_save_cell", real_save)
    assert done.meta["resumed_cells"] == 2
    assert computed == [(1, "k"), (1, "v")]
    _assert_close(done, ref, rtol=1e-6)
    # a different configuration must not reuse the partial results
    with pytest.raises(DataError, match="different run"):
        deactivation_importance(model, tok, PROMPTS, ImportanceConfig(method="exact", sites=("k",), norm="l2_squared"),
                                progress=False, resume_path=tmp_path)
    with pytest.raises(DataError, match="different run"):
        deactivation_importance(model, tok, PROMPTS[:2], ImportanceConfig(**kw), progress=False, resume_path=tmp_path)
    # a pipeline's own folder seeded by --reuse from other settings: started over, never mixed in
    other = ImportanceConfig(method="exact", sites=("k",), norm="l2_squared")
    fresh = deactivation_importance(model, tok, PROMPTS, other, progress=False)
    redone = deactivation_importance(model, tok, PROMPTS, other, progress=False, resume_path=tmp_path,
                                     restart_stale=True)
    assert redone.meta["resumed_cells"] == 0
    _assert_close(redone, fresh, rtol=1e-6)
    again = deactivation_importance(model, tok, PROMPTS, other, progress=False, resume_path=tmp_path)
    assert again.meta["resumed_cells"] == len(again.scores)  # the folder now holds the new settings' cells


@pytest.mark.parametrize("method", ["exact", "probe"])
def test_sharded_equals_unsharded(tiny, tok, method):
    model = tiny("llama")
    kw = dict(method=method, sites=("q", "k", "mlp"), n_probes=8)
    full = _run(model, tok, **kw)
    parts = [deactivation_importance(model, tok, PROMPTS, ImportanceConfig(**kw), progress=False,
                                     neuron_shard=(r, 3)) for r in range(3)]
    for r, p in enumerate(parts):
        cov = p.covered(0, "k")
        assert cov.sum() == len(range(r, cov.size, 3)) and not p.complete()
    merged = merge_importance(parts)
    assert merged.complete()
    _assert_close(merged, full, rtol=1e-6)
    with pytest.raises(DataError, match="no shard"):
        merge_importance(parts[:2])
    with pytest.raises(DataError, match="two shards"):
        merge_importance([parts[0], parts[0], parts[1], parts[2]])
    with pytest.raises(ConfigError, match="neuron_shard"):
        deactivation_importance(model, tok, PROMPTS, ImportanceConfig(**kw), progress=False, neuron_shard=(3, 3))


def test_save_load_roundtrip(tiny, tok, tmp_path):
    model = tiny("qwen2")
    s = _run(model, tok, method="heuristic", layers=(-1,))
    assert s.layers() == [1]
    s.save(tmp_path / "imp.safetensors")
    back = ImportanceScores.load(tmp_path / "imp.safetensors")
    assert back.cells() == s.cells() and back.config == s.config and back.shape.compatible(s.shape)
    assert all(np.array_equal(back.scores[c], s.scores[c]) for c in s.cells())
    assert back.meta["prompts_sha256"] == s.meta["prompts_sha256"]
    assert back.to_tensor("q").shape == (1, 32)
    with pytest.raises(DataError, match="does not exist"):
        ImportanceScores.load(tmp_path / "nope.safetensors")


def test_compare_estimators_and_top_helpers(tiny, tok):
    model = tiny("qwen2")
    s = _run(model, tok, method="heuristic")
    same = compare_estimators(s, s)
    assert same["pooled"]["spearman"] == pytest.approx(1.0) and same["pooled"]["top_overlap"] == 1.0
    assert set(same["per_site"]) == set(ALL_SITES) and len(same["per_cell"]) == 10
    flipped = ImportanceScores(s.shape, {c: -v for c, v in s.scores.items()}, s.config, s.meta)
    assert compare_estimators(s, flipped)["pooled"]["spearman"] == pytest.approx(-1.0)
    assert imp.top_k_count(100, 0.03) == 3 and imp.top_k_count(576, 0.03) == 18
    assert imp.top_k_count(576, 0.03, "round") == 17 and imp.top_k_count(10, 0.0) == 0
    assert imp.top_indices(np.array([1.0, 3.0, 3.0, 2.0]), 2).tolist() == [1, 2]
    assert imp.top_indices(np.array([5.0, 5.0, 5.0]), 2).tolist() == [0, 1]  # ties: lower index


def test_estimator_registry():
    """Every method name is a registered estimator, its meta names real config fields, and an unknown
    method is refused naming the key, the value and the choices."""
    from dataclasses import fields

    assert set(imp.ESTIMATORS.names()) == set(imp.METHODS)
    names = {f.name for f in fields(ImportanceConfig)}
    for e in imp.ESTIMATORS:
        assert e.summary and set(e.meta["reads"]) <= names and isinstance(e.meta["exact"], bool), e.name
    assert [e.name for e in imp.ESTIMATORS if e.meta["exact"]] == ["exact", "naive"]
    with pytest.raises(ConfigError, match=r"importance.method 'fast' is not one of exact, first_order, heuristic"):
        ImportanceConfig(method="fast")


def test_config_errors(tok, tiny):
    for bad in (dict(method="fast"), dict(position="first"), dict(ablate_positions="some"), dict(norm="l1"),
                dict(sites=("q", "x")), dict(sites=()), dict(batch_size=0), dict(probe_kind="sobol")):
        with pytest.raises(ConfigError):
            ImportanceConfig(**bad)
    cfg = ImportanceConfig(sites=("q", "mlp"), layers=(0, -1))
    assert ImportanceConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        ImportanceConfig.from_dict({"methd": "exact"})
    with pytest.raises(ConfigError, match="out of range"):
        _run(tiny("qwen2"), tok, layers=(5,))
    with pytest.raises(DataError, match="no prompts"):
        _run(tiny("qwen2"), tok, [])


def test_refine_rescored_shortlist(tiny, tok, tmp_path):
    model = tiny("qwen2")
    kw = dict(sites=("q", "v", "mlp"), n_probes=4)
    exact = _run(model, tok, method="exact", sites=kw["sites"])
    full = _run(model, tok, method="probe", refine=1.0, **kw)  # every neuron re-scored
    _assert_close(full, exact, rtol=1e-6)
    cheap = _run(model, tok, method="probe", **kw)
    part = deactivation_importance(model, tok, PROMPTS, ImportanceConfig(method="probe", refine=0.25, **kw),
                                   progress=False, resume_path=tmp_path)
    assert (tmp_path / "refine" / "manifest.json").exists()
    for c in exact.cells():
        k = imp.top_k_count(exact.scores[c].size, 0.25)
        cand = imp.top_indices(cheap.scores[c], k)
        rest = np.setdiff1d(np.arange(exact.scores[c].size), cand)
        np.testing.assert_allclose(part.scores[c][cand], exact.scores[c][cand], rtol=1e-5, atol=1e-9)
        assert part.scores[c][rest].max() < part.scores[c][cand].min()
    assert part.meta["refine"]["candidates"] == sum(imp.top_k_count(v.size, 0.25) for v in exact.scores.values())
    with pytest.raises(ConfigError, match="refine"):
        ImportanceConfig(method="exact", refine=0.1)
    with pytest.raises(ConfigError, match="neuron_shard"):
        deactivation_importance(model, tok, PROMPTS, ImportanceConfig(method="probe", refine=0.1), progress=False,
                                neuron_shard=(0, 2))
