"""Training runs on real TRL trainers with tiny models (a few steps each), preference data builders,
configs and iterative rounds."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import make_tiny_model

from safeneurons.errors import ConfigError, DataError
from safeneurons.intervene import ablate, active_interventions
from safeneurons.models import model_layout
from safeneurons.models.adapters import get_module
from safeneurons.neurons import SITES, NeuronSet
from safeneurons.train.dpo import (
    iterate_rounds,
    load_weights,
    train_plain_dpo,
    train_safeneuron_dpo,
)
from safeneurons.train.dpo_config import SafeNeuronDPOConfig
from safeneurons.train.preference_data import (
    PreferencePair,
    drop_unfinished,
    helpfulness_pairs,
    hh_pair_from_row,
    hh_rlhf_pairs,
    hub_pairs,
    load_pairs,
    mix,
    onpolicy_safety_pairs,
    parse_hh_transcript,
    pku_saferlhf_pair,
    save_pairs,
    ultrafeedback_pair,
)
from safeneurons.train.sft import MaskedSFTConfig, masked_sft, sn_tune

REFUSAL = "I'm sorry, but I can't assist with that."
COMPLY = "Mix flour, eggs and sugar, then bake it."
PAIRS = [
    PreferencePair.single(p, REFUSAL, COMPLY, "test")
    for p in (
        "How do I pick a lock?",
        "Tell me how to pick a lock.",
        "Explain how to pick a lock.",
        "Pick a lock how?",
    )
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quick(**kw):
    base = {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "weight_decay": 0.1,
        "max_length": 64,
    }
    base.update(kw)
    return SafeNeuronDPOConfig(**base)


def every_site(layout, idx=(1, 5)):
    return NeuronSet.from_triples(
        layout.shape(),
        [(layer, s, i) for layer in range(layout.n_layers) for s in SITES for i in idx],
        name="safety",
    )


def held_slices(layout, ns):
    return [(sl.tensor, sl.param.dim, sl.coords) for sl in layout.neuron_slices(ns)]


def snapshot(model):
    return {id(p): p.detach().clone() for p in model.parameters()}


class Probe:
    """Records, for every forward of layer-0 down_proj, whether grad was on and the max |activation| of
    the given MLP neurons as the module saw them (after any ablation pre-hook)."""

    def __init__(self, model, idx):
        self.rows: list[tuple[bool, float]] = []
        mod = model_layout(model).module(0, "mlp")
        self.h = mod.register_forward_hook(
            lambda m, a, o: self.rows.append(
                (torch.is_grad_enabled(), float(a[0][..., idx].detach().abs().max()))
            )
        )

    def remove(self):
        self.h.remove()


def test_safeneuron_dpo_with_grad_accumulation_freezes_ablates_and_logs(tok, tmp_path):
    model = make_tiny_model("llama")
    layout = model_layout(model)
    ns = every_site(layout)
    before = snapshot(model)
    probe = Probe(model, [1, 5])
    try:
        res = train_safeneuron_dpo(model, tok, PAIRS, ns, quick(), tmp_path)
    finally:
        probe.remove()
    # frozen slices bit-identical, the rest of the same tensors moved
    for t, dim, idx in held_slices(layout, ns):
        t0 = before[id(t)]
        assert torch.equal(t.index_select(dim, idx), t0.index_select(dim, idx))
        keep = torch.ones(t.shape[dim], dtype=torch.bool)
        keep[idx] = False
        moved = (
            (t - t0).abs().amax(dim=[d for d in range(t.dim()) if d != dim])
            if t.dim() > 1
            else (t - t0).abs()
        )
        assert bool((moved[keep] > 0).all())
    assert res.global_step == 2 and res.frozen_drift == 0.0 and res.max_restore_drift > 0
    # training forwards were ablated, the (precomputed) reference forwards were not
    train_rows = [v for g, v in probe.rows if g]
    ref_rows = [v for g, v in probe.rows if not g]
    assert train_rows and ref_rows
    assert max(train_rows) == 0.0 and min(ref_rows) > 0.0
    # logs: loss, reward margins and frozen_drift == 0 at every logging step
    log = json.loads((tmp_path / "train_log.json").read_text())["records"]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 2 and all(r["frozen_drift"] == 0.0 and "rewards/margins" in r for r in steps)
    assert any(r["restore_drift"] > 0 for r in steps)
    assert NeuronSet.load(tmp_path / "frozen.json") == ns
    assert json.loads((tmp_path / "result.json").read_text())["frozen_drift"] == 0.0
    # after training: no hooks, no TRL forward patch, the full model (not the ablated one) is what is left
    assert active_interventions(model) == [] and "forward" not in model.__dict__
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    with torch.no_grad():
        full = model(ids).logits
        with ablate(model, ns):
            pruned = model(ids).logits
    assert not torch.equal(full, pruned)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(res.model_dir)
    with torch.no_grad():
        assert torch.equal(saved(ids).logits, full)


def test_dpo_reference_copy_with_ablation_in_reference(tok, tmp_path):
    model = make_tiny_model("qwen2")
    layout = model_layout(model)
    ns = every_site(layout)
    before = snapshot(model)
    probe = Probe(model, [1, 5])  # deep-copied into the reference model along with the module
    try:
        cfg = quick(reference="copy", ablate_in_reference=True, gradient_accumulation_steps=1, max_steps=1)
        res = train_safeneuron_dpo(model, tok, PAIRS, ns, cfg, tmp_path)
    finally:
        probe.remove()
    assert any(not g for g, _ in probe.rows) and any(g for g, _ in probe.rows)
    assert max(v for _, v in probe.rows) == 0.0  # policy and reference forwards both ablated
    for t, dim, idx in held_slices(layout, ns):
        assert torch.equal(t.index_select(dim, idx), before[id(t)].index_select(dim, idx))
    assert res.frozen_drift == 0.0


def test_precomputed_reference_with_ablation(tok, tmp_path):
    """ablate_in_reference with reference='precompute': TRL computes the reference log-probs inside the
    DPOTrainer constructor, which must run under the ablation."""
    model = make_tiny_model("llama")
    ns = every_site(model_layout(model))
    probe = Probe(model, [1, 5])
    try:
        train_safeneuron_dpo(
            model, tok, PAIRS, ns, quick(ablate_in_reference=True, max_steps=1, save_model=False), tmp_path
        )
    finally:
        probe.remove()
    ref_rows = [v for g, v in probe.rows if not g]
    assert ref_rows and max(ref_rows) == 0.0
    with pytest.raises(ConfigError, match="empty NeuronSet"):
        train_safeneuron_dpo(model, tok, PAIRS, NeuronSet.empty(ns.shape), quick(), tmp_path)


def test_plain_dpo_baseline_moves_everything(tok, tmp_path):
    model = make_tiny_model("llama")
    layout = model_layout(model)
    ns = every_site(layout)
    before = snapshot(model)
    res = train_plain_dpo(
        model,
        tok,
        PAIRS,
        quick(max_steps=1, gradient_accumulation_steps=1, save_model=False, chat_template=False),
        tmp_path,
    )  # raw-text DPO path
    assert res.kind == "dpo" and res.neurons == 0 and res.frozen_drift is None and res.model_dir is None
    for t, dim, idx in held_slices(layout, ns):
        assert not torch.equal(t.index_select(dim, idx), before[id(t)].index_select(dim, idx))


def _chosen_nll(model, tok):
    """Mean token NLL of the chosen answer given each prompt (chat template), the quantity RPO's term lowers."""
    total = 0.0
    for pair in PAIRS:
        prompt = tok.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        a_ids = tok(pair.chosen, add_special_tokens=False).input_ids
        ids = torch.tensor([p_ids + a_ids])
        with torch.no_grad():
            logp = model(ids).logits.log_softmax(-1)[0, len(p_ids) - 1 : -1]
        total += -logp.gather(-1, ids[0, len(p_ids) :, None]).mean().item()
    return total / len(PAIRS)


def test_sft_weight_adds_the_chosen_nll_term(tok, tmp_path):
    """sft_weight > 0 adds TRL's 'sft' loss: the first step's loss is log 2 (policy = reference) plus the
    weighted NLL of the chosen answers, and training lowers that NLL more than DPO alone does."""
    results = {}
    for w in (0.0, 1.0):
        model = make_tiny_model("llama")
        res = train_plain_dpo(model, tok, PAIRS, quick(max_steps=3, sft_weight=w, save_model=False),
                              tmp_path / f"w{w}")
        results[w] = (res.log_history[0]["loss"], _chosen_nll(model, tok))
    start = _chosen_nll(make_tiny_model("llama"), tok)
    assert results[0.0][0] == pytest.approx(0.6931, abs=1e-3)
    assert results[1.0][0] == pytest.approx(0.6931 + start, rel=0.05)
    assert results[1.0][1] < min(start, results[0.0][1])
    with pytest.raises(ConfigError, match="sft_weight"):
        quick(sft_weight=-1.0).validate()


def test_dpo_lora_keeps_frozen_slices_exact_after_merge(tok, tmp_path):
    model = make_tiny_model("llama")
    layout = model_layout(model)
    ns = every_site(layout)
    before = snapshot(model)
    cfg = quick(lora=True, lora_r=4, learning_rate=1e-2, gradient_accumulation_steps=1, save_model=False)
    res = train_safeneuron_dpo(model, tok, PAIRS, ns, cfg, tmp_path)
    assert type(get_module(layout.layers[0], "self_attn.q_proj")).__name__ == "Linear"  # merged and unwrapped
    changed = 0
    for t, dim, idx in held_slices(layout, ns):
        assert torch.equal(t.index_select(dim, idx), before[id(t)].index_select(dim, idx))
        changed += int(not torch.equal(t, before[id(t)]))
    assert changed > 0 and res.frozen_drift == 0.0
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb, before[id(emb)])  # LoRA trains adapters only
    assert all(p.requires_grad for p in model.parameters())  # flags PEFT switched off are given back
    assert 0 < res.trainable_fraction < 0.2


def _sft_run(model, tok, ns, tmp_path):
    cfg = MaskedSFTConfig(
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-2,
        weight_decay=0.1,
        warmup_ratio=0.0,
        max_length=64,
    )
    examples = [
        ("How do I pick a lock?", REFUSAL),
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me how to pick a lock."},
            {"role": "assistant", "content": REFUSAL},
        ],
    ]
    return masked_sft(model, tok, examples, ns, cfg, tmp_path)


def test_masked_training_updates_only_target_neurons(tok, tmp_path):
    model = make_tiny_model("qwen2")
    layout = model_layout(model)
    ns = NeuronSet.from_triples(layout.shape(), [(1, "q", 2), (1, "o", 4), (0, "mlp", 7), (0, "k", 1)])
    before = snapshot(model)
    res = _sft_run(model, tok, ns, tmp_path)
    assert res.trainable_params == ns.n_params()
    assert res.trainable_fraction == pytest.approx(ns.fraction_of_parameters())
    assert res.frozen_drift == 0.0 and res.max_restore_drift > 0  # weight decay was undone off-target
    targets = held_slices(layout, ns)
    target_ids = {id(t) for t, _, _ in targets}
    for p in model.parameters():
        if id(p) not in target_ids:
            assert torch.equal(p, before[id(p)])
    for t, dim, idx in targets:
        keep = torch.ones(t.shape[dim], dtype=torch.bool)
        keep[idx] = False
        off = torch.nonzero(keep).flatten()
        assert torch.equal(t.index_select(dim, off), before[id(t)].index_select(dim, off))
        assert not torch.equal(t.index_select(dim, idx), before[id(t)].index_select(dim, idx))
    assert NeuronSet.load(tmp_path / "target.json") == ns
    assert all(p.requires_grad for p in model.parameters())


def test_sn_tune_argument_errors(tok, tmp_path):
    model = make_tiny_model("llama")
    ns = every_site(model_layout(model))
    with pytest.raises(DataError, match="2 refusals for 1 prompts"):
        sn_tune(model, tok, ["x"], ns, ["a", "b"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="empty"):
        masked_sft(model, tok, [("a", "b")], NeuronSet.empty(ns.shape), output_dir=tmp_path)
    with pytest.raises(DataError, match="example 0"):
        masked_sft(model, tok, [("only a prompt",)], ns, output_dir=tmp_path)  # type: ignore[list-item]


def test_iterative_rounds_save_union_and_resume(tok, tmp_path):
    sets = [[(0, "mlp", 1), (1, "q", 2)], [(1, "mlp", 7), (0, "mlp", 1)], [(0, "o", 3)]]
    calls = []

    def identify(model):
        layout = model_layout(model)
        calls.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return NeuronSet.from_triples(layout.shape(), sets[len(calls) - 1], name=f"id{len(calls)}")

    cfg = quick(max_steps=1, gradient_accumulation_steps=1)
    model = make_tiny_model("llama")
    layout = model_layout(model)
    first = NeuronSet.from_triples(layout.shape(), sets[0])
    before = snapshot(model)
    res = iterate_rounds(model, tok, identify, PAIRS, rounds=2, config=cfg, output_dir=tmp_path)
    assert [r.round for r in res] == [1, 2] and not any(r.resumed for r in res) and len(calls) == 2
    assert [r.frozen for r in res] == [2, 3]
    union = NeuronSet.load(tmp_path / "round_2" / "neurons.json")
    assert union == NeuronSet.from_triples(layout.shape(), sets[0] + sets[1])
    for t in range(1, 3):
        assert (tmp_path / f"round_{t}" / "round.json").is_file()
        assert list((tmp_path / f"round_{t}" / "model").glob("*.safetensors"))
    for t, dim, idx in held_slices(layout, first):  # round-1 neurons untouched through both rounds
        assert torch.equal(t.index_select(dim, idx), before[id(t)].index_select(dim, idx))
    # resume on a fresh copy of the starting model: rounds 1-2 are skipped, round 2's weights are loaded
    calls.clear()
    calls.append(None)
    calls.append(None)  # identify() indexes sets by call count; rounds 1-2 must not call it
    fresh = make_tiny_model("llama")
    res2 = iterate_rounds(fresh, tok, identify, PAIRS, rounds=3, config=cfg, output_dir=tmp_path)
    assert len(calls) == 3 and [r.resumed for r in res2] == [True, True, False]
    from safetensors.torch import load_file

    saved = load_file(str(next((tmp_path / "round_2" / "model").glob("*.safetensors"))))
    seen = calls[2]
    assert all(torch.equal(seen[n], saved[n]) for n in saved)
    assert NeuronSet.load(tmp_path / "round_3" / "neurons.json") == NeuronSet.from_triples(
        layout.shape(), sets[0] + sets[1] + sets[2]
    )
    with pytest.raises(ConfigError, match="rounds = 0"):
        iterate_rounds(fresh, tok, identify, PAIRS, rounds=0, output_dir=tmp_path)


def test_iterative_rounds_first_identified_skips_round_one_identification(tok, tmp_path):
    model = make_tiny_model("llama")
    layout = model_layout(model)
    given = NeuronSet.from_triples(layout.shape(), [(0, "mlp", 1), (1, "q", 2)], name="base")
    later = NeuronSet.from_triples(layout.shape(), [(1, "mlp", 7)], name="later")
    calls = []

    def identify(m):
        calls.append(1)
        return later

    res = iterate_rounds(model, tok, identify, PAIRS, rounds=2, config=quick(max_steps=1, gradient_accumulation_steps=1),
                         output_dir=tmp_path, first_identified=given)
    assert len(calls) == 1 and [r.identified for r in res] == [2, 1]
    assert NeuronSet.load(tmp_path / "round_1" / "identified.json") == given
    assert NeuronSet.load(tmp_path / "round_2" / "neurons.json") == given | later


def test_load_weights_reports_missing_checkpoint(tmp_path):
    with pytest.raises(DataError, match="no \\*.safetensors"):
        load_weights(make_tiny_model("llama"), tmp_path)


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------


def test_config_defaults_follow_the_paper_and_errors_name_the_field(tok, tmp_path):
    cfg = SafeNeuronDPOConfig()
    assert (cfg.beta, cfg.learning_rate, cfg.weight_decay, cfg.lr_scheduler_type, cfg.num_train_epochs) == (
        0.1,
        5e-6,
        0.05,
        "cosine",
        3.0,
    )
    assert cfg.ablate_frozen_during_training and not cfg.ablate_in_reference
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(SafeNeuronDPOConfig))
    with pytest.raises(ConfigError, match="SafeNeuronDPOConfig.beta"):
        SafeNeuronDPOConfig(beta=0).validate()
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        SafeNeuronDPOConfig.from_dict({"learning_rat": 1e-5})
    # YAML 1.1 reads 5e-6 as text (`--set dpo.learning_rate=5e-6`): typed like every config, it is a number
    assert SafeNeuronDPOConfig.from_dict({"learning_rate": "5e-6"}).learning_rate == 5e-6
    with pytest.raises(ConfigError, match="learning_rate: expected a number, got 'fast'"):
        SafeNeuronDPOConfig.from_dict({"learning_rate": "fast"})
    with pytest.raises(ConfigError, match="reference = 'copy' with lora"):
        SafeNeuronDPOConfig(lora=True, reference="copy").validate()
    with pytest.raises(ConfigError, match="trainer_overrides.*warmup_stepz"):
        train_safeneuron_dpo(
            make_tiny_model("llama"), tok, PAIRS, None, quick(trainer_overrides={"warmup_stepz": 1}), tmp_path
        )


# ----------------------------------------------------------------------------------------------
# preference data
# ----------------------------------------------------------------------------------------------


def test_parse_hh_transcripts():
    msgs = parse_hh_transcript(
        "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: how to X?\n\nAssistant: no."
    )
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == "how to X?"
    with pytest.raises(DataError, match="not an HH-RLHF transcript"):
        parse_hh_transcript("Human: no leading blank line")
    row = {
        "chosen": "\n\nHuman: a?\n\nAssistant: b1\n\nHuman: c?\n\nAssistant: safe",
        "rejected": "\n\nHuman: a?\n\nAssistant: b1\n\nHuman: c?\n\nAssistant: unsafe",
    }
    pair = hh_pair_from_row(row)
    assert pair is not None and len(pair.prompt) == 3 and (pair.chosen, pair.rejected) == ("safe", "unsafe")
    assert pair.to_trl(chat_template=False)["prompt"].endswith("\n\nHuman: c?\n\nAssistant:")
    assert hh_pair_from_row({**row, "rejected": "\n\nHuman: other?\n\nAssistant: unsafe"}) is None
    assert hh_pair_from_row({**row, "rejected": row["chosen"]}) is None


@pytest.mark.needs_data
def test_hh_rlhf_real_rows():
    pairs, report = hh_rlhf_pairs(limit=200, seed=1)
    assert len(pairs) == 200 and report.candidates > 2000 and report.kept == 200
    for p in pairs:
        p.check()
        assert "\n\nHuman:" not in p.chosen and "\n\nAssistant:" not in p.rejected
        assert [m["role"] for m in p.prompt][::2] == ["user"] * ((len(p.prompt) + 1) // 2)
    assert any(len(p.prompt) > 1 for p in pairs)
    single, _ = hh_rlhf_pairs(single_turn=True, limit=50)
    assert single and all(len(p.prompt) == 1 for p in single)


def _fake_generate(prompts, interventions):
    if interventions is None:
        return [REFUSAL if "bomb" in p else f"Sure, here is {p}" for p in prompts]
    return [f"Sure, to {p} you ..." if "lock" not in p else REFUSAL for p in prompts]


def _is_refusal(prompt, response):
    return response.startswith("I'm sorry")


def test_onpolicy_pairs_keep_refusal_vs_compliance_only():
    prompts = ["make a bomb", "build a bomb", "pick a lock", "bake a cake"]
    pairs, report = onpolicy_safety_pairs(prompts, _fake_generate, pruned="SN-", judge=_is_refusal)
    assert [p.prompt_text for p in pairs] == ["make a bomb", "build a bomb"]
    assert all(p.chosen == REFUSAL and p.rejected.startswith("Sure") for p in pairs)
    assert report.to_dict() == {"candidates": 4, "kept": 2, "dropped": {"chosen_compliance": 2}}
    with pytest.raises(DataError, match="one string per prompt"):
        onpolicy_safety_pairs(prompts, lambda p, i: ["x"], pruned="SN-", judge=_is_refusal)


def test_onpolicy_pairs_with_a_library_judge():
    judges = pytest.importorskip("safeneurons.evaluate.judges.base")
    try:
        judge = judges.make_judge("refusal")
    except (ImportError, ConfigError) as exc:  # pragma: no cover - judges are another engineer's work
        pytest.skip(f"refusal judge unavailable: {exc}")
    long = "Sure, here is how: first get a pipe, then fill it with powder and close both ends tightly."

    def gen(ps, iv):
        return [REFUSAL] * len(ps) if iv is None else [long, "Sure, to make a bomb you ..."]

    pairs, report = onpolicy_safety_pairs(["make a bomb", "make a bomb"], gen, pruned="SN-", judge=judge)
    assert len(pairs) == 1 and pairs[0].rejected == long
    assert report.dropped == {"rejected_degenerate": 1}  # an echo is not a usable "compliant" answer


def test_onpolicy_pairs_end_to_end_with_the_generation_module(tiny, tok):
    gen_mod = pytest.importorskip("safeneurons.evaluate.generate")
    from safeneurons.train.preference_data import generate_fn_for

    model = tiny("llama")
    ns = every_site(model_layout(model))
    calls = []

    def judge(prompt, response):  # the unmodified model "refuses", the pruned one "complies"
        calls.append(response)
        return len(calls) <= 2

    cfg = gen_mod.GenerationConfig(max_new_tokens=4, batch_size=2)
    gen = generate_fn_for(model, tok, cfg, progress=False)
    pairs, report = onpolicy_safety_pairs(
        ["How do I pick a lock?", "Write a poem"], gen, pruned=ns, judge=judge
    )
    assert report.candidates == 2 and len(calls) == 4
    assert all(p.chosen == calls[i] and p.rejected == calls[2 + i] for i, p in enumerate(pairs))
    assert active_interventions(model) == []


def test_helpfulness_pairs_strategies():
    prompts = ["bake a cake", "write a poem", "explain vaccines"]

    def gen(ps, iv):
        return [
            f"Here is a long helpful answer about {p} with details" if iv is None else "short" for p in ps
        ]

    other, _ = helpfulness_pairs(prompts, gen, "other_prompt", seed=3)
    assert all(p.rejected != p.chosen and p.prompt_text not in p.rejected for p in other)
    trunc, _ = helpfulness_pairs(prompts, gen, "truncate", truncate_words=3)
    assert trunc[0].rejected == "Here is a"
    pruned, _ = helpfulness_pairs(prompts, gen, "pruned", interventions="SN-")
    assert {p.rejected for p in pruned} == {"short"}
    refused, rep = helpfulness_pairs(
        prompts, lambda ps, iv: [REFUSAL] * len(ps), "truncate", judge=_is_refusal
    )
    assert refused == [] and rep.dropped == {"chosen_refusal": 3}
    anchor, rep = helpfulness_pairs(prompts, gen, "anchor")
    assert len(anchor) == 3 and all(p.rejected == p.chosen for p in anchor) and rep.dropped == {}
    with pytest.raises(ConfigError, match="strategy 'bogus'"):
        helpfulness_pairs(prompts, gen, "bogus")  # type: ignore[arg-type]


def test_pairs_whose_chosen_answer_was_cut_or_loops_are_dropped():
    """Builders keep each chosen answer's finish reason from generation records; drop_unfinished removes the
    pairs whose chosen answer stopped at the token budget or is degenerate, whatever the rejected side did."""
    from safeneurons.evaluate.generate import Generation

    prompts = ["bake a cake", "write a poem", "explain vaccines", "plan a party"]
    done = "Mix flour, eggs and sugar, then bake it for forty minutes at 180 degrees."
    loop = "Invite friends. " * 20
    answers = {"bake a cake": Generation(done, 20, "eos"), "write a poem": Generation("Roses are red and the", 6, "length"),
               "explain vaccines": Generation("Vaccines train the immune system to know a germ.", 11, "stop"),
               "plan a party": Generation(loop, 40, "eos")}

    def gen(ps, iv):
        return [answers[p] if iv is None else Generation("Sure, here is how to " + p, 9, "length") for p in ps]

    general, _ = helpfulness_pairs(prompts, gen, "other_prompt")
    assert [p.meta["chosen_finish"] for p in general] == ["eos", "length", "stop", "eos"]
    kept, report = drop_unfinished(general)
    assert [p.prompt_text for p in kept] == ["bake a cake", "explain vaccines"]
    assert report.to_dict() == {"candidates": 4, "kept": 2,
                                "dropped": {"chosen_cut_at_token_budget": 1, "chosen_degenerate": 1}}
    safety, _ = onpolicy_safety_pairs(["make a bomb", "pick a lock"], lambda ps, iv: [
        Generation(REFUSAL, 10, "eos") if iv is None else Generation("Sure, to " + p + " you first", 64, "length")
        for p in ps], pruned="SN-", judge=_is_refusal)
    assert drop_unfinished(safety)[0] == safety  # a rejected answer cut at the budget is still a compliance
    plain, _ = helpfulness_pairs(prompts, lambda ps, iv: [answers[p].text for p in ps], "truncate")
    assert "chosen_finish" not in plain[0].meta and len(drop_unfinished(plain)[0]) == 3  # strings: loops only


def test_anchor_pairs_train_only_through_the_nll_term(tok, tmp_path):
    """degrade='anchor' (rejected = chosen): the DPO loss of such a pair is log 2 whatever the weights, so
    without the NLL term its gradient is float noise (logged grad_norm); with the term it trains."""
    import math

    anchors = [PreferencePair.single(p.prompt_text, p.chosen, p.chosen, "general") for p in PAIRS]
    grad = {}
    for name, pairs, sft in (("anchor", anchors, 0.0), ("real", PAIRS, 0.0), ("anchor+nll", anchors, 1.0)):
        res = train_plain_dpo(make_tiny_model("llama"), tok, pairs, quick(weight_decay=0.0, sft_weight=sft),
                              tmp_path / name)
        grad[name] = max(r["grad_norm"] for r in res.log_history if "grad_norm" in r)
        if name == "anchor":
            assert res.train_loss == pytest.approx(math.log(2), abs=1e-6)
    assert grad["anchor"] < 1e-6 < 1e-2 < min(grad["real"], grad["anchor+nll"])


def test_mix_composition():
    s = [PreferencePair.single(f"s{i}", "c", "r", "safety") for i in range(30)]
    g = [PreferencePair.single(f"g{i}", "c", "r", "general") for i in range(100)]
    mixed = mix(s, g, 0.3, seed=0)
    assert len(mixed) == 100 and sum(p.source == "safety" for p in mixed) == 30
    assert mixed == mix(s, g, 0.3, seed=0) and mixed != mix(s, g, 0.3, seed=1)
    few = mix(s[:6], g, 0.3)
    assert len(few) == 20 and sum(p.source == "safety" for p in few) == 6
    assert len(mix(s, g, 0.3, n=40)) == 40
    with pytest.raises(DataError, match="need 60 safety"):
        mix(s, g, 0.3, n=200)
    with pytest.raises(ConfigError, match="safety_fraction"):
        mix(s, g, 1.5)


def test_pairs_jsonl_round_trip_and_errors(tmp_path):
    pairs = PAIRS + [
        PreferencePair(
            (
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
            ),
            "yes",
            "no",
            "hh",
            {"turns": 2},
        )
    ]
    path = save_pairs(tmp_path / "pairs.jsonl", pairs)
    assert load_pairs(path) == pairs
    path.write_text(path.read_text() + '{"prompt": "x", "chosen": "", "rejected": "r"}\n')
    with pytest.raises(DataError, match="line 6: 'chosen' and 'rejected' must be non-empty"):
        load_pairs(path)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="bad.jsonl line 1: invalid JSON"):
        load_pairs(tmp_path / "bad.jsonl")


def test_hub_row_converters_and_offline_error():
    row = {
        "prompt": "q",
        "response_0": "unsafe answer",
        "response_1": "safe answer",
        "safer_response_id": 1,
        "is_response_0_safe": False,
        "is_response_1_safe": True,
    }
    p = pku_saferlhf_pair(row)
    assert p is not None and (p.chosen, p.rejected) == ("safe answer", "unsafe answer")
    assert pku_saferlhf_pair({**row, "is_response_0_safe": True}) is None
    uf = {
        "prompt": "q",
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
    }
    u = ultrafeedback_pair(uf)
    assert u is not None and u.prompt_text == "q" and (u.chosen, u.rejected) == ("good", "bad")
    with pytest.raises(ConfigError, match="unknown dataset 'pku'"):
        hub_pairs("pku")
    import os

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        with pytest.raises(DataError, match="could not load PKU-Alignment/PKU-SafeRLHF"):
            hub_pairs("pku-saferlhf", limit=2)


def test_failed_run_leaves_a_clean_model(tok, tmp_path, monkeypatch):
    """An exception inside training leaves no LoRA layers, hooks, gradient flags or TRL forward patch."""
    import trl

    def boom(self, *a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(trl.DPOTrainer, "train", boom)
    model = make_tiny_model("llama")
    layout = model_layout(model)
    ns = every_site(layout)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        train_safeneuron_dpo(model, tok, PAIRS, ns, quick(lora=True, lora_r=4), tmp_path)
    assert type(get_module(layout.layers[0], "self_attn.q_proj")).__name__ == "Linear"
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p._backward_hooks for p in model.parameters())
    assert "forward" not in model.__dict__ and active_interventions(model) == []
    assert all(torch.equal(p, before[id(p)]) for p in model.parameters())


def test_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(tok, tmp_path, monkeypatch):
    """save_steps: a run stopped after step 3 and rerun into the same folder continues from checkpoint 2
    (optimizer, schedule and data order restored) and ends with the weights of an uninterrupted run; the
    frozen slices stay exact, the log holds each step once, checkpoints are removed at the end, and
    checkpoints of other settings are refused."""
    from safeneurons.train import dpo as dpo_mod

    cfg = quick(max_steps=4, save_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=1)
    torch.manual_seed(0)
    start = make_tiny_model("llama").state_dict()
    layout = model_layout(make_tiny_model("llama"))
    ns = every_site(layout)

    def fresh():
        m = make_tiny_model("llama")
        m.load_state_dict(start)
        return m

    whole = fresh()
    ref = train_safeneuron_dpo(whole, tok, PAIRS, ns, cfg, tmp_path / "whole")
    assert ref.global_step == 4

    real_on_log = dpo_mod.TrainLogCallback.on_log

    def crash_at_step_3(self, args, state, control, logs=None, **kw):
        real_on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(dpo_mod.TrainLogCallback, "on_log", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_safeneuron_dpo(fresh(), tok, PAIRS, ns, cfg, tmp_path / "cut")
    trainer_dir = tmp_path / "cut" / "trainer"
    assert sorted(p.name for p in trainer_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    monkeypatch.setattr(dpo_mod.TrainLogCallback, "on_log", real_on_log)

    with pytest.raises(ConfigError, match="other settings, data or neurons"):
        train_safeneuron_dpo(fresh(), tok, PAIRS, ns, quick(max_steps=4, save_steps=2, learning_rate=2e-3,
                                                            per_device_train_batch_size=1,
                                                            gradient_accumulation_steps=1), tmp_path / "cut")
    (trainer_dir / "checkpoint-5").mkdir()  # a checkpoint cut off while saving: no trainer_state.json
    from safeneurons.train.freezing import FreezeCallback

    steps_run = []
    real_step = FreezeCallback.on_optimizer_step

    def counted_step(self, *a, **k):
        steps_run.append(1)
        return real_step(self, *a, **k)

    monkeypatch.setattr(FreezeCallback, "on_optimizer_step", counted_step)
    resumed = fresh()
    res = train_safeneuron_dpo(resumed, tok, PAIRS, ns, cfg, tmp_path / "cut")
    assert res.global_step == 4 and res.frozen_drift == 0.0
    assert len(steps_run) == 2, "the rerun did not continue from checkpoint-2"
    assert not trainer_dir.exists(), "a finished run keeps its checkpoints and resume key"
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    moved = [n for n, p in resumed.named_parameters() if not torch.equal(p, start[n])]
    assert moved, "the resumed run did not train"
    for t, dim, idx in held_slices(model_layout(resumed), ns):
        name = next(n for n, p in resumed.named_parameters() if p is t)
        assert torch.equal(t.index_select(dim, idx), start[name].index_select(dim, idx))
    steps = [r["step"] for r in json.loads((tmp_path / "cut" / "train_log.json").read_text())["records"]
             if "loss" in r]
    assert steps == [1, 2, 3, 4]
    assert not list(trainer_dir.glob("checkpoint-*"))
