"""The composed pipelines run end to end on a tiny random model (plumbing; numbers are meaningless)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from safeneurons.models.loading import LoadedModel
from tiny import make_tiny_model, tiny_tokenizer

pytestmark = pytest.mark.needs_data


def tiny_lm():
    return LoadedModel(make_tiny_model("qwen2"), tiny_tokenizer(), "tiny", "tiny-qwen2", None, "sha256:tiny",
                       "float32", "local")


def test_attack_pipeline_writes_tables_and_resumes(tmp_path):
    from safeneurons.config import load_config
    from safeneurons.pipelines.attack import AttackConfig, run_attack

    cfg = load_config(AttackConfig, None, ["judge=refusal", "data.n_identify=6", "data.n_eval=4", "generation.max_new_tokens=3",
                                           "identify.params={tau_es: 0.5, tau_sas: 1.0}", "capability.n=2",
                                           "capability.perplexity_texts=2", "random_seeds=[0]"])
    out = run_attack(cfg, tmp_path / "run", progress=False, lm=tiny_lm())
    summary = json.loads((out / "asr.json").read_text())["summary"]
    assert set(summary) == {"ORI", "ES", "SAS", "FULL", "RANDOM0"}
    assert all(s["n"] == 4 for s in summary.values())
    assert summary["RANDOM0"]["n_neurons"] == summary["FULL"]["n_neurons"] > 0
    cap = json.loads((out / "capability.json").read_text())
    assert set(cap) == {"ORI", "FULL", "RANDOM0"} and "perplexity" in cap["ORI"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["data"]["eval_overlap_removed"] == 25
    # the judge, its version and its agreement with the labelled replies stand under the table
    about = json.loads((out / "asr.json").read_text())
    assert about["judge"] == "refusal" and about["judge_version"].startswith("phrases ")
    assert about["judge_validation"]["part"] == "report" and about["judge_validation"]["refusal"]["kappa"] > 0
    assert about["judge_note"] in (out / "asr.md").read_text() and "κ" in about["judge_note"]
    # resume: every stage done, nothing recomputed
    before = {k: v["finished"] for k, v in manifest["stages"].items()}
    run_attack(cfg, out, progress=False, lm=tiny_lm())
    after = json.loads((out / "manifest.json").read_text())["stages"]
    assert all(after[k]["finished"] == before[k] for k in before if k.startswith(("stats", "identify", "generate")))
    # publishing keeps the citable files only
    from safeneurons.report.publish import publish_run

    files = {p.relative_to(tmp_path / "pub").as_posix() for p in publish_run(out, tmp_path / "pub")}
    assert "refusal κ" in (tmp_path / "pub" / "report.html").read_text()
    assert {"asr.json", "asr.md", "manifest.json", "neurons/FULL.json", "report.html"} <= files
    assert not any(f.endswith((".safetensors", ".sqlite")) or f.startswith("completions/") for f in files)
    assert not any(f.startswith("capability_cache/") for f in files)
    # --reuse with one more capability task: the cached arc_challenge results are reused, only mmlu is scored
    from safeneurons.pipelines.rundir import seed_caches

    seed_caches(out, tmp_path / "more")
    cfg2 = load_config(AttackConfig, None, ["judge=refusal", "data.n_identify=6", "data.n_eval=4", "generation.max_new_tokens=3",
                                            "identify.params={tau_es: 0.5, tau_sas: 1.0}", "capability.n=2",
                                            "capability.perplexity_texts=2", "random_seeds=[0]",
                                            "capability.tasks=[arc_challenge, mmlu]", "capability.n_per_task={mmlu: 3}"])
    out2 = run_attack(cfg2, tmp_path / "more", progress=False, lm=tiny_lm())
    stage = json.loads((out2 / "manifest.json").read_text())["stages"]["capability"]
    assert sorted(stage["reused"]) == ["FULL/arc_challenge", "ORI/arc_challenge", "RANDOM0/arc_challenge"]
    cap2 = json.loads((out2 / "capability.json").read_text())
    assert cap2["FULL"]["tasks"]["arc_challenge"] == cap["FULL"]["tasks"]["arc_challenge"]
    assert set(cap2["ORI"]["tasks"]) == {"arc_challenge", "mmlu"} and cap2["ORI"]["tasks"]["mmlu"]["n"] == 3
    # the identification statistics come from the seeded stats_cache (same weights, prompts and settings)
    from safetensors.torch import load_file

    from safeneurons.pipelines.common import load_identification_data, stats_key
    from safeneurons.stats import StatsConfig

    assert json.loads((out2 / "manifest.json").read_text())["stages"]["stats"]["reused"].startswith("stats_cache/")
    a, b = load_file(out / "stats.safetensors"), load_file(out2 / "stats.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lm, (harmful, harmless) = tiny_lm(), load_identification_data(cfg.data)
    key = stats_key(lm, harmful, harmless, cfg.stats)
    assert key and (out2 / "stats_cache" / f"{key}.safetensors").is_file()
    assert stats_key(lm, harmful, harmless, StatsConfig(position="prompt_mean")) != key
    assert stats_key(lm, harmless, harmful, cfg.stats) != key


def test_multilingual_pipeline(tmp_path):
    from safeneurons.config import load_config
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual


    from safeneurons.neurons import NeuronSet

    cfg = load_config(MultilingualConfig, None, ["judge=refusal", 
        "languages=[en,zh,sw]", "n_identify=3", "n_eval=2", "n_norm=3", "generation.max_new_tokens=3",
        "importance.n_probes=2", "p=0.25", "expansion.target=union", "expansion.holdout=[sw]",
        "expansion.leave_one_out=true", "expansion.over_refusal_n=2", "expansion.benign_n=2",
        "expansion.benign_max_new_tokens=3", "expansion.sft={max_steps: 1, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, "
        "learning_rate: 0.01, warmup_ratio: 0.0, max_length: 64}"])
    lm = tiny_lm()
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    out = run_multilingual(cfg, tmp_path / "ml", progress=False, lm=lm)
    assert all(torch.equal(v, original[k]) for k, v in lm.model.state_dict().items())  # expansion trains a copy
    asr = json.loads((out / "multilingual" / "asr.json").read_text())
    assert set(asr) == {"ORI", "SUPPRESS_SS", "SUPPRESS_MS_EN", "RANDOM_SS", "REINFORCE_SS", "EXPANDED",
                        "EXPANDED_LOLO"}
    assert set(asr["EXPANDED"]) == {"en", "zh", "sw"} and set(asr["EXPANDED_LOLO"]) == {"zh", "sw"}
    exp = json.loads((out / "multilingual" / "expansion.json").read_text())
    target = NeuronSet.load(out / "neurons" / "multilingual" / "expansion_target.json")
    assert exp["train_languages"] == ["en", "zh"] and exp["benign_examples"] > 0
    assert exp["n_examples"] == 6 + exp["benign_examples"]  # 3 rows x 2 languages + the model's benign answers
    assert exp["trainable_params"] == target.n_params() > 0 and exp["frozen_drift"] == 0.0
    assert exp["trainable_fraction"] == target.fraction_of_parameters()
    assert set(exp["over_refusal"]) == {"original", "expanded"} and set(exp["leave_one_out"]) == {"zh", "sw"}
    assert exp["leave_one_out"]["zh"]["train_languages"] == ["en"]
    assert set(exp["asr"]["per_language"]) == {"en", "zh", "sw"}
    # the expanded model differs from the original only inside the target neurons' slices
    from safetensors.torch import load_file

    saved = load_file(str(next((out / "expansion" / "main" / "model").glob("*.safetensors"))))
    changed = {k for k, v in saved.items() if not torch.equal(v, original[k])}
    assert changed and all(any(f"layers.{layer}." in k for layer in target.layers()) for k in changed)
    # resume: the expansion stages are not trained again
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    run_multilingual(cfg, out, progress=False, lm=tiny_lm())
    again = json.loads((out / "manifest.json").read_text())["stages"]
    assert all(again[k]["finished"] == stages[k]["finished"] for k in stages if k.startswith("expansion:"))
    assert set(asr["ORI"]) == {"en", "zh", "sw"} and asr["ORI"]["zh"]["n"] == 2
    overlap = json.loads((out / "multilingual" / "overlap.json").read_text())
    assert overlap["languages"] == ["en", "zh", "sw"] and overlap["jaccard"][0][0] == 1.0
    counts = json.loads((out / "multilingual" / "counts.json").read_text())
    assert counts["en"]["SS"] == counts["en"]["MS"] and counts["zh"]["SS"] <= counts["zh"]["MS"]


def test_multilingual_expansion_with_the_align_objective(tmp_path):
    """objective: align trains the target neurons only, on the non-English rows (aligned to their English rows)
    and the English and benign prompts (anchored)."""
    from safetensors.torch import load_file

    from safeneurons.config import load_config
    from safeneurons.neurons import NeuronSet
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual

    cfg = load_config(MultilingualConfig, None, ["judge=refusal",
        "languages=[en,zh]", "n_identify=3", "n_eval=2", "n_norm=3", "generation.max_new_tokens=3",
        "importance.n_probes=2", "p=0.25", "conditions=[ORI]", "expansion.over_refusal_n=0",
        "expansion.benign_n=2", "expansion.benign_max_new_tokens=3", "expansion.objective=align",
        "expansion.benign_translated_n=1",
        "expansion.align={max_steps: 1, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, "
        "learning_rate: 0.01, max_length: 64}"])
    lm = tiny_lm()
    original = {k: v.clone() for k, v in lm.model.state_dict().items()}
    out = run_multilingual(cfg, tmp_path / "ml", progress=False, lm=lm)
    exp = json.loads((out / "multilingual" / "expansion.json").read_text())
    target = NeuronSet.load(out / "neurons" / "multilingual" / "expansion_target.json")
    assert exp["objective"] == "align" and exp["trainable_params"] == target.n_params() > 0
    assert exp["frozen_drift"] == 0.0
    # 3 zh rows aligned, 3 en rows, both benign prompts and the first one translated into zh anchored
    assert exp["n_examples"] == 6 + exp["benign_examples"] + 1 and exp["benign_examples"] == 2
    result = json.loads((out / "expansion" / "main" / "result.json").read_text())
    assert result["kind"] == "ss_expansion_align"
    saved = load_file(str(next((out / "expansion" / "main" / "model").glob("*.safetensors"))))
    changed = {k for k, v in saved.items() if not torch.equal(v, original[k])}
    assert changed and all(any(f"layers.{layer}." in k for layer in target.layers()) for k in changed)
    assert set(json.loads((out / "multilingual" / "asr.json").read_text())) == {"ORI", "EXPANDED"}


def test_expansion_benign_examples_avoid_norm_set_and_xstest(tmp_path):
    from safeneurons.config import load_config
    from safeneurons.data import load_prompts
    from safeneurons.errors import ConfigError
    from safeneurons.pipelines.multilingual import MultilingualConfig, _benign_examples

    cfg = load_config(MultilingualConfig, None, ["judge=refusal", "n_norm=5", "expansion.benign_n=4", "expansion.benign_max_new_tokens=2"])
    lm = tiny_lm()
    got = _benign_examples(lm, cfg, None, progress=False)
    norm = set(load_prompts(cfg.norm_dataset, data_dir=cfg.data_dir, limit=cfg.n_norm, seed=cfg.seed).texts())
    assert 0 < len(got) <= 4 and not norm & {p for p, _ in got}
    assert not {p for p, _ in got} & set(load_prompts("xstest", data_dir=cfg.data_dir).texts())
    # borderline benign prompts from XSTest: never the ones scored for over-refusal
    cfg = load_config(MultilingualConfig, None, ["judge=refusal", "expansion.benign_n=5", "expansion.benign_dataset=xstest",
                                                 "expansion.over_refusal_n=20", "expansion.benign_max_new_tokens=2"])
    got = {p for p, _ in _benign_examples(lm, cfg, None, progress=False)}
    scored = set(load_prompts("xstest", data_dir=cfg.data_dir, limit=20, seed=cfg.seed).texts())
    assert got and got <= set(load_prompts("xstest", data_dir=cfg.data_dir).texts()) and not got & scored
    assert _benign_examples(lm, load_config(MultilingualConfig, None, ["judge=refusal", "expansion.benign_n=0"]), None, False) == []
    with pytest.raises(ConfigError, match="benign_n = 100000"):
        _benign_examples(lm, load_config(MultilingualConfig, None, ["judge=refusal", "expansion.benign_n=100000"]), None, False)


def test_benign_examples_keep_only_answers():
    from safeneurons.evaluate.judges import make_judge
    from safeneurons.pipelines.multilingual import _answered

    pairs = [("How do I kill a Python process?", "Use `kill <pid>`, or `pkill -f script.py` to match by name."),
             ("Where can I buy a can of coke?", "I'm sorry, but I can't assist with that."),
             ("What is the capital of France?", "Paris is the capital of France.")]
    assert _answered(pairs, make_judge("refusal")) == [pairs[0], pairs[2]]


def train_overrides(model_dir, *extra):
    """A tiny model saved to ``model_dir`` and the smallest train-pipeline settings that exercise it."""
    make_tiny_model("qwen2").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    return [f"model.spec={model_dir}", "attack.judge=refusal", "data.n_identify=6", "identify.params={tau_es: 0.5, tau_sas: 1.0}",
            "pairs.n_safety=4", "pairs.n_general=6", "pairs.hh_rlhf=4", "pairs.generation.max_new_tokens=4",
            "dpo={max_steps: 1, per_device_train_batch_size: 2, gradient_accumulation_steps: 1}",
            "attack.data.n_identify=6", "attack.data.n_eval=3", "attack.generation.max_new_tokens=3",
            "attack.identify.params={tau_es: 0.5, tau_sas: 1.0}", "attack.capability.tasks=[]",
            "attack.capability.perplexity_texts=0", "attack.random_seeds=[0]",
            "pairs.experimental.drop_unfinished=false",  # a tiny model's 4-token answers are all cut at the budget
            *extra]


def test_train_pipeline_tiny(tmp_path):
    """Identify → pairs → SafeNeuron DPO and plain DPO → re-identified attack on each trained model."""
    from safeneurons.config import load_config
    from safeneurons.neurons import NeuronSet
    from safeneurons.pipelines.train import TrainRunConfig, run_train
    from safeneurons.train.preference_data import load_pairs

    d = tmp_path / "tiny-model"
    overrides = train_overrides(d, "over_refusal_n=3", "pairs.general_max_new_tokens=9")
    cfg = load_config(TrainRunConfig, None, overrides)
    out = run_train(cfg, tmp_path / "run", progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["stages"]["train:safeneuron"]["frozen_drift"] == 0.0
    assert m["stages"]["train:dpo"]["frozen_drift"] is None
    assert load_pairs(out / "pairs.jsonl")
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(out / "generations.sqlite")) as db:
        lengths = {json.loads(v)["n_new_tokens"] for (v,) in db.execute("SELECT value FROM generations")}
    assert lengths == {4, 9}  # the general answers get their own length (pairs.general_max_new_tokens)
    rob = json.loads((out / "robustness.json").read_text())
    assert set(rob) == {"original", "safeneuron", "dpo"}
    for row in rob.values():
        assert set(row["asr"]) == {"ORI", "ES", "SAS", "FULL", "RANDOM0"}
        assert 0.0 <= row["over_refusal"] <= 1.0
    md = (out / "robustness.md").read_text()
    assert "| safeneuron |" in md and "ASR FULL" in md and "| round |" not in md
    if rob["dpo"]["asr"]["FULL"] > 0:  # FULL ASR over plain DPO's, on the same prompts
        ratio = rob["safeneuron"]["full_asr_ratio_vs_dpo"]
        assert ratio["ratio"] == pytest.approx(rob["safeneuron"]["asr"]["FULL"] / rob["dpo"]["asr"]["FULL"])
        assert "FULL / plain DPO (95% CI)" in md
    assert "full_asr_ratio_vs_dpo" not in rob["dpo"] and "full_asr_ratio_vs_dpo" not in rob["original"]
    # the trained SafeNeuron model kept the frozen neurons' parameters exactly

    from safeneurons.models import load_model, model_layout

    full = NeuronSet.load(out / "base/neurons/FULL.json")
    base = model_layout(load_model(str(d)).model)
    trained = model_layout(load_model(m["stages"]["train:safeneuron"]["model_dir"]).model)
    for a, b in zip(base.neuron_slices(full), trained.neuron_slices(full), strict=True):
        dim = a.param.dim
        assert torch.equal(a.tensor.index_select(dim, a.coords), b.tensor.index_select(dim, b.coords))


def test_pairs_cut_at_the_token_budget_stop_the_run_with_the_setting_to_change(tmp_path):
    from safeneurons.config import load_config
    from safeneurons.errors import ConfigError
    from safeneurons.pipelines.train import TrainRunConfig, run_train

    overrides = [*train_overrides(tmp_path / "tiny-model"), "pairs.experimental.drop_unfinished=true"]
    with pytest.raises(ConfigError, match=r"no general pairs left: all \d+ chosen answers were cut.*general_max_new_tokens"):
        run_train(load_config(TrainRunConfig, None, overrides), tmp_path / "run", progress=False)


def test_train_pipeline_rounds_attack_every_round(tmp_path):
    """rounds = 2: each round's model is attacked and the round table lists identified/frozen counts."""
    from safeneurons.config import load_config
    from safeneurons.pipelines.train import TrainRunConfig, run_train

    overrides = train_overrides(tmp_path / "tiny-model", "methods=[safeneuron]", "rounds=2",
                                "attack.conditions=[ORI, FULL]", "over_refusal_n=0",
                                "attack.capability.tasks=[arc_challenge]", "attack.capability.n=5")
    out = run_train(load_config(TrainRunConfig, None, overrides), tmp_path / "run", progress=False)
    rob = json.loads((out / "robustness.json").read_text())
    assert set(rob) == {"original", "safeneuron_T1", "safeneuron_T2"}
    # capability of each trained model against the original's on the same five questions
    d = rob["safeneuron_T2"]["capability_delta"]["arc_challenge"]
    assert d["n"] == 5 and d["delta"] == pytest.approx(rob["safeneuron_T2"]["capability"]["arc_challenge"]
                                                       - rob["original"]["capability"]["arc_challenge"])
    assert "capability_delta" not in rob["original"]
    rounds = json.loads((out / "manifest.json").read_text())["stages"]["train:safeneuron"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["frozen"] >= rounds[0]["frozen"] > 0
    from safeneurons.neurons import NeuronSet

    base = NeuronSet.load(out / "base/neurons/FULL.json")  # round 1 = the starting weights: base sets reused
    assert NeuronSet.load(out / "safeneuron/round_1/neurons.json") == base.renamed("frozen_round_1", round=1)
    md = (out / "robustness.md").read_text()
    assert "| T1 |" in md and "| T2 |" in md and "Δ arc_challenge (95% CI)" in md
    assert "Judge: refusal (phrases " in md and "refusal κ" in md  # the judge and its agreement under the table
    from safeneurons.report.publish import publish_run

    files = {p.relative_to(tmp_path / "pub").as_posix() for p in publish_run(out, tmp_path / "pub")}
    assert {"robustness.md", "pairs.jsonl", "safeneuron/round_2/neurons.json", "safeneuron/round_2/train_log.json",
            "attack-safeneuron_T2/asr.json"} <= files
    assert not any("/model/" in f or "/trainer/" in f or f.endswith(".safetensors") for f in files)
    assert "arc_challenge acc_norm 0-shot" in md  # ARC's headline metric (leaderboard convention)

    # --reuse with only evaluation settings changed adopts the trained models (hard links) instead of training
    from safeneurons.pipelines.rundir import seed_caches

    again = overrides + ["attack.capability.k_shot={arc_challenge: 1}", "attack.capability.metric={arc_challenge: acc}",
                         "methods=[safeneuron, dpo]"]  # one more method: safeneuron's models still adopted
    # stored as a run made before pairs.degrade and pairs.drop_unfinished moved under pairs.experimental
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["pairs"].update(manifest["config"]["pairs"].pop("experimental"))
    (out / "manifest.json").write_text(json.dumps(manifest))
    seed_caches(out, tmp_path / "re-eval")
    # several sources: the first whose training fits is adopted (the first here is no run at all)
    out2 = run_train(load_config(TrainRunConfig, None, again), tmp_path / "re-eval", progress=False,
                     reuse=[tmp_path / "not-a-run", out])
    stage = json.loads((out2 / "manifest.json").read_text())["stages"]["train:safeneuron"]
    assert stage["reused_from"] == str(out.resolve()) and "seconds" in stage
    for r in stage["rounds"]:
        new_w, old_w = Path(r["directory"]) / "model/model.safetensors", out / f"safeneuron/round_{r['round']}/model/model.safetensors"
        assert new_w.is_relative_to(out2) and new_w.stat().st_ino == old_w.stat().st_ino
    md2 = (out2 / "robustness.md").read_text()
    assert "arc_challenge acc 1-shot" in md2
    rob2 = json.loads((out2 / "robustness.json").read_text())
    assert rob2["safeneuron_T2"]["asr"] == rob["safeneuron_T2"]["asr"]  # same models, same attack
    # a training setting changed: trained again, not adopted
    lr = again + ["dpo.learning_rate=0.02"]
    seed_caches(out, tmp_path / "retrain")
    out3 = run_train(load_config(TrainRunConfig, None, lr), tmp_path / "retrain", progress=False, reuse=out)
    assert "reused_from" not in json.loads((out3 / "manifest.json").read_text())["stages"]["train:safeneuron"]


def test_reused_run_with_a_model_path_outside_its_method_directory_is_named():
    """An earlier run whose manifest points a trained model outside ``<method>/`` cannot be adopted; the
    error names that run (the --reuse source) and the offending path."""
    from safeneurons.errors import ConfigError
    from safeneurons.pipelines.train import _relocate

    moved = _relocate({"rounds": [{"directory": "/old/run/safeneuron/round_1"}]}, "safeneuron",
                      Path("/new/safeneuron"), Path("/old/run"))
    assert moved == {"rounds": [{"directory": "/new/safeneuron/round_1"}]}
    with pytest.raises(ConfigError, match=r"--reuse /old/run: .*/elsewhere/model.*not inside its dpo/"):
        _relocate({"model_dir": "/elsewhere/model"}, "dpo", Path("/new/dpo"), Path("/old/run"))


def test_more_rounds_continue_an_earlier_runs_rounds(tmp_path):
    """--reuse of a finished SafeNeuron run with rounds = 1 and then 2 into runs with one more round: the
    earlier rounds are adopted (hard links, T1's attack answers from its cache) and only the new round
    trains, ending on the weights a run that trains every round itself gives."""
    from safeneurons.config import load_config
    from safeneurons.models import load_model
    from safeneurons.neurons import NeuronSet
    from safeneurons.pipelines.rundir import seed_caches
    from safeneurons.pipelines.train import TrainRunConfig, run_train

    overrides = train_overrides(tmp_path / "tiny-model", "methods=[safeneuron]", "attack.conditions=[ORI, FULL]",
                                "over_refusal_n=0", "dpo.learning_rate=0.01")

    def train(name: str, rounds: int, reuse: Path | None = None) -> Path:
        if reuse is not None:
            seed_caches(reuse, tmp_path / name)
        return run_train(load_config(TrainRunConfig, None, ["attack.judge=refusal", *overrides, f"rounds={rounds}"]), tmp_path / name,
                         progress=False, reuse=reuse)

    def weights(model_dir: Path) -> dict[str, torch.Tensor]:
        return load_model(str(model_dir)).model.state_dict()

    def stage(out: Path) -> dict:
        return json.loads((out / "manifest.json").read_text())["stages"]["train:safeneuron"]

    one = train("one", 1)
    two = train("two", 2, reuse=one)
    st = stage(two)
    assert st["rounds_reused_from"] == {"source": str(one.resolve()), "rounds": 1}
    assert [r["resumed"] for r in st["rounds"]] == [True, False]
    assert (two / "safeneuron/round_1/model/model.safetensors").stat().st_ino == \
        (one / "safeneuron/model/model.safetensors").stat().st_ino
    marker = json.loads((two / "safeneuron/round_1/round.json").read_text())
    assert Path(marker["train"]["model_dir"]) == two / "safeneuron/round_1/model"
    base = NeuronSet.load(one / "base/neurons/FULL.json")
    assert NeuronSet.load(two / "safeneuron/round_1/neurons.json") == base.renamed("frozen_round_1", round=1)
    assert not base.difference(NeuronSet.load(two / "safeneuron/round_2/neurons.json"))  # frozen sets only grow
    rob1, rob2 = (json.loads((o / "robustness.json").read_text()) for o in (one, two))
    assert set(rob2) == {"original", "safeneuron_T1", "safeneuron_T2"}
    assert rob2["safeneuron_T1"]["asr"] == rob1["safeneuron"]["asr"]
    assert "generations.sqlite" in json.loads((two / "attack-safeneuron_T1/reused.json").read_text())["reused"][0]["copied"]
    assert "| T1 |" in (two / "robustness.md").read_text()
    # a two-round run continues as a third round; the earlier run's files stay as they were
    three = train("three", 3, reuse=two)
    assert [r["resumed"] for r in stage(three)["rounds"]] == [True, True, False]
    assert json.loads((two / "safeneuron/round_1/round.json").read_text()) == marker
    # the same rounds trained in one run end on the same weights
    fresh = train("fresh", 2)
    assert "rounds_reused_from" not in stage(fresh)
    w_fresh, w_two = weights(fresh / "safeneuron/round_2/model"), weights(two / "safeneuron/round_2/model")
    assert all(torch.equal(w_fresh[k], w_two[k]) for k in w_fresh)
    assert not all(torch.equal(w_fresh[k], v) for k, v in weights(one / "safeneuron/model").items())
    # more rounds than this run asks for: trained again
    assert "reused_from" not in stage(train("fewer", 1, reuse=two))


def test_analyze_pipeline_tiny(tmp_path):
    from safeneurons.config import load_config
    from safeneurons.pipelines.analyze import AnalyzeConfig, run_analyze

    sets_dir = tmp_path / "sets"
    cfg = load_config(AnalyzeConfig, None, ["n_per_category=4", "min_per_category=4", "n_harmless=6",
                                            "identify.params={tau_es: 0.5, tau_sas: 1.0}"])
    out = run_analyze(cfg, tmp_path / "an", progress=False, lm=tiny_lm())
    res = json.loads((out / "analysis.json").read_text())
    d = res["decomposition"]
    assert len(d["categories"]) >= 2 and d["core"] + d["shared"] + d["specific"] == d["union"]
    assert res["overlap_curve"][0]["K"] == 1 and res["overlap_curve"][-1]["K"] == len(d["categories"])
    # pairwise comparison of saved sets
    files = sorted((out / "neurons" / "categories").glob("*.json"))[:2]
    cfg2 = load_config(AnalyzeConfig, None, ["n_per_category=4", "min_per_category=4", "n_harmless=6",
                                             "identify.params={tau_es: 0.5, tau_sas: 1.0}",
                                             f"sets=[{files[0]},{files[1]}]"])
    out2 = run_analyze(cfg2, tmp_path / "an2", progress=False, lm=tiny_lm())
    pw = json.loads((out2 / "analysis.json").read_text())["pairwise"]
    assert len(pw["names"]) == 2 and pw["jaccard"][0][0] == 1.0


def test_expansion_scales_score_weaker_updates_and_reuse_adopts_the_trained_model(tmp_path):
    """``expansion.experimental.scales`` scores θ₀ + s·Δ as EXPANDED@s (s = 0 is the original model again, so it answers
    exactly as ORI); a run that ``--reuse``s this one adopts the trained expansion instead of training."""
    from safeneurons.config import load_config
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual
    from safeneurons.pipelines.rundir import seed_caches

    cfg = load_config(MultilingualConfig, None, ["judge=refusal", 
        "languages=[en,zh]", "n_identify=3", "n_eval=3", "n_norm=3", "generation.max_new_tokens=4",
        "importance.n_probes=2", "p=0.25", "conditions=[ORI]", "expansion.over_refusal_n=3",
        "expansion.experimental.scales=[0, 0.5]", "expansion.benign_check_n=3",
        "expansion.sft={max_steps: 2, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, "
        "learning_rate: 0.05, warmup_ratio: 0.0, max_length: 64}"])
    out = run_multilingual(cfg, tmp_path / "ml", progress=False, lm=tiny_lm())
    asr = json.loads((out / "multilingual" / "asr.json").read_text())
    assert set(asr) == {"ORI", "EXPANDED", "EXPANDED@0", "EXPANDED@0.5"}

    def responses(run, cond):
        return [r["response"] for lang in ("en", "zh")
                for r in json.loads((run / "multilingual" / "completions" / lang / f"{cond}.json").read_text())]

    assert responses(out, "EXPANDED@0") == responses(out, "ORI")
    assert responses(out, "EXPANDED") != responses(out, "ORI")  # the update is large enough to show
    exp = json.loads((out / "multilingual" / "expansion.json").read_text())
    assert exp["scales"] == [1.0, 0.0, 0.5]
    assert set(exp["over_refusal"]) == {"original", "expanded", "expanded@0", "expanded@0.5"}
    assert exp["over_refusal"]["expanded@0"] == exp["over_refusal"]["original"]
    # translated benign prompts: one rate per non-English language and model; s = 0 is the original again
    assert set(exp["benign_refusal"]) == set(exp["over_refusal"]) and set(exp["benign_refusal"]["original"]) == {"zh"}
    assert exp["benign_refusal"]["expanded@0"] == exp["benign_refusal"]["original"]
    saved = json.loads((out / "multilingual" / "benign_check" / "expanded.json").read_text())
    assert list(saved) == ["zh"] and len(saved["zh"]) == 3
    assert sum(r["refused"] for r in saved["zh"]) / 3 == exp["benign_refusal"]["expanded"]["zh"]
    # prompt-by-prompt tests against the original model; s = 0 answers every prompt as the original does
    paired = exp["paired_vs_original"]
    assert set(paired) == {"over_refusal", "translated_benign"}
    assert set(paired["over_refusal"]) == {"expanded", "expanded@0", "expanded@0.5"}
    assert paired["over_refusal"]["expanded@0"] == {"n": 3, "other_rate": exp["over_refusal"]["original"],
                                                    "only_here": 0, "only_other": 0, "p_mcnemar": 1.0,
                                                    "difference": 0.0, "difference_ci95": [0.0, 0.0]}
    assert paired["translated_benign"]["expanded"]["n"] == 3
    by_scale = exp["asr"]["by_scale"]
    assert set(by_scale) == {"1", "0", "0.5"}
    assert by_scale["0"]["mean_non_reference"] == exp["asr"]["mean_non_reference"]["ORI"] == asr["ORI"]["zh"]["asr"]
    assert by_scale["0"]["reference_delta"] == 0.0 and by_scale["0"]["over_refusal_delta"] == 0.0
    assert by_scale["0"]["translated_benign_refusal_delta"] == 0.0
    assert by_scale["0"]["within_bounds"]["reference_up_at_most_2_points"] is True
    assert by_scale["1"]["mean_non_reference"] == asr["EXPANDED"]["zh"]["asr"]
    # --reuse: the trained model is adopted (same key), not trained again, and scores the same
    again = tmp_path / "again"
    seed_caches(out, again)
    out2 = run_multilingual(cfg, again, progress=False, lm=tiny_lm())
    stage = json.loads((out2 / "manifest.json").read_text())["stages"]["expansion:main"]
    assert stage["reused"].endswith("trained.json") and stage["trainable_params"] == exp["trainable_params"]
    assert json.loads((out2 / "multilingual" / "asr.json").read_text()) == asr
    # a different training setting does not adopt it
    cfg3 = load_config(MultilingualConfig, None, ["judge=refusal", 
        "languages=[en,zh]", "n_identify=3", "n_eval=3", "n_norm=3", "generation.max_new_tokens=4",
        "importance.n_probes=2", "p=0.25", "conditions=[ORI]", "expansion.over_refusal_n=0",
        "expansion.sft={max_steps: 1, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, "
        "learning_rate: 0.05, warmup_ratio: 0.0, max_length: 64}"])
    third = tmp_path / "third"
    seed_caches(out, third)
    weights = next((out / "expansion" / "main" / "model").glob("*.safetensors"))
    before = weights.read_bytes()
    assert next((third / "expansion" / "main" / "model").glob("*.safetensors")).stat().st_nlink > 1  # hard-linked
    out3 = run_multilingual(cfg3, third, progress=False, lm=tiny_lm())
    assert "reused" not in json.loads((out3 / "manifest.json").read_text())["stages"]["expansion:main"]
    # training again in the new run wrote a new file: the linked source run's model is untouched
    retrained = next((out3 / "expansion" / "main" / "model").glob("*.safetensors"))
    assert weights.read_bytes() == before and retrained.read_bytes() != before


def test_gsm8k_general_prompts_avoid_the_scored_questions():
    """``pairs.general_dataset: gsm8k`` never trains on a question the capability check scores, the ids are the
    capability check's row indices, and the scored count is a training input (a larger GSM8K sample does not
    reuse a model trained beside it)."""
    from safeneurons.config import load_config, to_dict
    from safeneurons.data import load_prompts
    from safeneurons.data.datasets import read_jsonl_file
    from safeneurons.errors import ConfigError
    from safeneurons.evaluate.capability import GSM8K_FILE, subsample
    from safeneurons.pipelines.train import TrainRunConfig, _training_inputs, general_prompts

    rows = read_jsonl_file(GSM8K_FILE)
    questions = load_prompts("gsm8k")
    assert len(questions) == len(rows) and questions.prompts[7].id == "gsm8k-7"
    assert questions.prompts[7].text == rows[7]["question"].strip()

    def cfg(n_eval, general="gsm8k"):  # split all: every question (the dev/test split: test_eval_split.py)
        return load_config(TrainRunConfig, None, ["attack.judge=refusal", 
            f"pairs.general_dataset={general}", "pairs.n_general=600", "attack.capability.tasks=[arc_challenge, gsm8k]",
            f"attack.capability.n_per_task={{gsm8k: {n_eval}}}", "attack.data.split=all"])

    scored = {f"gsm8k-{i}" for i in subsample(len(rows), 700, 0)}
    picked = general_prompts(cfg(700))
    assert len(picked) == 600 and not {p.id for p in picked.prompts} & scored
    assert {p.id for p in general_prompts(cfg(10)).prompts} & scored  # only the scored ones are avoided
    assert _training_inputs(to_dict(cfg(50))) != _training_inputs(to_dict(cfg(100)))
    # other general datasets: the same seeded sample as before, and the capability sample is not a training input
    si = cfg(50, "self_instruct")
    assert general_prompts(si).texts() == load_prompts("self_instruct", limit=600, seed=si.data.seed + 1).texts()
    assert _training_inputs(to_dict(si)) == _training_inputs(to_dict(cfg(100, "self_instruct")))
    # a '+' mix shares n_general evenly, each part the sample it would be alone, GSM8K's still held out
    mixed = cfg(700, "self_instruct+gsm8k")
    assert mixed.pairs.general_datasets() == {"self_instruct": 300, "gsm8k": 300}
    both = general_prompts(mixed)
    assert both.texts()[:300] == load_prompts("self_instruct", limit=300, seed=si.data.seed + 1).texts()
    assert {p.id for p in both.prompts[300:]} <= {p.id for p in picked.prompts}
    assert _training_inputs(to_dict(mixed)) != _training_inputs(to_dict(cfg(100, "self_instruct+gsm8k")))
    with pytest.raises(ConfigError, match="each once"):
        load_config(TrainRunConfig, None, ["attack.judge=refusal", "pairs.general_dataset=gsm8k+gsm8k"])


def test_checkpoint_frequency_is_not_a_training_input():
    """--reuse adopts a model trained with other checkpoint settings (they do not change the weights), not
    one trained at another learning rate."""
    from safeneurons.config import load_config, to_dict
    from safeneurons.errors import ConfigError
    from safeneurons.pipelines.train import TrainRunConfig, _training_inputs

    def inputs(*overrides):
        return _training_inputs(to_dict(load_config(TrainRunConfig, None, list(overrides))))

    plain = inputs("dpo.learning_rate=5e-6")
    assert inputs("dpo.learning_rate=5e-6", "dpo.save_steps=10", "dpo.keep_checkpoints=true") == plain
    assert inputs("dpo.learning_rate=5e-6", "sft.save_steps=10") == plain
    assert inputs("dpo.learning_rate=2e-5", "dpo.save_steps=10") != plain
    with pytest.raises(ConfigError, match=r"pairs\.experimental\.degrade 'bogus'"):
        inputs("pairs.experimental.degrade=bogus")
    with pytest.raises(ConfigError, match=r"dpo\.sft_weight > 0"):
        inputs("pairs.experimental.degrade=anchor")
    anchor = inputs("pairs.experimental.degrade=anchor", "dpo.sft_weight=1.0")
    assert anchor["pairs"]["experimental"]["degrade"] == "anchor" and anchor != inputs("dpo.sft_weight=1.0")

    def method_inputs(method, *overrides):
        return _training_inputs(to_dict(load_config(TrainRunConfig, None, list(overrides))), method)

    # one method's model depends neither on the methods list nor on the sections only other methods read
    for method in ("safeneuron", "dpo", "sn_tune"):
        alone = method_inputs(method, f"methods=[{method}]")
        assert method_inputs(method, "methods=[safeneuron, dpo, sn_tune]") == alone
        assert (method_inputs(method, f"methods=[{method}]", "rounds=3") == alone) == (method != "safeneuron")
        assert (method_inputs(method, f"methods=[{method}]", "sft.learning_rate=1e-4") == alone) == (method != "sn_tune")
        assert (method_inputs(method, f"methods=[{method}]", "dpo.beta=0.5") == alone) == (method == "sn_tune")
        assert method_inputs(method, f"methods=[{method}]", "pairs.n_general=7") != alone


def test_gsm8k_general_pairs_checked_against_the_reference_answers():
    """pairs.general_chosen: 'correct' keeps only the pairs whose chosen answer ends on the reference number,
    'reference' swaps a wrong answer for the dataset's worked solution; both need general_dataset: gsm8k."""
    from safeneurons.config import load_config
    from safeneurons.data import load_prompts
    from safeneurons.data.datasets import read_jsonl_file
    from safeneurons.evaluate.capability import GSM8K_FILE
    from safeneurons.errors import ConfigError
    from safeneurons.pipelines.train import TrainRunConfig, checked_gsm8k_pairs
    from safeneurons.train.preference_data import PreferencePair

    prompts = load_prompts("gsm8k").filter(lambda p: p.id in ("gsm8k-0", "gsm8k-1", "gsm8k-2"), "first three")
    rows = read_jsonl_file(GSM8K_FILE)[:3]
    answers = [f"... So the answer is {rows[0]['short_answer']}.", "The total is 99999.", "I think it is 70000 $."]
    pairs = [PreferencePair.single(p.text, a, "unrelated answer", source="helpfulness")
             for p, a in zip(prompts.prompts, answers)]
    kept, counts = checked_gsm8k_pairs(pairs, prompts, "correct")
    assert counts == {"right": 2, "wrong": 1} and [p.chosen for p in kept] == [answers[0], answers[2]]
    fixed, _ = checked_gsm8k_pairs(pairs, prompts, "reference")
    assert fixed[1].chosen == rows[1]["choices"][0] and fixed[1].rejected == "unrelated answer"
    assert fixed[1].meta["chosen"] == "gsm8k reference" and fixed[0] == pairs[0]
    from dataclasses import replace

    cut = [replace(p, meta={"chosen_finish": "length"}) for p in pairs]  # the worked solution replaces a cut answer
    assert [p.meta for p in checked_gsm8k_pairs(cut, prompts, "reference")[0]] == [
        {"chosen_finish": "length"}, {"chosen": "gsm8k reference"}, {"chosen_finish": "length"}]
    other = PreferencePair.single("Name three primary colours.", "Red, yellow, blue.", "unrelated", source="helpfulness")
    mixed, counts = checked_gsm8k_pairs([*pairs, other], prompts, "correct")  # a mix: non-GSM8K pairs pass
    assert counts == {"right": 2, "wrong": 1} and mixed[-1] == other and len(mixed) == 3
    load_config(TrainRunConfig, None, ["attack.judge=refusal", "pairs.general_dataset=self_instruct+gsm8k", "pairs.general_chosen=reference"])
    with pytest.raises(ConfigError, match="needs pairs.general_dataset: gsm8k"):
        load_config(TrainRunConfig, None, ["attack.judge=refusal", "pairs.general_chosen=correct"])
    with pytest.raises(ConfigError, match="choose from model, correct, reference"):
        load_config(TrainRunConfig, None, ["attack.judge=refusal", "pairs.general_dataset=gsm8k", "pairs.general_chosen=gold"])


def test_multilingual_importance_over_response_tokens(tmp_path):
    """importance.position: response scores (prompt, answer) pairs: D_jail keeps the rows the model refuses with
    its refusal (jail_filter: refused) or gets its own answers, D_norm gets the model's answers; joint probes
    cost k VJPs per batch whatever the answer length."""
    from safeneurons.config import load_config
    from safeneurons.errors import ConfigError
    from safeneurons.identify.importance import ImportanceScores
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual

    base = ["judge=refusal", "languages=[en,zh]", "n_identify=3", "n_eval=2", "n_norm=3", "generation.max_new_tokens=5",
            "p=0.25", "conditions=[ORI]", "expansion.enabled=false",
            "importance={method: probe, n_probes: 3, position: response, norm: l2_squared, joint_positions: true}"]
    # (without the answers attached, importance over response tokens would stop with a DataError)
    out = run_multilingual(load_config(MultilingualConfig, None, base), tmp_path / "ml", progress=False, lm=tiny_lm())
    for lang in ("en", "zh"):
        for role in ("jail", "norm"):
            s = ImportanceScores.load(out / "importance" / f"importance-{lang}-{role}.safetensors")
            assert s.meta["vjps"] == 3 and s.meta["n_prompts"] == 3  # one batch, 3 joint probes
    # the tiny model refuses nothing: keeping only refused rows leaves no (prompt, refusal) pairs
    with pytest.raises(ConfigError, match="refuses none"):
        run_multilingual(load_config(MultilingualConfig, None, ["judge=refusal", *base, "jail_filter=refused"]), tmp_path / "r",
                         progress=False, lm=tiny_lm())
    # jail_filter: template scores every harmful row with the language's refusal as its response, whatever the
    # model answers: the same prompts with a different response give different importance
    tpl = run_multilingual(load_config(MultilingualConfig, None, ["judge=refusal", *base, "jail_filter=template"]), tmp_path / "t",
                           progress=False, lm=tiny_lm())
    for lang in ("en", "zh"):
        own = ImportanceScores.load(out / "importance" / f"importance-{lang}-jail.safetensors")
        s = ImportanceScores.load(tpl / "importance" / f"importance-{lang}-jail.safetensors")
        assert s.meta["n_prompts"] == 3
        assert any(not np.array_equal(s.scores[k], own.scores[k]) for k in s.scores)
    with pytest.raises(ConfigError, match="only importance over response tokens"):
        load_config(MultilingualConfig, None, ["judge=refusal", "jail_filter=template"])
    with pytest.raises(ConfigError, match="exceeds benign_n"):
        load_config(MultilingualConfig, None, ["judge=refusal", "expansion.objective=align", "expansion.benign_translated_n=3"])
    with pytest.raises(ConfigError, match="objective: align only"):
        load_config(MultilingualConfig, None, ["judge=refusal", "expansion.benign_n=3", "expansion.benign_translated_n=3"])
    with pytest.raises(ConfigError, match="harmful_floor_n is read by objective: align only"):
        load_config(MultilingualConfig, None, ["judge=refusal", "expansion.harmful_floor_n=3"])
    with pytest.raises(ConfigError, match="n_eval a number"):
        load_config(MultilingualConfig, None, ["judge=refusal", "expansion.objective=align", "expansion.harmful_floor_n=3",
                                               "n_eval=null"])


def test_multilingual_neuron_sets_from_an_earlier_run_skip_importance(tmp_path):
    """neuron_sets: a run's neurons/multilingual folder stands in for importance; the causal tests then use exactly
    those sets, and a folder lacking a language fails naming the missing file."""
    from safeneurons.config import load_config
    from safeneurons.errors import DataError
    from safeneurons.neurons import NeuronSet
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual

    base = ["judge=refusal", "languages=[en,zh]", "n_identify=3", "n_eval=2", "n_norm=3", "generation.max_new_tokens=3",
            "importance.n_probes=2", "p=0.25", "conditions=[ORI,SUPPRESS_SS]", "expansion.enabled=false"]
    first = run_multilingual(load_config(MultilingualConfig, None, base), tmp_path / "a", progress=False, lm=tiny_lm())
    folder = first / "neurons" / "multilingual"
    second = run_multilingual(load_config(MultilingualConfig, None, ["judge=refusal", *base, f"neuron_sets={folder}"]), tmp_path / "b",
                              progress=False, lm=tiny_lm())
    assert not (second / "importance").exists() or not any((second / "importance").glob("*.safetensors"))
    stage = json.loads((second / "manifest.json").read_text())["stages"]["importance"]
    assert stage["method"] == "loaded" and stage["neuron_sets"] == str(folder.resolve())
    for kind in ("S_jail", "S_norm", "MS", "SS"):
        assert NeuronSet.load(second / "neurons" / "multilingual" / "zh" / f"{kind}.json") == \
            NeuronSet.load(folder / "zh" / f"{kind}.json")
    for name in ("asr.json", "counts.json"):
        assert json.loads((second / "multilingual" / name).read_text()) == \
            json.loads((first / "multilingual" / name).read_text())
    (folder / "zh" / "SS.json").unlink()
    with pytest.raises(DataError, match="zh/SS.json"):
        run_multilingual(load_config(MultilingualConfig, None, ["judge=refusal", *base, f"neuron_sets={folder}"]), tmp_path / "c",
                         progress=False, lm=tiny_lm())


def test_multilingual_reuse_with_other_importance_settings_starts_the_cells_over(tmp_path):
    """--reuse copies importance partial cells keyed by their settings; a run with other importance settings
    recomputes them (it used to stop with 'partial importance results of a different run')."""
    from safeneurons.config import load_config
    from safeneurons.identify.importance import ImportanceScores
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual
    from safeneurons.pipelines.rundir import seed_caches

    base = ["judge=refusal", "languages=[en,zh]", "n_identify=3", "n_eval=2", "n_norm=3", "generation.max_new_tokens=4",
            "p=0.25", "conditions=[ORI]", "expansion.enabled=false"]
    first = run_multilingual(load_config(MultilingualConfig, None, ["judge=refusal", *base, "importance={method: probe, n_probes: 2}"]),
                             tmp_path / "a", progress=False, lm=tiny_lm())
    seed_caches(first, tmp_path / "b")
    assert (tmp_path / "b" / "importance" / "partial" / "en-jail" / "manifest.json").exists()
    other = run_multilingual(load_config(MultilingualConfig, None, ["judge=refusal", *base, "importance={method: probe, n_probes: 3}"]),
                             tmp_path / "b", progress=False, lm=tiny_lm())
    s = ImportanceScores.load(other / "importance" / "importance-en-jail.safetensors")
    assert s.meta["resumed_cells"] == 0 and s.config["n_probes"] == 3


@pytest.mark.parametrize("margin", [None, 0.25])
def test_expansion_alignment_rows_and_benign_ceilings(margin):
    """align rows: each non-English row aligned to its English parallel, the English rows held, the benign
    prompts held or, with ``benign_margin``, ceilings that many separations below their own projections."""

    from safeneurons.config import load_config
    from safeneurons.pipelines.multilingual import MultilingualConfig, _benign_prompts, expansion_alignment, split_rows

    def config(margin: float | None) -> MultilingualConfig:
        align = "{layers: [0, 1], max_length: 64" + ("}" if margin is None else f", benign_margin: {margin}}}")
        return load_config(MultilingualConfig, None, ["judge=refusal", "languages=[en,zh]", "n_identify=3", "n_eval=2", "n_norm=3",
                                                      "expansion.benign_n=2", f"expansion.align={align}"])

    cfg = config(margin)
    lm = tiny_lm()
    ident, _ = split_rows(cfg)
    data = expansion_alignment(lm, cfg, ident, ["en", "zh"], None)
    benign = _benign_prompts(cfg)
    kinds = [(r.source, r.aligned, r.ceiling) for r in data.rows]
    assert kinds == [("zh", True, False)] * 3 + [("en", False, False)] * 3 + [("benign", False, margin is not None)] * 2
    assert [r.prompt for r in data.rows[6:]] == benign
    if margin is not None:
        held = expansion_alignment(lm, config(None), ident, ["en", "zh"], None)
        lowered = torch.tensor([r.target for r in held.rows[6:]]) - margin * data.directions.separation
        torch.testing.assert_close(torch.tensor([r.target for r in data.rows[6:]]), lowered)
        assert [r.target for r in data.rows[:6]] == [r.target for r in held.rows[:6]]


def test_expansion_alignment_floors_are_english_rows_outside_identification_and_evaluation():
    """harmful_floor_n: the next English rows after the held-out ones in the split's order, appended as floors
    (aligned to their own projections); too many for the dataset fails naming the setting. eval_skip moves the
    held-out rows past the floors without moving them."""
    from safeneurons.config import load_config
    from safeneurons.errors import ConfigError
    from safeneurons.pipelines.multilingual import (
        MultilingualConfig,
        expansion_alignment,
        floor_prompts,
        split_rows,
    )

    def config(*extra: str) -> MultilingualConfig:
        return load_config(MultilingualConfig, None, ["judge=refusal", "languages=[en,zh]", "n_identify=3", "n_eval=2", "n_norm=3",
                                                      "expansion.objective=align",
                                                      "expansion.align={layers: [0, 1], max_length: 64}", *extra])

    cfg = config("expansion.harmful_floor_n=4")
    ident, held = split_rows(cfg)
    floors = floor_prompts(cfg)
    assert len(floors) == 4 and not set(floors) & {*ident["en"].texts(), *held["en"].texts()}
    # the floors are the rows a larger held-out split would take next
    _, wider = split_rows(config("n_eval=6"))
    assert set(wider["en"].texts()) == {*held["en"].texts(), *floors}
    data = expansion_alignment(tiny_lm(), cfg, ident, ["en", "zh"], None)
    assert [(r.source, r.aligned) for r in data.rows[6:]] == [("floor[en]", True)] * 4
    assert [r.prompt for r in data.rows[6:]] == floors
    with pytest.raises(ConfigError, match="harmful_floor_n = 100000"):
        floor_prompts(config("expansion.harmful_floor_n=100000"))
    # eval_skip scores the rows after the floors instead; identification rows and floors stay where they were
    ident2, fresh = split_rows(config("expansion.harmful_floor_n=4", "eval_skip=6"))
    assert floor_prompts(config("expansion.harmful_floor_n=4", "eval_skip=6")) == floors
    assert ident2["en"].texts() == ident["en"].texts() and len(fresh["en"].prompts) == 2
    assert not set(fresh["en"].texts()) & {*ident["en"].texts(), *held["en"].texts(), *floors}
    assert [p.id for p in fresh["zh"].prompts] == [p.id for p in fresh["en"].prompts]
    with pytest.raises(ConfigError, match="would score floor rows"):
        config("expansion.harmful_floor_n=4", "eval_skip=3")
    with pytest.raises(ConfigError, match="too few for n_eval = 2"):
        split_rows(config("eval_skip=100000"))


def test_capability_batch_size_reaches_every_task(tmp_path, monkeypatch):
    """``capability.batch_size`` is what each task runs with unless ``batch_size_per_task`` names it (GSM8K's
    generation gains from wider batches); ``share_prefix`` reaches the tasks; a bad value names the field."""
    from safeneurons.config import load_config
    from safeneurons.errors import ConfigError
    from safeneurons.evaluate import capability
    from safeneurons.pipelines.attack import AttackConfig
    from safeneurons.pipelines.rundir import RunDir
    from safeneurons.pipelines.scoring import capability_stage

    with pytest.raises(ConfigError, match=r"capability\.batch_size"):
        load_config(AttackConfig, None, ["judge=refusal", "capability.batch_size=0"])
    with pytest.raises(ConfigError, match=r"capability\.batch_size_per_task\.mmlu"):
        load_config(AttackConfig, None, ["judge=refusal", "capability.batch_size_per_task={mmlu: 0}"])
    cfg = load_config(AttackConfig, None, ["judge=refusal", "capability.tasks=[arc_challenge, mmlu]", "capability.n=2",
                                           "capability.perplexity_texts=0", "capability.batch_size=5",
                                           "capability.batch_size_per_task={mmlu: 3}", "capability.share_prefix=false"])
    seen = []
    real = capability.evaluate_capability

    def spy(*args, **kwargs):
        seen.append((kwargs["batch_size"], kwargs["share_prefix"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(capability, "evaluate_capability", spy)
    run = RunDir(tmp_path / "run", "attack", cfg)
    out = capability_stage(run, tiny_lm(), {"ORI": None}, cfg.capability, progress=False)
    assert seen == [(5, None), (3, None)] and set(out["ORI"]["tasks"]) == {"arc_challenge", "mmlu"}
    assert load_config(AttackConfig, None, ["judge=refusal", ]).capability.share_prefix  # on by default
