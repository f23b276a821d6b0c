"""The safety-neuron monitor (:mod:`safeneurons.evaluate.monitor`): score helpers, fit/score, the file pair and its
checks, guarded generation, and the ``monitor`` commands.

The planted model: a tiny random Llama in which a few layer-0 MLP neurons fire at the last prompt token exactly
when the prompt contains the marker token ``~``, and nothing else in the model can see the marker. Residual
coordinate 0 carries ``~`` and coordinate 1 carries the benign marker ``#``; every weight that reads the residual
stream has those two columns zeroed, except one value dimension per marker in layer 0 (the same attention
head, so both markers arrive with the same weight) whose output is written back to coordinate 0 or 1 only,
and the planted neurons' gate and up rows, which read coordinate 0. Harmful and benign prompts are twins (the
same random words, ``~`` or ``#`` at the same place), so any other neuron sees identical inputs for a twin
pair: a monitor on the planted neurons must separate the groups perfectly, one on a random set not at all."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from safeneurons.errors import ConfigError, DataError
from safeneurons.evaluate.generate import GenerationConfig, generate_detailed
from safeneurons.evaluate.monitor import (
    Monitor,
    MonitorConfig,
    fit_monitor,
    guarded_generate,
    neuron_fingerprint,
    realised_fpr,
    roc_auc,
    threshold_for_fpr,
    tpr_at_fpr,
)
from safeneurons.models import model_layout
from safeneurons.neurons import NeuronSet

HARM_TOKEN, SAFE_TOKEN = 96, 5  # "~" and "#" in the tiny tokenizer: one token each, in no other text here
PLANTED = (3, 17, 40, 58)
WORDS = ["cake", "sea", "wind", "poem", "flour", "eggs", "sugar", "bake", "immune", "vaccines", "lock", "write", "explain", "tell", "sorry"]


def planted_model(make_tiny_model):
    model = make_tiny_model("llama", seed=0)
    hd = model.config.hidden_size // model.config.num_attention_heads
    d_harm, d_safe = 0, 1
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, [d_harm, d_safe]] = 0
        emb[HARM_TOKEN] = 0
        emb[HARM_TOKEN, d_harm] = 1
        emb[SAFE_TOKEN] = 0
        emb[SAFE_TOKEN, d_safe] = 1
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                lin.weight[:, [d_harm, d_safe]] = 0
            attn.o_proj.weight[[d_harm, d_safe], :] = 0
            mlp.down_proj.weight[[d_harm, d_safe], :] = 0
        model.lm_head.weight[:, [d_harm, d_safe]] = 0
        attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
        # value dims 0 and 1 of KV head 0 (read by query heads 0 and 1) carry the markers to the last token
        for vdim, d in ((0, d_harm), (1, d_safe)):
            attn.v_proj.weight[vdim] = 0
            attn.v_proj.weight[vdim, d] = 1
            cols = [vdim, hd + vdim]
            attn.o_proj.weight[:, cols] = 0
            attn.o_proj.weight[d, cols] = 1
        rows = list(PLANTED)
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight[rows] = 0
            lin.weight[rows, d_harm] = 4
        mlp.down_proj.weight[:, rows] = 0  # they fire, and change nothing downstream
    return model


def twins(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    harmful, harmless = [], []
    for _ in range(n):
        words = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(3, 9)))]
        k = int(rng.integers(0, len(words) + 1))
        harmful.append(" ".join([*words[:k], "~", *words[k:]]))
        harmless.append(" ".join([*words[:k], "#", *words[k:]]))
    return harmful, harmless


@pytest.fixture
def planted(tiny, tok):
    model = planted_model(tiny)
    shape = model_layout(model).shape()
    neurons = NeuronSet.from_triples(shape, [(0, "mlp", j) for j in PLANTED], name="planted")
    return model, tok, neurons


@pytest.fixture
def fitted(planted):
    model, tok, neurons = planted
    harmful, harmless = twins(40, seed=0)
    monitor = fit_monitor(model, tok, neurons, harmful, harmless, MonitorConfig(fprs=(0.0, 0.05)),
                          model_checksum="sha256:" + "a" * 64, model_name="planted-llama")
    return model, tok, neurons, monitor


# -- pure helpers ------------------------------------------------------------------------------------------


def test_roc_auc_matches_a_hand_computed_table_with_ties():
    pos, neg = [0.9, 0.8, 0.5, 0.5], [0.5, 0.3, 0.8]
    # 0.9 beats all 3; 0.8 beats 0.5 and 0.3, ties 0.8 (2.5); each 0.5 ties 0.5, beats 0.3, loses to 0.8 (1.5)
    assert roc_auc(pos, neg) == pytest.approx((3 + 2.5 + 1.5 + 1.5) / 12)
    assert roc_auc([1, 1], [1, 1, 1]) == 0.5
    assert roc_auc([2, 3], [0, 1]) == 1.0 and roc_auc([0, 1], [2, 3]) == 0.0
    with pytest.raises(DataError):
        roc_auc([], [1.0])


@given(st.lists(st.integers(0, 4), min_size=1, max_size=12), st.lists(st.integers(0, 4), min_size=1, max_size=12))
def test_roc_auc_is_the_pairwise_probability(pos, neg):
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in pos for q in neg]
    assert roc_auc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))


scores = st.one_of(
    st.lists(st.integers(0, 5).map(float), min_size=1, max_size=60),  # many ties
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=60),
)


@given(scores, st.floats(0, 1, exclude_max=True))
def test_threshold_for_fpr_gives_the_largest_rate_not_above_the_request(benign, fpr):
    b = np.asarray(benign)
    t = threshold_for_fpr(b, fpr)
    got = realised_fpr(b, t)
    assert got <= fpr
    # every threshold a flag rule `score > t` can realise: below all scores, and each score
    for cand in [-math.inf, *np.unique(b)]:
        rate = float(np.mean(b > cand))
        if rate <= fpr:
            assert rate <= got
            if rate == got:
                assert cand >= t  # and no smaller threshold gives the same rate (it would flag more positives)


def test_threshold_for_fpr_small_cases():
    b = [0.1, 0.2, 0.3, 0.3, 0.9]
    assert threshold_for_fpr(b, 0.2) == 0.3  # flags 0.9 only: 1/5
    assert threshold_for_fpr(b, 0.4) == 0.3  # 0.2 would flag three (0.6): the tie at 0.3 caps it at 1/5
    assert threshold_for_fpr(b, 0.0) == 0.9
    assert threshold_for_fpr(b, 0.99) == 0.1  # four of five above 0.1
    assert threshold_for_fpr([0.5] * 100, 0.29) == 0.5  # k / n rounding: 0.29 * 100 is 28.999...
    assert threshold_for_fpr(np.arange(100.0), 0.29) == 70.0 and realised_fpr(np.arange(100.0), 70.0) == 0.29
    assert tpr_at_fpr([0.95, 0.3, 0.31], b, 0.2) == pytest.approx(2 / 3)  # 0.3 ties the threshold: not flagged
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            threshold_for_fpr(b, bad)


def test_monitor_config_is_validated_at_load():
    from safeneurons.config import load_config

    cfg = load_config(MonitorConfig, None, ["fprs=[0.01, 0.1]", "held_out=0.5"])
    assert cfg.fprs == (0.01, 0.1) and cfg.held_out == 0.5
    for bad, needle in (("held_out=1.5", "held_out"), ("fprs=[1.0]", "fprs"), ("l2=0", "l2"), ("n=2", "fit.n ")):
        with pytest.raises(ConfigError, match=needle):
            load_config(MonitorConfig, None, [bad])


# -- fit and score -----------------------------------------------------------------------------------------


def test_planted_neurons_separate_the_groups_and_a_random_set_does_not(planted):
    model, tok, neurons = planted
    fit_h, fit_s = twins(40, seed=0)
    test_h, test_s = twins(30, seed=1)
    mon = fit_monitor(model, tok, neurons, fit_h, fit_s)
    assert roc_auc(mon.score(model, tok, test_h), mon.score(model, tok, test_s)) > 0.99
    assert mon.info["held_out"]["auc"] > 0.99
    control = neurons.random_matched(seed=1)
    rnd = fit_monitor(model, tok, control, fit_h, fit_s)
    assert abs(roc_auc(rnd.score(model, tok, test_h), rnd.score(model, tok, test_s)) - 0.5) < 0.1


def test_round_trip_through_the_file_pair_gives_identical_scores(fitted, tmp_path):
    model, tok, neurons, monitor = fitted
    prompts = [*twins(6, seed=3)[0], *twins(6, seed=3)[1]]
    before = monitor.score(model, tok, prompts)
    path = monitor.save(tmp_path / "mon")
    assert sorted(p.name for p in path.iterdir()) == ["monitor.json", "monitor.safetensors"]
    loaded = Monitor.load(path, model_checksum="sha256:" + "a" * 64, shape=model_layout(model).shape(),
                          neuron_set=neurons)
    assert np.array_equal(loaded.score(model, tok, prompts), before)
    assert loaded.thresholds == monitor.thresholds and loaded.neurons == neurons
    doc = json.loads((path / "monitor.json").read_text())
    assert doc["model"]["checksum"] == "sha256:" + "a" * 64 and doc["model"]["name"] == "planted-llama"
    assert doc["neuron_set"]["size"] == 4 and doc["neuron_set"]["fingerprint"] == neuron_fingerprint(neurons)
    assert [t["fpr"] for t in doc["thresholds"]] == [0.0, 0.05]
    assert all(t["realised_fpr"] <= t["fpr"] for t in doc["thresholds"])
    assert doc["tensors"]["sha256"].startswith("sha256:") and doc["encoding"]["position"] == "last"
    assert Monitor.load(path / "monitor.json").thresholds == monitor.thresholds  # the JSON path works too


def test_load_refuses_other_weights_shapes_and_sets(fitted, tmp_path, tiny):
    _, tok, neurons, monitor = fitted
    path = monitor.save(tmp_path / "mon")
    with pytest.raises(ConfigError, match="monitor.json: fitted on model weights sha256:aaa") as err:
        Monitor.load(path, model_checksum="sha256:" + "b" * 64)
    assert "\n" not in str(err.value)
    bigger = tiny("llama", layers=3)
    with pytest.raises(ConfigError, match=r"monitor.json: fitted for a 2-layer model.*3 layers"):
        Monitor.load(path, shape=model_layout(bigger).shape())
    with pytest.raises(ConfigError, match="fitted for a 2-layer model"):
        monitor.score(bigger, tok, ["hello"])
    other_shape = NeuronSet.from_triples(model_layout(bigger).shape(), [(2, "mlp", 3)], name="deep")
    with pytest.raises(ConfigError, match=r"monitor.json: reads a neuron set of a 2-layer model"):
        Monitor.load(path, neuron_set=other_shape)
    with pytest.raises(ConfigError, match=r"monitor.json: reads neuron set 'planted' \(4 neurons"):
        Monitor.load(path, neuron_set=neurons.random_matched(seed=2))
    Monitor.load(path, model_checksum="sha256:" + "a" * 64, neuron_set=neurons)  # the right ones pass


def test_load_refuses_a_broken_pair(fitted, tmp_path):
    _, _, _, monitor = fitted
    path = monitor.save(tmp_path / "mon")
    other = monitor.save(tmp_path / "other")
    with pytest.raises(DataError, match="no monitor here"):
        Monitor.load(tmp_path / "nothing")
    doc = json.loads((path / "monitor.json").read_text())
    doc["tensors"]["sha256"] = "sha256:" + "0" * 64
    (other / "monitor.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="does not match the sha256"):
        Monitor.load(other)
    (path / "monitor.safetensors").unlink()
    with pytest.raises(DataError, match="tensor file .* is missing"):
        Monitor.load(path)


# -- guarded generation ------------------------------------------------------------------------------------


def _count_passes(model):
    """A pre-hook on the decoder stack recording the input length of every forward pass."""
    lengths: list[int] = []

    def pre(_module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs.get("inputs_embeds")
        lengths.append(int(ids.shape[1]))

    return lengths, model.model.register_forward_pre_hook(pre, with_kwargs=True)


def test_guarded_generate_refuses_flagged_prompts_and_leaves_the_rest_exact(fitted):
    model, tok, _, monitor = fitted
    harmful, harmless = twins(5, seed=7)
    prompts = [p for pair in zip(harmful, harmless) for p in pair]  # flagged and unflagged rows share batches
    cfg = GenerationConfig(max_new_tokens=6, batch_size=4)
    lengths, handle = _count_passes(model)
    try:
        plain = generate_detailed(model, tok, prompts, cfg, progress=False)
        plain_passes, lengths[:] = list(lengths), []
        guarded = guarded_generate(model, tok, prompts, monitor, monitor.threshold(0.05), cfg, refusal="NO.")
        guarded_passes = list(lengths)
    finally:
        handle.remove()
    n_batches = math.ceil(len(prompts) / cfg.batch_size)
    assert sum(n > 1 for n in plain_passes) == n_batches
    assert sum(n > 1 for n in guarded_passes) == n_batches  # one prefill per batch, no scoring pass
    assert len(guarded_passes) <= len(plain_passes)
    for i, (g, p) in enumerate(zip(guarded, plain)):
        assert g.flagged == (i % 2 == 0), (i, g.score)
        if g.flagged:
            assert g.text == "NO." and g.generation is None
        else:
            assert g.generation == p and g.text == p.text
    scores = monitor.score(model, tok, prompts)
    assert np.allclose([g.score for g in guarded], scores, atol=1e-6)


def test_guarded_generate_stops_a_batch_whose_rows_are_all_flagged(fitted):
    model, tok, _, monitor = fitted
    harmful = twins(6, seed=8)[0]
    lengths, handle = _count_passes(model)
    try:
        out = guarded_generate(model, tok, harmful, monitor, monitor.threshold(0.0),
                               GenerationConfig(max_new_tokens=8, batch_size=3))
    finally:
        handle.remove()
    assert all(g.flagged for g in out)
    assert len(lengths) == 2 and all(n > 1 for n in lengths)  # two prefills, no decoding step


def test_guarded_generate_reads_what_interventions_leave_and_checks_rendering(fitted):
    model, tok, neurons, monitor = fitted
    harmful = twins(4, seed=9)[0]
    cfg = GenerationConfig(max_new_tokens=2, batch_size=4)
    t = monitor.threshold(0.05)
    assert all(g.flagged for g in guarded_generate(model, tok, harmful, monitor, t, cfg))
    ablated = guarded_generate(model, tok, harmful, monitor, t, cfg, interventions=neurons)  # zeroed: benign
    assert not any(g.flagged for g in ablated)
    with pytest.raises(ConfigError, match="chat_template=True"):
        guarded_generate(model, tok, harmful, monitor, t, GenerationConfig(chat_template=False))
    with pytest.raises(ConfigError, match="threshold"):
        guarded_generate(model, tok, harmful, monitor, float("nan"), cfg)


def test_prefill_capture_keeps_the_first_pass_after_reset(fitted):
    from safeneurons.evaluate.monitor import PrefillCapture, neuron_activations

    model, tok, neurons, _ = fitted
    a, b = twins(1, seed=4)
    ids = [tok(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True), return_tensors="pt")["input_ids"] for p in (a[0], b[0])]
    cap = PrefillCapture(model, neurons)
    with cap.attached(), torch.no_grad():
        cap.reset()
        model(input_ids=ids[0])
        model(input_ids=ids[1])  # a later pass (a decoding step) is ignored
        first = cap.features()
        cap.reset()
        model(input_ids=ids[1])
        second = cap.features()
    assert np.allclose(first, neuron_activations(model, tok, a, neurons), atol=1e-6) and (first > 1).all()
    assert np.array_equal(second, np.zeros_like(second))  # the benign twin: the planted neurons stay at 0


# -- command line ------------------------------------------------------------------------------------------


def test_monitor_fit_and_score_commands(planted, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from safeneurons.cli.main import app

    monkeypatch.setenv("SAFENEURONS_CACHE", str(tmp_path / "cache"))
    model, tok, neurons = planted
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    neurons.save(tmp_path / "planted.json")
    harmful, harmless = twins(30, seed=0)
    (tmp_path / "harmful.txt").write_text("\n".join(harmful))
    (tmp_path / "harmless.txt").write_text("\n".join(harmless))
    test_h, test_s = twins(4, seed=5)
    (tmp_path / "mixed.txt").write_text("\n".join([*test_h, *test_s]))
    runner = CliRunner()
    res = runner.invoke(app, ["monitor", "fit", "--model", str(model_dir), "--neurons", str(tmp_path / "planted.json"),
                              "--harmful", str(tmp_path / "harmful.txt"), "--harmless", str(tmp_path / "harmless.txt"),
                              "--set", "fit.fprs=[0.05]", "--out", str(tmp_path / "mon"), "-q"])
    assert res.exit_code == 0, res.output
    assert "held-out AUC 1.000" in res.output
    doc = json.loads((tmp_path / "mon" / "monitor.json").read_text())
    assert doc["model"]["checksum"].startswith("sha256:") and doc["model"]["spec"] == str(model_dir)
    res = runner.invoke(app, ["monitor", "score", "--monitor", str(tmp_path / "mon"), "--prompts",
                              str(tmp_path / "mixed.txt"), "--fpr", "0.05", "--out", str(tmp_path / "s.jsonl"), "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["flagged"] for r in rows] == [True] * 4 + [False] * 4
    assert "flagged 4 of 8 prompts" in res.output
    res = runner.invoke(app, ["monitor", "score", "--monitor", str(tmp_path / "mon"), "--prompts",
                              str(tmp_path / "mixed.txt"), "--fpr", "0.01"])
    assert res.exit_code == 2 and "no threshold for FPR 0.01 (it has: 0.05)" in res.output
    res = runner.invoke(app, ["monitor", "fit", "--model", str(model_dir), "--neurons", str(tmp_path / "planted.json"),
                              "--set", "fit.held_out=1.5", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "fit.held_out" in res.output and not (tmp_path / "bad").exists()
