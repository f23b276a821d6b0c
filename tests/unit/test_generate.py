"""generate / GenerationCache / over_refusal on tiny random models (no download, fp32, greedy unless stated)."""

from __future__ import annotations

import sys

import pytest
import torch

from safeneurons.errors import ConfigError, SafeneuronsError
from safeneurons.evaluate.cache import GenerationCache, cache_key
from safeneurons.evaluate.generate import (
    GenerationConfig,
    generate,
    generate_detailed,
    generate_vllm,
)
from safeneurons.intervene.hooks import Intervention, active_interventions, intervene
from safeneurons.models.layout import model_layout
from safeneurons.neurons import NeuronSet
from tiny import hooks_left

# deliberately unsorted lengths, so length-sorted batching reorders them
PROMPTS = [
    "cake",
    "Explain how vaccines train the immune system, and why boosters help.",
    "Write a poem about the sea.",
    "Hi",
    "Tell me how to pick a lock, then how to bake a cake with flour and eggs.",
]


def _all_mlp(model, layers=None) -> NeuronSet:
    shape = model_layout(model).shape()
    width = shape.site_sizes["mlp"]
    return NeuronSet(shape, {(layer, "mlp"): range(width) for layer in (layers or range(shape.n_layers))},
                     name="all-mlp")


class _CountingGenerate:
    """Wraps model.generate to count calls and record what was active during each call."""

    def __init__(self, model):
        self.model = model
        self.inner = model.generate
        self.calls = 0
        self.rows = 0
        self.active: list[list[str]] = []
        self.hooked: list[bool] = []

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.rows += int(kwargs["input_ids"].shape[0])
        self.active.append(active_interventions(self.model))
        self.hooked.append(bool(hooks_left(self.model)))
        return self.inner(*args, **kwargs)


@pytest.fixture
def counting(monkeypatch):
    def install(model) -> _CountingGenerate:
        c = _CountingGenerate(model)
        monkeypatch.setattr(model, "generate", c)
        return c

    return install


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", 0), ("batch_size", 0), ("temperature", 0.0), ("top_p", 1.5), ("top_p", 0.0),
    ("seed", -1), ("do_sample", "yes"), ("chat_template", 1), ("stop", ("",)), ("max_new_tokens", 2.5),
    ("share_prefix", 0), ("share_prefix", True),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"GenerationConfig\.{field}\b"):
        GenerationConfig(**{field: value})


def test_config_fields_have_help_and_roundtrip():
    from dataclasses import fields

    for f in fields(GenerationConfig):
        assert f.metadata.get("help"), f.name
    cfg = GenerationConfig(max_new_tokens=7, stop=["Q:"], system_prompt="be brief")
    assert cfg.stop == ("Q:",)
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="max_tokens"):
        GenerationConfig.from_dict({"max_tokens": 3})


def test_decoding_key_ignores_irrelevant_settings():
    assert GenerationConfig(temperature=0.3).decoding_key() == GenerationConfig().decoding_key()
    assert GenerationConfig(batch_size=2).decoding_key() == GenerationConfig().decoding_key()
    assert GenerationConfig(share_prefix=64).decoding_key() == GenerationConfig().decoding_key()
    assert GenerationConfig(max_new_tokens=5).decoding_key() != GenerationConfig().decoding_key()
    assert (GenerationConfig(do_sample=True, seed=1).decoding_key()
            != GenerationConfig(do_sample=True, seed=2).decoding_key())


# ------------------------------------------------------------------ batching


@pytest.mark.parametrize("family", ["qwen2", "llama", "gpt2", "gemma2"])
def test_batched_left_padded_equals_one_by_one(tiny, tok, family):
    model = tiny(family)
    cfg = GenerationConfig(max_new_tokens=10, batch_size=3)
    batched = generate(model, tok, PROMPTS, cfg, progress=False)
    single = [generate(model, tok, [p], cfg, progress=False)[0] for p in PROMPTS]
    assert batched == single


FEW_SHOT = "".join(f"Question: what is {a} plus {a + 3}?\nAnswer: {a} plus {a + 3} is {2 * a + 3}.\n\n"
                   for a in range(1, 9))


@pytest.mark.parametrize("family", ["qwen2", "llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("chat_template", [False, True])
def test_shared_prefix_runs_once_and_gives_the_same_text(tiny, tok, family, chat_template, monkeypatch):
    """A few-shot head shared by every prompt is run once; the tails of different lengths are padded between
    head and tail, so positions must follow the mask for the text to match the plain left-padded batches."""
    model = tiny(family)
    prompts = [FEW_SHOT + f"Question: {p}\nAnswer:" for p in PROMPTS]
    plain = generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, batch_size=3,
                                                           chat_template=chat_template), progress=False)
    seen = []
    inner = model.generate

    def spy(*a, **kw):
        seen.append((kw.get("past_key_values") is not None, kw["input_ids"].shape[0]))
        return inner(*a, **kw)

    monkeypatch.setattr(model, "generate", spy)
    shared = generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, batch_size=3, share_prefix=64,
                                                            chat_template=chat_template), progress=False)
    assert shared == plain
    assert seen == [(True, 3), (True, 2)]
    with intervene(model, Intervention(_all_mlp(model, [0]), "scale", alpha=3.0)):
        ablated_plain = generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, batch_size=3),
                                 progress=False)
    ablated = generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, batch_size=3, share_prefix=64),
                       progress=False,
                       interventions=Intervention(_all_mlp(model, [0]), "scale", alpha=3.0))
    assert ablated == ablated_plain != shared


def test_shared_head_needs_the_minimum_and_leaves_each_prompt_a_token():
    from safeneurons.evaluate.generate import _shared_head
    from safeneurons.stats.encode import Encoded

    enc = [Encoded([1, 2, 3, 4, 5], 5), Encoded([1, 2, 3, 4, 9, 9], 6), Encoded([1, 2, 3, 4], 4)]
    assert _shared_head(enc, 3) == 3  # the 4-token prompt keeps its last token
    assert _shared_head(enc[:2], 3) == 4
    assert _shared_head(enc[:2], 5) == 0
    assert _shared_head(enc[:2], None) == 0
    assert _shared_head(enc[:1], 1) == 0
    assert _shared_head([Encoded([7, 1], 2), Encoded([8, 1], 2)], 1) == 0


def test_order_preserved_and_only_new_text(tiny, tok, counting):
    model = tiny("qwen2")
    calls = counting(model)
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    detailed = generate_detailed(model, tok, PROMPTS, cfg, progress=False)
    assert calls.calls == 3 and calls.rows == len(PROMPTS)
    reverse = generate(model, tok, PROMPTS[::-1], cfg, progress=False)
    assert len({g.text for g in detailed}) > 1  # the prompts give different texts, so order is observable
    assert [g.text for g in detailed] == reverse[::-1]
    for g, p in zip(detailed, PROMPTS):
        assert p not in g.text and "assistant" not in g.text  # the prompt/template is not echoed
        assert 1 <= g.n_new_tokens <= 6 and g.finish_reason in {"eos", "length", "stop"}
        assert not g.cached


def test_raw_prompts_and_system_prompt_change_the_input(tiny, tok, counting):
    model = tiny("qwen2")
    calls = counting(model)
    seen = []
    inner = calls.inner

    def spy(*a, **kw):
        seen.append(tok.decode(kw["input_ids"][0], skip_special_tokens=False))
        return inner(*a, **kw)

    calls.inner = spy
    generate(model, tok, ["Hi"], GenerationConfig(max_new_tokens=2, chat_template=False), progress=False)
    generate(model, tok, ["Hi"], GenerationConfig(max_new_tokens=2, system_prompt="Be safe."), progress=False)
    assert seen[0] == "Hi"
    assert seen[1].startswith("<|im_start|>system\nBe safe.<|im_end|>") and seen[1].endswith("assistant\n")


def test_stop_strings_cut_the_text(tiny, tok):
    model = tiny("qwen2")
    base = generate_detailed(model, tok, PROMPTS, GenerationConfig(max_new_tokens=12), progress=False)
    # stop at the first ASCII letter after the first character (everything before it decodes identically)
    checked = 0
    for p, g in zip(PROMPTS, base):
        j = next((j for j in range(1, len(g.text)) if g.text[j].isascii() and g.text[j].isalpha()), None)
        if j is None:
            continue
        stop = g.text[j]
        checked += 1
        cut = generate_detailed(model, tok, [p], GenerationConfig(max_new_tokens=12, stop=(stop,)),
                                progress=False)[0]
        assert cut.finish_reason == "stop"
        assert cut.text == g.text[: g.text.find(stop)]
        assert stop not in cut.text
    assert checked >= 2


def test_prompt_validation(tiny, tok):
    model = tiny("qwen2")
    with pytest.raises(ConfigError, match="list of strings"):
        generate(model, tok, "one prompt", progress=False)
    with pytest.raises(ConfigError, match="prompt 1"):
        generate(model, tok, ["ok", 3], progress=False)  # type: ignore[list-item]
    assert generate(model, tok, [], progress=False) == []


# ------------------------------------------------------------------ sampling


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(tiny, tok):
    model = tiny("qwen2")
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, seed=3, batch_size=2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(model, tok, PROMPTS, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(model, tok, PROMPTS, cfg, progress=False)
    c = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.5, seed=4,
                                                       batch_size=2), progress=False)
    greedy = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=8), progress=False)
    assert a == b
    assert a != c
    assert a != greedy


# ------------------------------------------------------------------ interventions


def test_interventions_active_during_generation_and_removed(tiny, tok, counting):
    model = tiny("llama")
    ns = _all_mlp(model)
    cfg = GenerationConfig(max_new_tokens=8, batch_size=2)
    plain = generate(model, tok, PROMPTS, cfg, progress=False)
    calls = counting(model)
    pruned = generate(model, tok, PROMPTS, cfg, interventions=ns, progress=False)
    assert pruned != plain
    assert all(calls.hooked) and all(a == ["zero(all-mlp, n=128)"] for a in calls.active)
    assert hooks_left(model) == [] and active_interventions(model) == []
    # the same as hooking by hand around a plain call
    with intervene(model, ns):
        by_hand = generate(model, tok, PROMPTS, cfg, progress=False)
    assert by_hand == pruned
    assert hooks_left(model) == []


def test_interventions_change_logits_of_the_first_token(tiny, tok, counting):
    model = tiny("qwen2")
    calls = counting(model)
    scores = []
    inner = calls.inner

    def spy(*a, **kw):
        out = inner(*a, **kw, output_scores=True, return_dict_in_generate=True)
        scores.append(out.scores[0].clone())
        return out.sequences

    calls.inner = spy
    iv = Intervention(_all_mlp(model, layers=[1]), "scale", alpha=3.0)
    generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=1), progress=False)
    generate(model, tok, PROMPTS[:2], GenerationConfig(max_new_tokens=1), interventions=iv, progress=False)
    assert not torch.allclose(scores[0], scores[1])
    assert hooks_left(model) == []


def test_hooks_removed_when_generation_raises(tiny, tok, monkeypatch):
    model = tiny("qwen2")

    def boom(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "generate", boom)
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=2), interventions=_all_mlp(model),
                 progress=False)
    assert hooks_left(model) == [] and active_interventions(model) == []


# ------------------------------------------------------------------ cache


def test_cache_hit_on_rerun_and_misses_on_changes(tiny, tok, tmp_path, counting):
    model = tiny("qwen2")
    calls = counting(model)
    cache = GenerationCache(tmp_path / "gen.sqlite")
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2)
    first = generate(model, tok, PROMPTS, cfg, cache=cache, model_key="tiny-a", progress=False)
    assert calls.rows == len(PROMPTS)
    assert cache.stats()["misses"] == len(PROMPTS) and cache.stats()["entries"] == len(PROMPTS)

    calls.calls = calls.rows = 0
    cache.reset_stats()
    again = generate_detailed(model, tok, PROMPTS, GenerationConfig(max_new_tokens=6, batch_size=4), cache=cache,
                              model_key="tiny-a", progress=False)
    assert calls.calls == 0  # nothing generated
    assert [g.text for g in again] == first and all(g.cached for g in again)
    assert cache.stats()["hits"] == len(PROMPTS) and cache.stats()["misses"] == 0

    # a different intervention, decoding setting, template setting or model misses
    for kwargs, c in [
        ({"interventions": _all_mlp(model)}, cfg),
        ({"interventions": Intervention(_all_mlp(model), "scale", alpha=0.5)}, cfg),
        ({}, GenerationConfig(max_new_tokens=5, batch_size=2)),
        ({}, GenerationConfig(max_new_tokens=6, system_prompt="x")),
        ({"model_key": "tiny-b"}, cfg),
    ]:
        calls.calls = calls.rows = 0
        generate(model, tok, PROMPTS, c, cache=cache, progress=False, **{"model_key": "tiny-a", **kwargs})
        assert calls.rows == len(PROMPTS), kwargs
    assert hooks_left(model) == []

    # persisted: a fresh cache object on the same file hits
    cache.close()
    calls.calls = 0
    reopened = GenerationCache(tmp_path / "gen.sqlite")
    assert generate(model, tok, PROMPTS, cfg, cache=reopened, model_key="tiny-a", progress=False) == first
    assert calls.calls == 0


def test_cache_partial_hits_generate_only_misses(tiny, tok, counting):
    model = tiny("qwen2")
    calls = counting(model)
    cache = GenerationCache(":memory:")
    cfg = GenerationConfig(max_new_tokens=5, batch_size=8)
    part = generate(model, tok, PROMPTS[:2], cfg, cache=cache, model_key="m", progress=False)
    calls.rows = 0
    full = generate(model, tok, PROMPTS + [PROMPTS[3]], cfg, cache=cache, model_key="m", progress=False)
    assert calls.rows == 3  # duplicates are generated once
    assert full[:2] == part and full[5] == full[3]
    assert full == generate(model, tok, PROMPTS + [PROMPTS[3]], cfg, progress=False)


def test_interrupted_run_keeps_finished_batches(tiny, tok, tmp_path, monkeypatch):
    model = tiny("qwen2")
    inner = model.generate
    n = {"calls": 0}

    def flaky(*a, **kw):
        n["calls"] += 1
        if n["calls"] == 2:
            raise KeyboardInterrupt
        return inner(*a, **kw)

    monkeypatch.setattr(model, "generate", flaky)
    cache = GenerationCache(tmp_path)
    cfg = GenerationConfig(max_new_tokens=4, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        generate(model, tok, PROMPTS, cfg, cache=cache, model_key="m", progress=False)
    assert len(cache) == 2  # the first batch survived
    assert (tmp_path / "generations.sqlite").is_file()
    out = generate(model, tok, PROMPTS, cfg, cache=cache, model_key="m", progress=False)
    assert len(out) == len(PROMPTS) and len(cache) == len(PROMPTS)


def test_cache_needs_model_key_and_refuses_outside_hooks(tiny, tok):
    model = tiny("qwen2")
    cache = GenerationCache(":memory:")
    with pytest.raises(ConfigError, match="model_key"):
        generate(model, tok, PROMPTS, cache=cache, progress=False)
    with intervene(model, _all_mlp(model)):
        with pytest.raises(ConfigError, match="interventions=..."):
            generate(model, tok, PROMPTS, cache=cache, model_key="m", progress=False)


def test_cache_api(tmp_path):
    cache = GenerationCache(tmp_path / "sub" / "c.sqlite")
    k1 = cache_key("m", "none", "hello", {"max_new_tokens": 3})
    assert k1 == cache_key("m", "none", "hello", {"max_new_tokens": 3})
    assert k1 != cache_key("m", "none", "hello", {"max_new_tokens": 4})
    assert k1 != cache_key("m", "sha256:x", "hello", {"max_new_tokens": 3})
    assert cache.get_many([k1]) == {}
    assert cache.put_many({k1: {"text": "hi ✓", "n_new_tokens": 2}}) == 1
    assert cache.get_many([k1, "nope"]) == {k1: {"text": "hi ✓", "n_new_tokens": 2}}
    assert k1 in cache and "nope" not in cache
    assert cache.stats() == {"hits": 1, "misses": 2, "puts": 1, "entries": 1, "path": str(tmp_path / "sub" / "c.sqlite")}
    with pytest.raises(TypeError, match="text"):
        cache.put_many([("k", {"no_text": 1})])
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0
    cache.close()


def test_corrupt_cache_file_is_a_clear_error(tmp_path):
    from safeneurons.errors import DataError

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DataError, match="bad.sqlite"):
        GenerationCache(bad)


# ------------------------------------------------------------------ vLLM


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError even where installed
    with pytest.raises(SafeneuronsError, match=r"pip install 'safeneurons\[vllm\]'"):
        generate_vllm("/nonexistent/model", ["hi"], GenerationConfig())


# ------------------------------------------------------------------ over-refusal


def test_over_refusal_with_a_stub_judge(tiny, tok):
    from safeneurons.data.prompts import Prompt, PromptSet
    from safeneurons.evaluate.judges.base import Judge, Verdict
    from safeneurons.evaluate.overrefusal import over_refusal

    class LockJudge(Judge):
        name = "lock-stub"

        def __init__(self):
            self.items = []

        def judge_many(self, items):
            self.items += list(items)
            out = []
            for prompt, response, lang in items:
                if "lock" in prompt:
                    out.append(Verdict.of("refusal", reason="stub", judge=self.name))
                elif prompt == "Hi":
                    out.append(Verdict.of("unjudged", reason="stub", judge=self.name))
                else:
                    out.append(Verdict.of("compliance", reason="stub", judge=self.name))
            return out

    model = tiny("qwen2")
    ps = PromptSet("mini", [Prompt(p, id=f"p{i}", category="c1" if i % 2 else "c2", language="fr")
                            for i, p in enumerate(PROMPTS)])
    judge = LockJudge()
    res = over_refusal(model, tok, ps, judge=judge, generation=GenerationConfig(max_new_tokens=3),
                       interventions=_all_mlp(model), progress=False)
    assert res["n"] == 4 and res["k"] == 1 and res["refusal_rate"] == 0.25
    assert res["labels"] == {"compliance": 3, "refusal": 1, "unjudged": 1}
    lo, hi = res["ci95"]
    assert 0 < lo < 0.25 < hi < 1
    assert res["examples"][0]["id"] == "p4" and res["judge"] == "lock-stub"
    assert [v["id"] for v in res["verdicts"]] == [f"p{i}" for i in range(5)]
    assert [v["label"] for v in res["verdicts"]].count("refusal") == 1
    assert {lang for _, _, lang in judge.items} == {"fr"}
    assert res["by_category"]["c2"] == {"k": 1, "n": 3, "rate": pytest.approx(1 / 3)}
    assert res["by_category"]["c1"] == {"k": 0, "n": 1, "rate": 0.0}
    assert hooks_left(model) == []
