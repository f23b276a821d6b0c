"""The per-batch path of ``collect_stats``: which rows count (padding never read, with and without padding
in a batch), the float32 partial sums against a float64 reference on the activations the hooks really see, and
non-finite activations in one batch reported with their group and prompts although batches are checked in
groups (one host sync per ``CHECK_EVERY`` batches)."""

import numpy as np
import pytest
import torch

import safeneurons.stats.collect as collect_mod
import safeneurons.stats.moments as moments_mod
from safeneurons.data.prompts import Prompt, PromptSet
from safeneurons.errors import NumericalError
from safeneurons.models import model_layout
from safeneurons.models.hooks import site_hooks
from safeneurons.stats import StatsConfig, collect_stats, decoder_of
from safeneurons.stats.collect import batch_plan
from safeneurons.stats.encode import Encoded, encode, length_sorted_batches
from tiny import make_tiny_model, tiny_tokenizer

POSITIONS = ["last", "prompt_mean", "prompt_tokens", "response_mean", "response_tokens", "all_tokens"]
TEXTS = ["How do I bake bread?", "hi", "Write a long poem about the sea and the wind and the stars tonight",
         "Explain vaccines", "a b c d e f g"]
RESP = ["Mix flour and water.", "Hello!", "The sea is wide", "They train the immune system.", "h i"]


def _group(position):
    needs = position.startswith("response") or position == "all_tokens"
    return PromptSet("g", [Prompt(t, response=r if needs else None) for t, r in zip(TEXTS, RESP)])


def test_batch_plan_rows():
    batch = [Encoded([1, 2, 3, 4, 5], 3), Encoded([6, 7], 1), Encoded([8, 9, 10, 11, 12], 5)]
    width = 5
    assert batch_plan(batch, width, "last").gather.tolist() == [2, 5, 14]
    assert batch_plan(batch, width, "prompt_mean").segments == ((0, 3), (5, 6), (10, 15))
    # token positions: one span per prompt, adjacent spans joined; padding (7..9) never inside a span
    assert batch_plan(batch, width, "all_tokens").spans == ((0, 7), (10, 15))
    assert batch_plan(batch, width, "all_tokens").n == 12
    assert batch_plan(batch, width, "prompt_tokens").spans == ((0, 3), (5, 6), (10, 15))
    full = [Encoded([1, 2, 3], 2), Encoded([4, 5, 6], 2)]
    assert batch_plan(full, 3, "all_tokens").spans == ((0, 6),)  # no padding: the whole batch, one span


def _poison_padding_of_last_layer(model, layout, value):
    """Hooks (registered before collect_stats's own) that write ``value`` into every padding position of the
    last layer's MLP input, where it cannot reach a later layer: only a reader of padding can see it."""
    seen = {}

    def remember(module, args, kwargs):
        seen["mask"] = kwargs["attention_mask"]

    def poison(x):
        x = x.clone()
        x[seen["mask"] == 0] = value
        return x

    handle = decoder_of(model).register_forward_pre_hook(remember, with_kwargs=True)
    return handle, site_hooks(layout, [(layout.n_layers - 1, "mlp", poison)])


@pytest.mark.parametrize("position", POSITIONS)
def test_padding_is_never_read(position):
    """NaN written into the padding of a batch changes nothing: no error, identical statistics."""
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    layout = model_layout(model)
    cfg = StatsConfig(position=position, batch_size=3)
    clean = collect_stats(model, tok, {"g": _group(position)}, cfg, progress=False)
    handle, hooks = _poison_padding_of_last_layer(model, layout, float("nan"))
    try:
        with hooks:
            poisoned = collect_stats(model, tok, {"g": _group(position)}, cfg, progress=False)
    finally:
        handle.remove()
    last = layout.n_layers - 1
    a, b = clean.get("g", last, "mlp"), poisoned.get("g", last, "mlp")
    assert a.n == b.n
    assert torch.equal(a.mean, b.mean) and torch.equal(a.m2, b.m2)


def _reference(model, tok, texts, position, responses=None):
    """Per-prompt forwards without padding, float64 moments of the selected activations (numpy)."""
    layout = model_layout(model)
    per_layer = {i: [] for i in range(layout.n_layers)}
    for e in encode(tok, texts, responses):
        acts = {}
        hooks = [(i, "mlp", lambda x, i=i: acts.__setitem__(i, x[0].double().numpy())) for i in per_layer]
        with torch.no_grad(), site_hooks(layout, hooks):
            model(torch.tensor([e.ids]))
        p = e.prompt_len
        for i, a in acts.items():
            per_layer[i].append({"last": a[p - 1 : p], "prompt_tokens": a[:p], "all_tokens": a}[position])
    return {i: np.concatenate(v) for i, v in per_layer.items()}


@pytest.mark.parametrize("position", ["last", "all_tokens"])
def test_batches_without_padding_match_per_prompt_passes(position):
    """Prompts of one length: every batch is one span (no padding), and the result is the per-prompt one."""
    tok = tiny_tokenizer()
    pool = [f"w{i} x{i}" for i in range(40)]
    lengths = [len(e.ids) for e in encode(tok, pool)]
    texts = [t for t, n in zip(pool, lengths) if n == lengths[0]][:6]
    assert len(texts) == 6
    model = make_tiny_model("llama")
    cfg = StatsConfig(position=position, batch_size=3)
    stats = collect_stats(model, tok, {"g": texts}, cfg, progress=False)
    for layer, acts in _reference(model, tok, texts, position).items():
        m = stats.get("g", layer, "mlp")
        assert m.n == len(acts)
        np.testing.assert_allclose(m.mean.numpy(), acts.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(m.var.numpy(), acts.var(0, ddof=1), rtol=1e-3, atol=1e-5)


def _capture_and_collect(model, tok, group, cfg, offset=0.0):
    """collect_stats while a hook registered before its own records (in float64) exactly the activations it
    sees, with ``offset`` added to them first; returns the stats and the float64 rows of every batch."""
    layout = model_layout(model)
    seen, rows = {}, {i: [] for i in range(layout.n_layers)}

    def remember(module, args, kwargs):
        seen["mask"] = kwargs["attention_mask"].bool()

    def shift_and_record(i):
        def fn(x):
            x = x + offset if offset else x
            rows[i].append((x.double(), seen["mask"]))
            return x if offset else None
        return fn

    handle = decoder_of(model).register_forward_pre_hook(remember, with_kwargs=True)
    try:
        with site_hooks(layout, [(i, "mlp", shift_and_record(i)) for i in rows]):
            stats = collect_stats(model, tok, {"g": group}, cfg, progress=False)
    finally:
        handle.remove()
    return stats, rows


@pytest.mark.parametrize("chunk_values", [None, 96])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("position", ["all_tokens", "last"])
def test_float32_partials_match_float64_reference(monkeypatch, position, offset, chunk_values):
    """On the activations the hooks really see (padded batches of the tiny model, also shifted by +1000, and
    cut into chunks of a few rows), the float32 per-batch sums merged in float64 stay within the stated
    tolerance of float64 moments of the same values: mean within 1e-6 of the largest deviation, variance
    within 1e-5 relative."""
    if chunk_values:
        monkeypatch.setitem(moments_mod.CHUNK_VALUES, "cpu", chunk_values)
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    texts = [t + " again" * (i % 4) for i, t in enumerate(TEXTS * 3)]
    cfg = StatsConfig(position=position, batch_size=4)
    stats, rows = _capture_and_collect(model, tok, texts, cfg, offset)
    for layer, batches in rows.items():
        picked = []
        for x, mask in batches:
            if position == "all_tokens":
                picked.append(x[mask])
            else:  # right padding: the last prompt token is the last real one
                picked.append(x[torch.arange(x.shape[0]), mask.sum(1) - 1])
        ref = torch.cat(picked).numpy()
        m = stats.get("g", layer, "mlp")
        assert m.n == len(ref)
        mean, var = ref.mean(0), ref.var(0, ddof=1)
        scale = np.abs(ref - mean).max(0)
        assert np.all(np.abs(m.mean.numpy() - mean) <= 1e-6 * scale)
        np.testing.assert_allclose(m.var.numpy(), var, rtol=1e-5)


def _mark_prompt(model, layout, marker_id, value):
    """Hooks that write ``value`` into layer 0's MLP input at the first token of every prompt containing the
    token ``marker_id`` (a first token is never padding)."""
    seen = {}

    def remember(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def mark(x):
        rows = (seen["ids"] == marker_id).any(1)
        if not rows.any():
            return None
        x = x.clone()
        x[rows, 0, 0] = value
        return x

    handle = decoder_of(model).register_forward_pre_hook(remember, with_kwargs=True)
    return handle, site_hooks(layout, [(0, "mlp", mark)])


@pytest.mark.parametrize("check_every", [1, 16])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_batch_is_named_with_group_and_prompts(monkeypatch, check_every, value):
    """One batch of four with a non-finite activation: the error names the site, the group and that batch's
    prompts, whether batches are checked one at a time or together at the end of the group."""
    monkeypatch.setattr(collect_mod, "CHECK_EVERY", check_every)
    model, tok = make_tiny_model("qwen2"), tiny_tokenizer()
    layout = model_layout(model)
    texts = [f"prompt {i} " + "word " * i for i in range(8)]
    texts[5] = texts[5] + " Z"
    (marker,) = tok("Z", add_special_tokens=False)["input_ids"]
    batches = length_sorted_batches(encode(tok, texts), 2)
    bad = next(b for b in batches if 5 in b)
    assert bad != batches[0] and bad != batches[-1]  # neither the first batch nor the last
    handle, hooks = _mark_prompt(model, layout, marker, value)
    try:
        with hooks, pytest.raises(NumericalError) as err:
            collect_stats(model, tok, {"harmful": texts}, StatsConfig(position="all_tokens", batch_size=2),
                          progress=False)
    finally:
        handle.remove()
    lo, hi = sorted(bad)
    names = f"{lo}-{hi}" if hi == lo + 1 else f"{lo}, {hi}"
    assert f"at 0.mlp for prompts {names} of group 'harmful'" in str(err.value)
    assert "not averaged" in str(err.value)

