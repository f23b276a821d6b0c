"""Capability scoring (lm-eval conventions) against hand computations on tiny random models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from safeneurons.errors import ConfigError, DataError
from safeneurons.evaluate import capability as cap
from safeneurons.evaluate.capability import (
    BENCHMARKS,
    CapabilityResult,
    MCDoc,
    MCScores,
    arc_docs,
    encode_pair,
    evaluate_arc,
    evaluate_capability,
    evaluate_gsm8k,
    evaluate_mmlu,
    extract_gsm8k_answer,
    gsm8k_prefix,
    hellaswag_docs,
    hellaswag_preprocess,
    loglikelihoods,
    mean_stderr,
    mmlu_docs,
    normalize_number,
    perplexity,
    score_multiple_choice,
)
from safeneurons.intervene.hooks import intervene
from safeneurons.models.layout import model_layout
from safeneurons.neurons import NeuronSet
from tiny import hooks_left

ARC_ROWS = [
    {"id": "q1", "question": "What do you mix to make a cake?",
     "choices": {"text": ["flour and eggs", "the sea", "a lock"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    {"id": "q2", "question": "What trains the immune system?",
     "choices": {"text": ["vaccines", "wind", "a poem about the sea"], "label": ["1", "2", "3"]}, "answerKey": "1"},
]

MMLU_ROWS = [
    {"question": "What is 2 + 2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "Which organ pumps blood?", "subject": "anatomy", "choices": ["lung", "liver", "heart", "skin"],
     "answer": 2},
]
MMLU_DEV = [
    {"question": "What is 1 + 1?", "subject": "elementary_mathematics", "choices": ["2", "3", "4", "11"], "answer": 0},
    {"question": "What is 3 - 1?", "subject": "elementary_mathematics", "choices": ["1", "2", "0", "4"], "answer": 1},
    {"question": "Which bone is in the arm?", "subject": "anatomy", "choices": ["femur", "humerus", "tibia", "skull"],
     "answer": 1},
]


def hand_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens) from one plain unpadded forward pass of context + continuation."""
    ctx = tok(context)["input_ids"]
    whole = tok(context + continuation)["input_ids"]
    cont = whole[len(ctx):]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    return float(sum(lp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


def _mlp_set(model, layers=None) -> NeuronSet:
    shape = model_layout(model).shape()
    return NeuronSet(shape, {(layer, "mlp"): range(0, shape.site_sizes["mlp"], 2)
                             for layer in (layers or range(shape.n_layers))}, name="half-mlp")


# ------------------------------------------------------------------ encoding


def test_encode_pair_follows_lm_eval(tok):
    ctx, cont = encode_pair(tok, "Question: cake?\nAnswer:", " flour")
    assert ctx == tok("Question: cake?\nAnswer:")["input_ids"]
    assert ctx + cont == tok("Question: cake?\nAnswer: flour")["input_ids"]
    # trailing context spaces move to the continuation
    assert encode_pair(tok, "Answer: ", "flour") == encode_pair(tok, "Answer:", " flour")
    # empty context: conditioned on the BOS (here: EOS) token
    assert encode_pair(tok, "", "cake")[0] == [tok.eos_token_id]


# ------------------------------------------------------------------ multiple choice vs hand computation


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_arc_scoring_equals_hand_computation(tiny, tok, family):
    model = tiny(family)
    docs = arc_docs(ARC_ROWS)
    assert docs[0].context == "Question: What do you mix to make a cake?\nAnswer:"
    assert docs[1].gold == 0 and docs[0].choices == ("flour and eggs", "the sea", "a lock")
    scores = score_multiple_choice(model, tok, docs, batch_size=2)
    hand = [[hand_loglikelihood(model, tok, d.context, " " + c) for c in d.choices] for d in docs]
    np.testing.assert_allclose(scores.loglikelihoods, hand, rtol=1e-5, atol=1e-4)

    acc = np.mean([np.argmax(h) == d.gold for h, d in zip(hand, docs)])
    acc_norm = np.mean([np.argmax(np.array(h) / [len(c) for c in d.choices]) == d.gold for h, d in zip(hand, docs)])
    res = evaluate_arc(model, tok, rows=ARC_ROWS, batch_size=3, progress=False)
    assert res.task == "arc_challenge" and res.n == 2 and res.k_shot == 0
    assert res.acc == pytest.approx(acc) and res.acc_norm == pytest.approx(acc_norm)
    assert np.mean(res.correct) == pytest.approx(acc) and np.mean(res.correct_norm) == pytest.approx(acc_norm)
    assert res.score("acc_norm") == res.acc_norm and res.per_question("acc_norm") == res.correct_norm
    assert res.stderr == pytest.approx(mean_stderr([float(np.argmax(h) == d.gold) for h, d in zip(hand, docs)]),
                                       nan_ok=True)


def test_mmlu_prompt_and_scoring_equal_hand_computation(tiny, tok):
    model = tiny("llama")
    docs = mmlu_docs(MMLU_ROWS, MMLU_DEV, k_shot=1)
    assert docs[0].context == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "What is 1 + 1?\nA. 2\nB. 3\nC. 4\nD. 11\nAnswer: A\n\n"
        "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    )
    assert docs[1].context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n"
                                      "Which bone is in the arm?")
    assert docs[0].choices == ("A", "B", "C", "D") and [d.gold for d in docs] == [1, 2]
    scores = score_multiple_choice(model, tok, docs, batch_size=3)
    hand = [[hand_loglikelihood(model, tok, d.context, " " + c) for c in d.choices] for d in docs]
    np.testing.assert_allclose(scores.loglikelihoods, hand, rtol=1e-5, atol=1e-4)
    res = evaluate_mmlu(model, tok, rows=MMLU_ROWS, dev_rows=MMLU_DEV, k_shot=1, progress=False)
    assert res.acc == pytest.approx(np.mean([np.argmax(h) == d.gold for h, d in zip(hand, docs)]))
    assert res.k_shot == 1
    with pytest.raises(DataError, match="anatomy"):
        mmlu_docs(MMLU_ROWS, MMLU_DEV, k_shot=2)


def test_loglikelihoods_independent_of_batching(tiny, tok):
    model = tiny("qwen2")
    reqs = [(d.context, " " + c) for d in arc_docs(ARC_ROWS) + mmlu_docs(MMLU_ROWS) for c in d.choices]
    one = loglikelihoods(model, tok, reqs, batch_size=1)
    many = loglikelihoods(model, tok, reqs, batch_size=16)
    np.testing.assert_allclose([x for x, _ in one], [x for x, _ in many], rtol=1e-5, atol=1e-4)
    assert all(isinstance(g, bool) for _, g in many)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gemma2", "gemma3", "gpt2"])
def test_shared_context_prefix_equals_full_passes(tiny, tok, arch):
    """Choices scored after one cached pass over their common context equal full passes (hand computation),
    with and without interventions, batched or not, and no hook is left behind."""
    model = tiny(arch)
    docs = arc_docs(ARC_ROWS, k_shot=1) + arc_docs(ARC_ROWS)
    reqs = [(d.context, " " + c) for d in docs for c in d.choices] + [(docs[0].context, " A")]
    hand = [hand_loglikelihood(model, tok, c, x) for c, x in reqs]
    full = loglikelihoods(model, tok, reqs, share_prefix=None)
    for bs in (1, 2, 16):
        shared = loglikelihoods(model, tok, reqs, batch_size=bs, share_prefix=4)
        np.testing.assert_allclose([x for x, _ in shared], hand, rtol=1e-5, atol=1e-4)
        assert [g for _, g in shared] == [g for _, g in full]
    ns = _mlp_set(model)
    pruned = loglikelihoods(model, tok, reqs, share_prefix=4, interventions=ns)
    assert hooks_left(model) == []
    with intervene(model, ns):
        hand_pruned = [hand_loglikelihood(model, tok, c, x) for c, x in reqs]
    np.testing.assert_allclose([x for x, _ in pruned], hand_pruned, rtol=1e-5, atol=1e-4)
    assert not np.allclose(hand, hand_pruned)


def test_interventions_apply_to_scoring_and_leave_no_hooks(tiny, tok):
    model = tiny("qwen2")
    docs = arc_docs(ARC_ROWS)
    ns = _mlp_set(model)
    plain = score_multiple_choice(model, tok, docs).loglikelihoods
    pruned = score_multiple_choice(model, tok, docs, interventions=ns).loglikelihoods
    assert hooks_left(model) == []
    with intervene(model, ns):
        hand = [[hand_loglikelihood(model, tok, d.context, " " + c) for c in d.choices] for d in docs]
    np.testing.assert_allclose(pruned, hand, rtol=1e-5, atol=1e-4)
    assert not np.allclose(plain, pruned)


# ------------------------------------------------------------------ metrics


def test_acc_norm_divides_by_choice_length_in_characters():
    docs = [MCDoc("ctx", ("a", "bbbbbbbbbb"), gold=1), MCDoc("ctx", ("é", "ab"), gold=0)]
    # doc 0: raw argmax 0; per character -2/1 = -2 < -5/10 = -0.5, so acc_norm picks 1 (gold)
    # doc 1: raw argmax 0 (gold); per character -1.5/1 = -1.5 > -3.2/2 = -1.6, still 0
    scores = MCScores([[-2.0, -5.0], [-1.5, -3.2]], docs)
    assert scores.correct() == [0.0, 1.0]
    assert scores.correct("chars") == [1.0, 1.0]
    m = scores.metrics()
    assert m["acc"] == 0.5 and m["acc_norm"] == 1.0
    bytes_docs = [MCDoc("ctx", ("éé", "abc"), gold=1)]  # 4 bytes vs 3 bytes, 2 chars vs 3 chars
    s = MCScores([[-2.1, -3.0]], bytes_docs)  # chars: -1.05 vs -1.0 -> 1; bytes: -0.525 vs -1.0 -> 0
    assert s.correct("chars") == [1.0] and s.correct("bytes") == [0.0]


def test_mean_stderr_is_lm_eval_formula():
    assert mean_stderr([1, 0, 1, 1]) == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert math.isnan(mean_stderr([1]))


def test_bad_docs_are_rejected(tiny, tok):
    model = tiny("qwen2")
    with pytest.raises(DataError, match="gold index 3"):
        score_multiple_choice(model, tok, [MCDoc("c", ("a", "b"), gold=3, id="x")])
    with pytest.raises(DataError, match="answerKey"):
        arc_docs([{"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "Z"}])


# ------------------------------------------------------------------ few-shot and preprocessing


def test_arc_few_shot_excludes_the_question_and_is_seeded():
    rows = [{"id": f"r{i}", "question": f"Question number {i}?",
             "choices": {"text": [f"yes{i}", f"no{i}"], "label": ["A", "B"]}, "answerKey": "B"} for i in range(8)]
    docs = arc_docs(rows, k_shot=3, seed=1)
    for i, d in enumerate(docs):
        parts = d.context.split("\n\n")
        assert len(parts) == 4 and parts[-1] == f"Question: Question number {i}?\nAnswer:"
        for shot in parts[:3]:
            assert shot.startswith("Question: Question number ") and f"number {i}?" not in shot
            j = int(shot.split("number ")[1].split("?")[0])
            assert shot.endswith(f"\nAnswer: no{j}")
    assert arc_docs(rows, k_shot=3, seed=1) == docs
    assert arc_docs(rows, k_shot=3, seed=2) != docs
    assert arc_docs(rows, k_shot=2, seed=1, indices=[5])[0].id == "r5"
    with pytest.raises(ConfigError, match="k_shot"):
        arc_docs(rows[:2], k_shot=2)


def test_share_prefix_reaches_every_multiple_choice_task(tiny, tok, monkeypatch):
    """``share_prefix`` of the MC evaluators reaches the scorer (None: lm-eval's full passes), the scores
    equal either way; hellaswag's row is the lm-eval example above."""
    model = tiny("llama")
    seen = []
    real = cap.loglikelihoods

    def spy(*args, **kwargs):
        seen.append(kwargs["share_prefix"])
        return real(*args, **kwargs)

    monkeypatch.setattr(cap, "loglikelihoods", spy)
    row = {"ind": 1, "activity_label": "Baking", "ctx_a": "A cook mixes flour.", "ctx_b": "she",
           "endings": ["bakes it.", "swims.", "sings.", "reads."], "label": "0"}
    runs = {"arc": lambda sp: cap.evaluate_arc(model, tok, rows=ARC_ROWS, k_shot=1, progress=False, share_prefix=sp),
            "mmlu": lambda sp: cap.evaluate_mmlu(model, tok, rows=MMLU_ROWS, dev_rows=MMLU_DEV, k_shot=1,
                                                 progress=False, share_prefix=sp),
            "hellaswag": lambda sp: cap.evaluate_hellaswag(model, tok, rows=[row], progress=False, share_prefix=sp)}
    for name, run in runs.items():
        seen.clear()
        full, shared = run(None), run(4)
        assert seen == [None, 4], name
        np.testing.assert_allclose(full.correct, shared.correct)
        assert full.acc == pytest.approx(shared.acc) and full.acc_norm == pytest.approx(shared.acc_norm)


def test_hellaswag_preprocessing_matches_lm_eval():
    assert hellaswag_preprocess("Home and Garden: [header] How to clean [title] Wipe it.") == \
        "Home and Garden: How to clean. Wipe it."
    row = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
           "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                       "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": "3"}
    (doc,) = hellaswag_docs([row])
    assert doc.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert doc.gold == 3 and doc.choices[3] == "starts pulling up roofing on a roof." and doc.id == "24"


def test_subsample_is_seeded_and_sorted():
    a = cap.subsample(100, 10, seed=0)
    assert a == sorted(a) and len(set(a)) == 10 and a == cap.subsample(100, 10, seed=0)
    assert a != cap.subsample(100, 10, seed=1)
    assert cap.subsample(5, None) == list(range(5)) == cap.subsample(5, 50)
    with pytest.raises(ConfigError):
        cap.subsample(5, 0)


# ------------------------------------------------------------------ GSM8K


@pytest.mark.parametrize("text,expected", [
    ("Janet sells 16 - 3 - 4 = 9 eggs. She makes 9 * 2 = $18. So the answer is 18.", "18"),
    ("The answer is $1,234.", "1234"),
    ("so the answer is: -5", "-5"),
    ("It was - 3 degrees. So the answer is - 3.", "-3"),
    ("The answer is -$4.", "-4"),
    ("The answer is 18.00", "18"),
    ("So the answer is 2.5.", "2.5"),
    ("The answer is 6. Then 7 more came.", "6"),
    ("She has 3 apples and 4 pears, 7 in total", "7"),
    ("He paid $1,000,000 for it.", "1000000"),
    ("no numbers here", None),
    ("", None),
])
def test_gsm8k_answer_extraction(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_normalize_number():
    assert normalize_number("1,234.50") == "1234.5"
    assert normalize_number("$18.") == "18"
    assert normalize_number("-3.0") == "-3"
    assert normalize_number(" 42 ") == "42"


PREFIX = ("Question: One plus one?\nAnswer: 1 + 1 = 2. So the answer is 2.\n\n"
          "Question: Two times three?\nAnswer: 2 * 3 = 6. So the answer is 6.\n\n"
          "Question: Ten minus four?\nAnswer: 10 - 4 = 6. So the answer is 6.\n\n")
GSM_ROWS = [{"question": "What is 5 + 5?", "short_answer": "10"},
            {"question": "What is 2 * 4?", "short_answer": "8"},
            {"question": "What is 9 - 9?", "short_answer": "0"}]


def test_gsm8k_prompt_and_exact_match(tiny, tok, monkeypatch):
    import safeneurons.evaluate.generate as gen

    seen = {}

    def fake_generate(model, tokenizer, prompts, config, **kw):
        seen.update(prompts=list(prompts), config=config, kw=kw)
        return ["5 + 5 = 10. So the answer is 10.", "2 * 4 = 9. So the answer is 9.", "It is 0"]

    monkeypatch.setattr(gen, "generate", fake_generate)
    res = evaluate_gsm8k(tiny("qwen2"), tok, rows=GSM_ROWS, prefix=PREFIX, k_shot=2, progress=False)
    assert seen["prompts"][0] == (
        "Question: One plus one?\nAnswer: 1 + 1 = 2. So the answer is 2.\n\n"
        "Question: Two times three?\nAnswer: 2 * 3 = 6. So the answer is 6.\n\n"
        "Question: What is 5 + 5?\nAnswer:"
    )
    cfg = seen["config"]
    assert not cfg.do_sample and not cfg.chat_template and cfg.stop == ("Question:", "\n\n")
    assert res.acc == pytest.approx(2 / 3) and res.acc_norm is None and res.metric == "exact_match"
    assert res.n == 3 and res.k_shot == 2 and res.meta["no_answer"] == 0
    assert gsm8k_prefix(3, prefix=PREFIX) == PREFIX and gsm8k_prefix(0, prefix=PREFIX) == ""
    with pytest.raises(ConfigError, match="only 3 exemplars"):
        gsm8k_prefix(4, prefix=PREFIX)


def test_gsm8k_runs_end_to_end_with_interventions(tiny, tok):
    model = tiny("llama")
    res = evaluate_gsm8k(model, tok, rows=GSM_ROWS, prefix=PREFIX, k_shot=1, max_new_tokens=4,
                         interventions=_mlp_set(model), progress=False)
    assert res.n == 3 and 0.0 <= res.acc <= 1.0 and len(res.meta["examples"]) == 3
    assert hooks_left(model) == []


# ------------------------------------------------------------------ perplexity


def test_perplexity_equals_hand_computation(tiny, tok):
    model = tiny("qwen2")
    texts = ["Write a poem about the sea and the wind.", "cake", "Explain how vaccines train the immune system."]
    nll, count = 0.0, 0
    for t in texts:
        ids = tok(t)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        nll -= float(sum(lp[j, ids[j + 1]] for j in range(len(ids) - 1)))
        count += len(ids) - 1
    expected = math.exp(nll / count)
    assert perplexity(model, tok, texts, batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, tok, texts, batch_size=1) == pytest.approx(expected, rel=1e-5)
    pruned = perplexity(model, tok, texts, _mlp_set(model))
    assert pruned != pytest.approx(expected, rel=1e-4)
    assert hooks_left(model) == []
    with pytest.raises(DataError, match="two or more tokens"):
        perplexity(model, tok, [""])


# ------------------------------------------------------------------ results and registry


def test_capability_result_roundtrip():
    r = CapabilityResult("arc_challenge", 10, 0.3, 0.4, 0.15, 0, 1.5, acc_norm_stderr=0.16, meta={"seed": 0})
    d = json.loads(json.dumps(r.to_dict()))
    assert CapabilityResult.from_dict(d) == r
    g = CapabilityResult("gsm8k", 5, 0.2, None, 0.2, 8, 3.0, metric="exact_match")
    assert CapabilityResult.from_dict(g.to_dict()) == g


def test_registry_and_unknown_task(tiny, tok):
    assert BENCHMARKS.names() == ["arc_challenge", "gsm8k", "hellaswag", "mmlu"]
    assert BENCHMARKS.entry("gsm8k").meta["default_k_shot"] == 8
    with pytest.raises(ConfigError, match="arc_challenge"):
        evaluate_capability(tiny("qwen2"), tok, ["arc_challenge", "arc_chalenge"])


def test_evaluate_capability_passes_k_shot_and_interventions(tiny, tok, monkeypatch):
    calls = []

    def fake(model, tokenizer, **kw):
        calls.append(kw)
        return CapabilityResult("x", 1, 1.0, 1.0, 0.0, kw["k_shot"], 0.0)

    reg = cap.Registry("capability benchmark")
    reg.add("arc_challenge", fake, default_k_shot=0)
    reg.add("gsm8k", fake, default_k_shot=8)
    monkeypatch.setattr(cap, "BENCHMARKS", reg)
    out = evaluate_capability(tiny("qwen2"), tok, ["arc_challenge", "gsm8k"], n=5, interventions="IV",
                              k_shot={"arc_challenge": 25})
    assert list(out) == ["arc_challenge", "gsm8k"]
    assert [c["k_shot"] for c in calls] == [25, 8]
    assert all(c["n"] == 5 and c["interventions"] == "IV" for c in calls)


# ------------------------------------------------------------------ real dataset files (marker needs_data)


@pytest.mark.needs_data
def test_real_capability_files_parse():
    from safeneurons.data.datasets import read_jsonl_file, read_text_file

    arc = read_jsonl_file(cap.ARC_FILE)
    docs = arc_docs(arc, k_shot=2)
    assert len(docs) == 299 and all(0 <= d.gold < len(d.choices) for d in docs)
    dev = read_jsonl_file(cap.MMLU_DEV_FILE)
    mmlu = read_jsonl_file(cap.MMLU_TEST_FILE)
    assert len(mmlu) == 14042
    md = mmlu_docs(mmlu, dev, k_shot=5, indices=cap.subsample(len(mmlu), 50))
    assert all(d.context.count("\nAnswer:") == 6 for d in md)
    hs = read_jsonl_file(cap.HELLASWAG_FILE)
    hd = hellaswag_docs(hs, indices=range(200))
    assert all(len(d.choices) == 4 and "[" not in d.context for d in hd)
    gsm = read_jsonl_file(cap.GSM8K_FILE)
    # OLMES's rewritten solutions end "So the answer is N."; extraction must recover short_answer for all rows
    assert all(extract_gsm8k_answer(r["choices"][0]) == normalize_number(r["short_answer"]) for r in gsm)
    assert gsm8k_prefix(8) == read_text_file(cap.GSM8K_PREFIX_FILE)


@pytest.mark.needs_data
def test_evaluate_capability_on_real_files_tiny_model(tiny, tok):
    model = tiny("qwen2")
    out = evaluate_capability(model, tok, ["arc_challenge", "hellaswag", "mmlu"], n=3, progress=False,
                              interventions=_mlp_set(model))
    assert set(out) == {"arc_challenge", "hellaswag", "mmlu"}
    assert all(r.n == 3 and 0 <= r.acc <= 1 for r in out.values())
    assert hooks_left(model) == []


def test_paired_difference_uses_the_same_questions():
    from safeneurons.evaluate.capability import paired_difference

    def res(ids, correct):
        return CapabilityResult("arc_challenge", len(ids), sum(correct) / len(ids), None, 0.0, 0, 0.0,
                                ids=list(ids), correct=[float(c) for c in correct])

    base = res("abcdef", [1, 1, 0, 0, 1, 0])
    same_acc = res("fedcba", [0, 1, 0, 0, 1, 1])  # same questions right, listed in another order
    d = paired_difference(base, same_acc)
    assert d["n"] == 6 and d["delta"] == 0.0 and d["stderr"] == 0.0 and d["changed"] == 0
    worse = res("abcdefg", [0, 1, 0, 0, 1, 0, 1])  # one more question than the base: not compared
    d = paired_difference(base, worse)
    diffs = [-1, 0, 0, 0, 0, 0]
    assert d["n"] == 6 and d["delta"] == pytest.approx(-1 / 6) and d["changed"] == 1
    assert d["stderr"] == pytest.approx(np.std(diffs, ddof=1) / math.sqrt(6))
    assert d["ci"][0] < d["delta"] < d["ci"][1]
    with pytest.raises(DataError, match="per-question"):
        paired_difference(base, CapabilityResult("arc_challenge", 6, 0.5, None, 0.0, 0, 0.0))
    with pytest.raises(DataError, match="no questions"):
        paired_difference(base, res("xyz", [1, 0, 1]))
    back = CapabilityResult.from_dict(json.loads(json.dumps(worse.to_dict())))
    assert back.ids == worse.ids and back.correct == worse.correct
    # acc_norm is paired on its own per-question scores; results of different shot counts are not comparable
    normed = CapabilityResult("arc_challenge", 6, 0.5, 3 / 6, 0.0, 0, 0.0, ids=list("abcdef"),
                              correct=[1.0] * 6, correct_norm=[1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    other = CapabilityResult("arc_challenge", 6, 0.5, 4 / 6, 0.0, 0, 0.0, ids=list("abcdef"),
                             correct=[1.0] * 6, correct_norm=[1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    assert paired_difference(normed, other, metric="acc_norm")["delta"] == pytest.approx(1 / 6)
    assert paired_difference(normed, other)["delta"] == 0.0
    assert CapabilityResult.from_dict(json.loads(json.dumps(other.to_dict()))).correct_norm == other.correct_norm
    with pytest.raises(DataError, match="shot"):
        paired_difference(normed, CapabilityResult("arc_challenge", 6, 0.5, 0.5, 0.0, 25, 0.0, ids=list("abcdef"),
                                                   correct=[1.0] * 6, correct_norm=[1.0] * 6), metric="acc_norm")
    with pytest.raises(ConfigError, match="metric"):
        paired_difference(normed, other, metric="f1")
