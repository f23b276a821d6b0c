import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from safeneurons.data.prompts import Prompt, PromptSet
from safeneurons.errors import ConfigError, DataError, NumericalError
from safeneurons.models import model_layout
from safeneurons.stats import ActivationStats, RunningMoments, StatsConfig, collect_stats
from safeneurons.stats.encode import encode
from tiny import make_tiny_model, tiny_tokenizer

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def assert_moments_close(m, ref):
    """The stated tolerance of the float32 partial sums (stats/moments.py): mean within 1e-6 of the feature's
    largest deviation from its mean, variance within 1e-5 relative (1e-6 absolute for near-constant data)."""
    mean, var = ref.mean(0), ref.var(0, ddof=1)
    scale = np.abs(ref - mean).max(0)
    assert np.all(np.abs(m.mean.numpy() - mean) <= 1e-6 * scale + 1e-12), np.abs(m.mean.numpy() - mean).max()
    np.testing.assert_allclose(m.var.numpy(), var, rtol=1e-5, atol=1e-6)


@given(arrays(np.float32, st.tuples(st.integers(2, 40), st.just(5)), elements=finite), st.integers(1, 7))
@settings(max_examples=60, deadline=None)
def test_moments_match_numpy_and_merge_of_shards(x, n_shards):
    one = RunningMoments(5)
    one.add(torch.from_numpy(x))
    shards = [RunningMoments(5) for _ in range(n_shards)]
    for i, chunk in enumerate(np.array_split(x, n_shards)):
        shards[i].add(torch.from_numpy(chunk))
    merged = shards[0]
    for s in shards[1:]:
        merged.merge(s)
    ref = x.astype(np.float64)
    for m in (one, merged):
        assert m.n == len(x)
        assert_moments_close(m, ref)


def test_moments_keep_precision_on_a_large_offset():
    """Mean 1000, std 0.01, float32 input in batches: the float32 partial sums are shifted by the running mean
    (the first batch by its first rows' mean), so the offset costs nothing: the variance, which naive float32
    sums of squares would lose entirely to cancellation, and the mean agree with float64 far inside the
    stated tolerance."""
    x = (1000 + 1e-2 * torch.randn(4096, 8, generator=torch.Generator().manual_seed(0))).float()
    m = RunningMoments(8)
    for chunk in x.split(1000):
        m.add(chunk)
    ref = x.double().numpy()
    np.testing.assert_allclose(m.var.numpy(), ref.var(0, ddof=1), rtol=1e-6)
    assert np.abs(m.mean.numpy() - ref.mean(0)).max() <= 1e-6 * 1e-2  # a millionth of a standard deviation
    assert_moments_close(m, ref)


def test_half_precision_batches_match_their_float64_moments():
    """bf16/fp16 activations (the GPU path) are reduced through float32 (a variance of fp16 values can
    overflow fp16 itself), not a float64 copy."""
    x = (3 + torch.randn(512, 6, generator=torch.Generator().manual_seed(1)))
    for dtype in (torch.bfloat16, torch.float16):
        xh = x.to(dtype)
        m = RunningMoments(6)
        for chunk in xh.split(100):
            m.add(chunk)
        ref = xh.double().numpy()
        assert_moments_close(m, ref)
    big = (300 * x).half()  # values ~1000: var ~9e4 > fp16 max 65504
    m = RunningMoments(6)
    assert torch.isfinite(m.add(big))
    assert_moments_close(m, big.double().numpy())


def test_spans_select_rows_and_probe_flags_non_finite_values():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    m = RunningMoments(4)
    probe = m.add(x, spans=[(0, 10), (30, 50)])
    assert m.n == 30 and torch.isfinite(probe)
    assert_moments_close(m, torch.cat([x[:10], x[30:]]).double().numpy())
    x[20, 1] = float("nan")  # outside the spans: never read
    assert torch.isfinite(RunningMoments(4).add(x, spans=[(0, 10), (30, 50)]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x[40, 2] = bad
        assert not torch.isfinite(RunningMoments(4).add(x, spans=[(0, 10), (30, 50)]))
    with pytest.raises(ValueError, match="outside the 50 rows"):
        m.add(x, spans=[(40, 60)])


def test_positive_probability():
    m = RunningMoments(2, track_positive=True)
    m.add(torch.tensor([[1.0, -1.0], [2.0, 0.0], [-3.0, 5.0]]))
    np.testing.assert_allclose(m.p_positive.numpy(), [2 / 3, 1 / 3])


def _capture_reference(model, tok, texts, position, responses=None):
    """Plain per-prompt forwards (no batching, no padding), reduced with numpy."""
    layout = model_layout(model)
    enc = encode(tok, texts, responses)
    per_layer = {l: [] for l in range(layout.n_layers)}
    for e in enc:
        acts = {}
        hs = [layout.module(l, "mlp").register_forward_pre_hook(
            lambda m, a, l=l: acts.__setitem__(l, a[0][0].detach().double().numpy())) for l in range(layout.n_layers)]
        try:
            with torch.no_grad():
                model(torch.tensor([e.ids]))
        finally:
            for h in hs:
                h.remove()
        for l, a in acts.items():
            p = e.prompt_len
            if position == "last":
                per_layer[l].append(a[p - 1][None])
            elif position == "prompt_mean":
                per_layer[l].append(a[:p].mean(0, keepdims=True))
            elif position == "prompt_tokens":
                per_layer[l].append(a[:p])
            elif position == "response_mean":
                per_layer[l].append(a[p:].mean(0, keepdims=True))
            elif position == "response_tokens":
                per_layer[l].append(a[p:])
            else:
                per_layer[l].append(a)
    return {l: np.concatenate(v) for l, v in per_layer.items()}


TEXTS = ["How do I bake bread?", "hi", "Write a long poem about the sea and the wind and the stars tonight"]
RESP = ["Mix flour and water.", "Hello!", "The sea is wide"]


@pytest.mark.parametrize("position", ["last", "prompt_mean", "prompt_tokens", "response_mean", "response_tokens",
                                      "all_tokens"])
@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_collect_matches_unbatched_reference(position, family):
    model, tok = make_tiny_model(family), tiny_tokenizer()
    needs_resp = position.startswith("response") or position == "all_tokens"
    ps = PromptSet("g", [Prompt(t, response=r if needs_resp else None) for t, r in zip(TEXTS, RESP)])
    stats = collect_stats(model, tok, {"g": ps}, StatsConfig(position=position, batch_size=2), progress=False)
    ref = _capture_reference(model, tok, TEXTS, position, RESP if needs_resp else None)
    for layer, acts in ref.items():
        m = stats.get("g", layer, "mlp")
        assert m.n == len(acts)  # padding never counted
        np.testing.assert_allclose(m.mean.numpy(), acts.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m.var.numpy(), acts.var(0, ddof=1), rtol=1e-3, atol=1e-5)


def test_batch_size_does_not_change_results_and_shards_merge(tmp_path):
    model, tok = make_tiny_model("llama"), tiny_tokenizer()
    texts = [f"prompt number {i} " + "word " * (i % 5) for i in range(9)]
    cfg = dict(sites=("mlp", "q", "o"))
    a = collect_stats(model, tok, {"g": texts}, StatsConfig(batch_size=1, **cfg), progress=False)
    b = collect_stats(model, tok, {"g": texts}, StatsConfig(batch_size=4, **cfg), progress=False)
    s1 = collect_stats(model, tok, {"g": texts[:4]}, StatsConfig(**cfg), progress=False)
    s2 = collect_stats(model, tok, {"g": texts[4:]}, StatsConfig(**cfg), progress=False)
    s1.merge(s2)
    path = tmp_path / "stats.safetensors"
    s1.save(path)
    loaded = ActivationStats.load(path)
    for other in (b, s1, loaded):
        for key, m in a.moments["g"].items():
            o = other.moments["g"][key]
            assert o.n == m.n
            np.testing.assert_allclose(o.mean.numpy(), m.mean.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(o.var.numpy(), m.var.numpy(), rtol=1e-4, atol=1e-6)


def test_nan_activations_are_reported_not_averaged():
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    layout = model_layout(model)
    with torch.no_grad():
        layout.module(1, "mlp").weight.zero_()
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NumericalError, match=r"1\.mlp .*prompts 0-1 of group 'harmful'.*not averaged"):
        collect_stats(model, tok, {"harmful": ["a b", "c d"]}, progress=False)


def test_bad_input():
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    with pytest.raises(DataError, match="group 'empty' is empty"):
        collect_stats(model, tok, {"empty": []}, progress=False)
    with pytest.raises(ConfigError, match="stats.position 'middle'"):
        StatsConfig(position="middle")
    with pytest.raises(DataError, match="needs responses"):
        collect_stats(model, tok, {"g": ["x"]}, StatsConfig(position="response_mean"), progress=False)


def test_memory_does_not_grow_with_prompts():
    """Accumulators are fixed-size: their state has the same bytes after 4 and after 40 prompts."""
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    small = collect_stats(model, tok, {"g": ["a b c"] * 4}, progress=False)
    big = collect_stats(model, tok, {"g": ["a b c"] * 40}, progress=False)

    def nbytes(s):
        return sum(t.numel() * t.element_size() for c in s.moments["g"].values() for t in c.state_dict().values())

    assert nbytes(small) == nbytes(big)


def test_long_prompts_keep_their_last_token():
    tok = tiny_tokenizer()
    long = "word " * 300
    (e,) = encode(tok, [long], ["an answer"], max_length=64)
    full = encode(tok, [long], max_length=10_000)[0]
    assert e.prompt_len == 64 and len(e.ids) == 64
    assert e.ids[e.prompt_len - 1] == full.ids[full.prompt_len - 1]  # still the generation-prompt token


def test_accumulators_are_updated_in_place_and_bit_identical_to_the_out_of_place_update():
    """The state tensors keep their storage over every batch (a new 40 KB block per batch between the forward's
    freed activations kept 100-350 MiB of heap on the 0.5B, benchmarks/README.md), and the in-place update gives
    the same bits as the formula written out of place."""
    rng = np.random.default_rng(3)
    cell = RunningMoments(16, track_positive=True)
    ptrs = (cell.mean.data_ptr(), cell.m2.data_ptr(), cell.n_positive.data_ptr())
    n, mean, m2 = 0, torch.zeros(16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    for rows in (5, 1, 9, 3):
        x = torch.from_numpy(rng.normal(3.0, 2.0, (rows, 16)).astype(np.float32))
        cell.add(x)
        xb = x.to(torch.float64)
        mu_b, m2_b = xb.mean(0), ((xb - xb.mean(0)) ** 2).sum(0)
        delta = mu_b - mean
        mean, m2, n = mean + delta * (rows / (n + rows)), m2 + m2_b + delta**2 * (n * rows / (n + rows)), n + rows
    assert (cell.mean.data_ptr(), cell.m2.data_ptr(), cell.n_positive.data_ptr()) == ptrs
    np.testing.assert_allclose(cell.mean.numpy(), mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(cell.m2.numpy(), m2.numpy(), rtol=1e-5)


def test_merging_a_new_cell_copies_it_so_later_merges_leave_the_shard_alone():
    """ActivationStats.merge adopts a cell it lacks through a copy: merging a third shard afterwards updates this
    accumulator in place and must not change the second shard's."""
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    a = collect_stats(model, tok, {"g": ["a b"]}, progress=False)
    b = collect_stats(model, tok, {"h": ["c d e", "f"]}, progress=False)
    c = collect_stats(model, tok, {"h": ["g h"]}, progress=False)
    before = {k: (m.n, m.mean.clone(), m.m2.clone()) for k, m in b.moments["h"].items()}
    a.merge(b).merge(c)
    for k, m in b.moments["h"].items():
        assert m.n == before[k][0] and torch.equal(m.mean, before[k][1]) and torch.equal(m.m2, before[k][2])
        assert a.moments["h"][k].n == 3
