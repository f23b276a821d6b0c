"""``safeneurons monitor evaluate`` (issue 38, items 3 and 4): the ROC statistics with their intervals, the prompt
parts, the readouts' fitting, and the command end to end on tiny models.

The planted model (:func:`test_monitor.planted_model`): four layer-0 MLP neurons fire at the last prompt token
exactly when the prompt holds the marker ``~``, and harmful and benign prompts are twins differing only in the
marker, so a monitor on the planted neurons must separate them and a matched random set must not. Prompt
sources are files written here, so these tests need no datasets folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_monitor import PLANTED, planted_model, twins

from safeneurons.config import load_config
from safeneurons.data import split_of
from safeneurons.errors import ConfigError
from safeneurons.evaluate.roc import (
    auroc_interval,
    operating_point,
    paired_auroc_difference,
    roc_auc,
    roc_points,
)
from safeneurons.models import model_layout
from safeneurons.models.loading import LoadedModel
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.monitor_eval import MonitorEvalConfig, run_monitor_eval

# -- ROC statistics -----------------------------------------------------------------------------------------

scores = st.lists(st.integers(0, 6).map(float), min_size=1, max_size=25)


@given(scores, scores)
def test_roc_points_enclose_the_auroc(pos, neg):
    fpr, tpr = roc_points(pos, neg)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert all(a <= b for a, b in pairwise(fpr)) and all(a <= b for a, b in pairwise(tpr))
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(pos, neg))


def test_bootstrap_by_weights_is_the_auroc_of_each_resample():
    """The interval's resamples computed from multiplicities equal roc_auc on the resampled scores."""
    from safeneurons.evaluate.roc import _pair_matrix, _weights

    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 5, 17).astype(float), rng.integers(0, 4, 11).astype(float)
    draw = np.random.default_rng(0)
    w, u = _weights(pos.size, 5, draw), _weights(neg.size, 5, draw)
    h = _pair_matrix(pos, neg)
    for b in range(5):
        via_weights = w[b] @ h @ u[b] / (pos.size * neg.size)
        assert via_weights == pytest.approx(roc_auc(np.repeat(pos, w[b].astype(int)), np.repeat(neg, u[b].astype(int))))
    lo, hi = auroc_interval(pos, neg, n_boot=500)
    assert lo <= roc_auc(pos, neg) <= hi and 0 <= lo < hi <= 1
    assert auroc_interval([2, 3], [0, 1], n_boot=200) == (1.0, 1.0)


def test_paired_difference_of_a_readout_with_itself_is_zero_and_a_better_one_is_positive():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 60), rng.normal(0, 1, 50)
    assert paired_auroc_difference((pos, neg), [(pos, neg)], n_boot=300) == (0.0, 0.0, 0.0)
    noise = (rng.normal(0, 1, 60), rng.normal(0, 1, 50))
    delta, lo, hi = paired_auroc_difference((pos + 2, neg), [noise, (pos, neg)], n_boot=300)
    assert delta == pytest.approx(roc_auc(pos + 2, neg) - max(roc_auc(*noise), roc_auc(pos, neg)))
    assert 0 < lo <= delta <= hi


def test_operating_point_counts_strictly_above_the_threshold_with_wilson_intervals():
    from safeneurons.evaluate.asr import wilson_interval

    p = operating_point([0.9, 0.5, 0.2], [0.5, 0.1, 0.6, 0.05], 0.5)
    assert (p["tp"], p["n_pos"], p["fp"], p["n_neg"]) == (1, 3, 1, 4)
    assert p["tpr_ci"] == list(wilson_interval(1, 3)) and p["fpr_ci"] == list(wilson_interval(1, 4))


# -- readouts -----------------------------------------------------------------------------------------------


def _synthetic(seed: int = 0):
    """Train / validation / scored prompts with features: layer 2 of the residual stream carries the label on the
    fit parts."""
    from safeneurons.pipelines.monitor_eval_data import EvalData, EvalPrompt

    rng = np.random.default_rng(seed)
    prompts = [EvalPrompt(f"{part} {i}", "src", bool(i % 2), part) for part, n in
               (("train", 40), ("validation", 30), ("scored", 30)) for i in range(n)]
    texts = [p.text for p in prompts]
    y = np.array([p.harmful for p in prompts])
    residual = rng.normal(0, 1, (len(prompts), 4, 6)).astype(np.float32)
    residual[:, 2, 0] += 1.5 * y
    neurons = rng.normal(0, 1, (len(prompts), 5))
    return EvalData(prompts, {}, [], []), texts, neurons, residual


def test_the_probe_layer_and_thresholds_are_chosen_on_the_validation_part_only():
    """Whatever the scored prompts hold (labels permuted, features made to separate perfectly at layer 0), the
    fitted readouts, the chosen layer and every threshold stay the same."""
    from dataclasses import replace

    from safeneurons.pipelines.monitor_eval import PROBE, Readout, fit_readouts

    data, texts, neurons, residual = _synthetic()
    cfg = MonitorEvalConfig(neurons="x", residual_probe=True, probe_layer_on=())
    readouts = [Readout("SET", "neurons", cols=np.arange(5)), Readout(PROBE, "residual")]
    before = fit_readouts(readouts, neurons, residual, texts, data, cfg)
    assert before[PROBE].layer == 2 and before[PROBE].info["validation_auroc_by_layer"][2] > 0.8
    scored = np.array([p.part == "scored" for p in data.prompts])
    perm = np.random.default_rng(5).permutation(np.flatnonzero(scored))
    flipped = list(data.prompts)
    for i, j in zip(np.flatnonzero(scored), perm):
        flipped[i] = replace(data.prompts[i], harmful=data.prompts[j].harmful)
    data2 = replace(data, prompts=flipped)
    res2, neu2 = residual.copy(), neurons.copy()
    y2 = np.array([p.harmful for p in flipped])
    res2[scored, 0, 0] = 100.0 * y2[scored]  # the scored prompts would make layer 0 perfect
    neu2[scored] = 50.0 * y2[scored, None]
    after = fit_readouts(readouts, neu2, res2, texts, data2, cfg)
    for name in ("SET", PROBE):
        assert after[name].layer == before[name].layer
        assert after[name].thresholds == before[name].thresholds
        assert np.array_equal(after[name].model.weight, before[name].model.weight)
        assert after[name].info == before[name].info


def test_the_probe_layer_is_chosen_on_the_form_matched_validation_rows():
    """Validation rows of two kinds: a form-mixed pair (AdvBench vs Self-Instruct) that layer 0 separates by form
    alone, and a same-form pair (XSTest) that only layer 2 separates. With probe_layer_on naming the same-form
    pair the probe reads layer 2; choosing on every validation row picks the form detector (layer 0)."""
    from safeneurons.pipelines.monitor_eval import PROBE, Readout, fit_readouts
    from safeneurons.pipelines.monitor_eval_data import EvalData, EvalPrompt

    rng = np.random.default_rng(1)
    prompts = []
    for part, n in (("train", 80), ("validation", 80)):
        for i in range(n):
            harmful, matched = bool(i % 2), i % 4 >= 2
            source = ("xstest:unsafe" if harmful else "xstest:safe") if matched else (
                "advbench" if harmful else "self_instruct")
            prompts.append(EvalPrompt(f"{part} {i}", source, harmful, part))
    texts = [p.text for p in prompts]
    y = np.array([p.harmful for p in prompts])
    form = np.array([p.source in ("advbench", "self_instruct") for p in prompts])
    residual = rng.normal(0, 1, (len(prompts), 3, 4))
    residual[:, 0, 0] += 6.0 * (y & form) - 6.0 * (~y & form)  # layer 0: perfect on the form-mixed pair only
    residual[:, 2, 1] += 1.2 * y  # layer 2: the harmfulness signal, weaker but on both pairs
    data = EvalData(prompts, {}, [], [])
    readouts = [Readout(PROBE, "residual")]
    neurons = rng.normal(0, 1, (len(prompts), 2))
    matched = fit_readouts(readouts, neurons, residual, texts, data, MonitorEvalConfig(neurons="x"))[PROBE]
    assert matched.layer == 2
    assert matched.info["layer_chosen_on"] == {"sources": ["xstest:unsafe", "xstest:safe"], "n_pos": 20, "n_neg": 20}
    every = fit_readouts(readouts, neurons, residual, texts, data,
                         MonitorEvalConfig(neurons="x", probe_layer_on=()))[PROBE]
    assert every.layer == 0


def test_probe_layer_on_must_name_a_harmful_and_a_benign_fit_source():
    with pytest.raises(ConfigError, match="probe_layer_on"):
        MonitorEvalConfig(neurons="x", probe_layer_on=("xstest:unsafe",))
    with pytest.raises(ConfigError, match="probe_layer_on"):
        MonitorEvalConfig(neurons="x", probe_layer_on=("xstest:unsafe", "harmbench"))


def test_rows_with_identical_features_tie_exactly():
    from safeneurons.evaluate.readouts import fit_readout

    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (40, 30)), np.arange(40) % 2 == 0
    r = fit_readout(x, y, 1.0)
    same = np.zeros((257, 30))  # many identical rows, as a zeroed set gives
    assert np.unique(r.scores(same)).size == 1


# -- prompt parts -------------------------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_fit_and_scored_parts_are_disjoint_and_do_not_move_with_the_split(tmp_path):
    """Fit prompts come from the dev half only and are the same for dev and test runs; scored prompts are the
    split's, never a fit or identification prompt; a fit-only source is never scored."""
    from safeneurons.pipelines.monitor_eval_data import assemble

    h = _write(tmp_path / "h.txt", [f"how do I hurt person number {i}" for i in range(120)])
    b = _write(tmp_path / "b.txt", [f"how do I bake cake number {i}" for i in range(120)])
    extra = _write(tmp_path / "extra.txt", [f"how do I hurt person number {i}" for i in range(60, 90)] +
                   [f"write malware variant {i}" for i in range(30)])
    ident = NeuronSet.from_triples(_shape(), [(0, "mlp", 1)], name="FULL", provenance={
        "datasets": {"harmful": {"name": h, "n": 10, "sha256": _sample_hash(h, 10), "notes": ["sample 10 seed 0"]}}})
    common = [f"fit_harmful=[{h}, {extra}]", f"fit_harmless=[{b}]", f"score_harmful=[{h}]", f"score_harmless=[{b}]",
              "multijail_languages=[]", "neurons=x"]
    dev = assemble(load_config(MonitorEvalConfig, None, common), [ident])
    test = assemble(load_config(MonitorEvalConfig, None, [*common, "split=test"]), [ident])
    fit = lambda d: sorted((p.text, p.part) for p in d.prompts if p.part != "scored")
    assert fit(dev) == fit(test) and fit(dev)
    assert all(split_of(t) == "dev" for t, _ in fit(dev))
    ident_texts = set(_sample(h, 10))
    for d, side in ((dev, "dev"), (test, "test")):
        scored = {p.text for p in d.scored()}
        assert scored and all(split_of(t) == side for t in scored)
        assert not scored & {t for t, _ in fit(d)} and not scored & ident_texts
        assert not any(p.source == extra for p in d.scored())
        assert not ident_texts & {p.text for p in d.prompts}
    assert {p.text for p in dev.scored()}.isdisjoint(p.text for p in test.scored())
    counts = {c["source"]: c for c in dev.counts}
    assert counts[h]["removed_identification"] == 10
    assert counts[extra]["train"] + counts[extra]["validation"] > 0 and counts[extra]["scored"] == 0
    assert [r.name for r in dev.refs] == [h, b] and all(r.split == "dev" for r in dev.refs)


def _shape():
    from safeneurons.neurons import ModelShape

    return ModelShape(2, {"mlp": 64})


def _sample(spec: str, n: int) -> list[str]:
    from safeneurons.data import load_prompts

    return load_prompts(spec).sample(n, 0).texts()


def _sample_hash(spec: str, n: int) -> str:
    from safeneurons.data import load_prompts

    return load_prompts(spec).sample(n, 0).sha256


# -- the command on the planted model ----------------------------------------------------------------------


def _planted_lm() -> LoadedModel:
    from tiny import make_tiny_model, tiny_tokenizer

    return LoadedModel(planted_model(make_tiny_model), tiny_tokenizer(), "planted", "planted-llama", None,
                       "sha256:planted", "float32", "local")


def _planted_inputs(root: Path) -> list[str]:
    """Prompt files and neuron sets (FULL = the planted neurons, ES = two of them, SAS = one: skipped)."""
    harmful, benign = twins(180, seed=11)
    h, b = _write(root / "harmful.txt", harmful), _write(root / "benign.txt", benign)
    shape = model_layout(_planted_lm().model).shape()
    folder = root / "neurons"
    folder.mkdir(parents=True, exist_ok=True)
    for name, idx in (("FULL", PLANTED), ("ES", PLANTED[:2]), ("SAS", PLANTED[:1])):
        NeuronSet.from_triples(shape, [(0, "mlp", j) for j in idx], name=name).save(folder / f"{name}.json")
    NeuronSet.from_triples(shape, [(0, "mlp", j) for j in PLANTED], name="FULL").save(root / "attack.json")
    return [f"neurons={folder}", f"fit_harmful=[{h}]", f"fit_harmless=[{b}]", f"score_harmful=[{h}]",
            f"score_harmless=[{b}]", "multijail_languages=[]", "judge=refusal", "generation.max_new_tokens=2",
            "generation.batch_size=32", "batch_size=32", "bootstrap=300"]


def _count_passes(model: torch.nn.Module):
    calls: list[int] = []
    handle = model.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    overrides = [*_planted_inputs(root), f"attack_set={root / 'attack.json'}"]
    cfg = load_config(MonitorEvalConfig, None, overrides)
    lm = _planted_lm()
    calls, handle = _count_passes(lm.model)
    try:
        out = run_monitor_eval(cfg, root / "run", progress=False, lm=lm)
    finally:
        handle.remove()
    return root, out, cfg, len(calls)


def _row(doc, readout, group, condition="ORI", fitted_on=None):
    fitted_on = condition if fitted_on is None else fitted_on
    return next(r for r in doc["rows"] if r["condition"] == condition and r["readout"] == readout
                and r["group"] == group and r["fitted_on"] == fitted_on)


def test_the_planted_monitor_beats_the_matched_random_sets(planted_run):
    _, out, cfg, _ = planted_run
    doc = json.loads((out / "monitor_eval.json").read_text())
    pair = doc["groups"][0]
    assert pair == f"{cfg.score_harmful[0]} vs {cfg.score_harmless[0]}" and doc["groups"][1] == "all"
    full, es = _row(doc, "FULL", pair), _row(doc, "ES", pair)
    assert full["auroc"] > 0.99 and es["auroc"] > 0.99
    for seed in cfg.random_seeds:
        assert abs(_row(doc, f"RANDOM{seed}", pair)["auroc"] - 0.5) < 0.2
    assert full["delta_vs_random"]["ci"][0] > 0.2  # the margin over the best random set, paired bootstrap
    assert full["deployed"]["0.01"]["tpr"] > 0.9 and full["deployed"]["0.05"]["fpr"] <= 0.1
    assert [s["set"] for s in doc["skipped"]] == ["SAS"]  # one neuron: no monitor
    assert {r["name"] for r in doc["readouts"]} == {"FULL", "ES", "RANDOM0", "RANDOM1", "PROBE", "REFUSAL"}
    n_scored = sum(c["scored"] for c in doc["data"])
    assert full["n_pos"] + full["n_neg"] == n_scored
    # the fitted monitors are files `monitor score` reads, bound to the weights they were fitted on
    from safeneurons.evaluate.monitor import Monitor

    mon = Monitor.load(out / "monitor_eval" / "monitors" / "ORI" / "FULL", model_checksum="sha256:planted")
    assert mon.threshold(0.01) == next(f for f in doc["fits"] if f["condition"] == "ORI"
                                       and f["readout"] == "FULL")["thresholds"]["0.01"]
    with pytest.raises(ConfigError, match="fitted on model weights"):
        Monitor.load(out / "monitor_eval" / "monitors" / "ORI" / "FULL", model_checksum="sha256:other")


def test_the_survival_block_zeroes_the_attack_set(planted_run):
    """On PRUNED the attack set's activations read 0 (the feature pass sees the zeroing), so its monitors fall to
    AUROC 0.5 whether fitted on ORI or again; the random sets (drawn outside it) are untouched."""
    from safeneurons.io import read_safetensors

    root, out, _, _ = planted_run
    doc = json.loads((out / "monitor_eval.json").read_text())
    assert [c["name"] for c in doc["conditions"]] == ["ORI", "PRUNED"]
    assert doc["conditions"][1]["zeroed"]["n"] == len(PLANTED)
    union = None
    for name in ("FULL", "ES", "RANDOM0", "RANDOM1"):
        s = NeuronSet.load(out / "neurons" / f"{name}.json")
        union = s if union is None else union.union(s)
    pos = {t: i for i, t in enumerate(union)}
    attack = [pos[t] for t in NeuronSet.load(root / "attack.json")]
    per_key = {}
    for shard in (out / "monitor_eval" / "feature_cache").glob("*/*.safetensors"):
        per_key.setdefault(shard.parent.name, []).append(read_safetensors(shard)[0]["neurons"].numpy())
    maxima = sorted(float(np.abs(np.concatenate(v)[:, attack]).max()) for v in per_key.values())
    assert len(maxima) == 2 and maxima[0] == 0.0 and maxima[1] > 1.0
    pair = doc["groups"][0]
    for fitted_on in ("ORI", "PRUNED"):
        assert _row(doc, "FULL", pair, "PRUNED", fitted_on)["auroc"] == 0.5
    assert abs(_row(doc, "RANDOM0", pair, "PRUNED", "ORI")["auroc"] - _row(doc, "RANDOM0", pair)["auroc"]) < 1e-9


def test_a_trained_model_from_a_local_folder(tmp_path):
    """trained_model: another model of the same shape read from a local folder (as SafeNeuron-trained weights
    would be). Its readouts are applied as fitted on ORI (across weights on purpose: the record names both
    checksums) and fitted again; the monitor files keep each their own weights' checksum, so `monitor score`
    refuses the ORI monitor on the trained weights."""
    from safeneurons.evaluate.monitor import Monitor

    trained = _planted_lm()
    with torch.no_grad():  # "training": the planted neurons fire half as strongly
        mlp = trained.model.model.layers[0].mlp
        mlp.up_proj.weight[list(PLANTED)] *= 0.5
    folder = tmp_path / "trained"
    trained.model.save_pretrained(folder)
    trained.tokenizer.save_pretrained(folder)
    cfg = load_config(MonitorEvalConfig, None, [*_planted_inputs(tmp_path), f"trained_model={folder}",
                                                f"attack_set={tmp_path / 'attack.json'}", "refusal=false"])
    out = run_monitor_eval(cfg, tmp_path / "run", progress=False, lm=_planted_lm())
    doc = json.loads((out / "monitor_eval.json").read_text())
    conds = {c["name"]: c for c in doc["conditions"]}
    assert list(conds) == ["ORI", "PRUNED", "TRAINED", "TRAINED_PRUNED"]
    assert conds["TRAINED"]["checksum"].startswith("sha256:") and conds["TRAINED"]["checksum"] != "sha256:planted"
    pair = doc["groups"][0]
    assert _row(doc, "FULL", pair, "TRAINED", "ORI")["auroc"] > 0.99  # the ORI monitor still reads the signal
    assert _row(doc, "FULL", pair, "TRAINED", "TRAINED")["auroc"] > 0.99
    assert _row(doc, "FULL", pair, "TRAINED_PRUNED", "ORI")["auroc"] == 0.5
    mon = out / "monitor_eval" / "monitors"
    Monitor.load(mon / "TRAINED" / "FULL", model_checksum=conds["TRAINED"]["checksum"])
    with pytest.raises(ConfigError, match="fitted on model weights"):
        Monitor.load(mon / "ORI" / "FULL", model_checksum=conds["TRAINED"]["checksum"])


def test_resume_recomputes_nothing(planted_run):
    """The same command on the finished folder runs no forward pass: features, replies and verdicts are read
    back, and the numbers are the same."""
    _, out, cfg, first = planted_run
    assert first > 0
    before = (out / "monitor_eval.json").read_text()
    lm = _planted_lm()
    calls, handle = _count_passes(lm.model)
    try:
        run_monitor_eval(cfg, out, progress=False, lm=lm)
    finally:
        handle.remove()
    assert calls == []
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert stages["features:ORI"]["computed"] == 0 and stages["features:PRUNED"]["computed"] == 0
    assert json.loads((out / "monitor_eval.json").read_text())["rows"] == json.loads(before)["rows"]


def test_a_test_run_reuses_the_dev_runs_fit_features(planted_run, tmp_path, monkeypatch):
    """--reuse carries the feature cache: a test-split run computes features only for the prompts the dev run
    did not have (its scored test prompts), and fits the very same readouts."""
    from safeneurons.pipelines.rundir import seed_caches

    _, out, cfg, _ = planted_run
    monkeypatch.setenv("SAFENEURONS_LEDGER", str(tmp_path / "ledger.jsonl"))
    copied = seed_caches(out, tmp_path / "test")
    assert any("feature_cache" in c for c in copied)
    from dataclasses import replace

    test_cfg = replace(cfg, split="test")
    run_monitor_eval(test_cfg, tmp_path / "test", progress=False, lm=_planted_lm())
    dev_prompts = {p["text"] for p in json.loads((out / "monitor_eval" / "prompts.json").read_text())}
    test_prompts = json.loads((tmp_path / "test" / "monitor_eval" / "prompts.json").read_text())
    new = {p["text"] for p in test_prompts} - dev_prompts
    stages = json.loads((tmp_path / "test" / "manifest.json").read_text())["stages"]
    assert new and stages["features:ORI"]["computed"] == len(new)
    fits = lambda d: [f for f in json.loads((d / "monitor_eval.json").read_text())["fits"]]
    assert fits(out) == fits(tmp_path / "test")


def test_the_report_shows_the_evaluation(planted_run):
    import re

    from safeneurons.report import build_report

    _, out, _, _ = planted_run
    html = build_report(out).read_text(encoding="utf-8")
    section = re.search(r'<section id="monitor">(.*?)</section>', html, flags=re.DOTALL).group(1)
    assert 'data-file="figures/monitor_roc.png"' in section and (out / "figures" / "monitor_roc.png").is_file()
    for title in ("Prompts", "Fits (training part", "ORI: ", "PRUNED: ", "False alarms", "Survival: "):
        assert title in section, title
    assert re.search(r"The probe(&#39;|')s layer is chosen on the validation prompts of \S+ vs \S+ \(16 harmful / 10 "
                     r"benign\)", section)
    assert "Not in this run" not in html and "Could not be read" not in html
    assert (out / "roc.png").stat().st_size > 1000
    assert "monitor AUROC" in html  # the overview line
    # publishing keeps the tables and the figure, not the raw replies, per-prompt scores or monitors
    from test_report_whole import problems_of

    from safeneurons.report.publish import publish_run

    pub = out.parent / "published"
    files = {p.relative_to(pub).as_posix() for p in publish_run(out, pub)}
    assert {"monitor_eval.json", "monitor_eval.md", "roc.png", "report.html", "neurons/FULL.json"} <= files
    assert not any(f.startswith(("monitor_eval/replies/", "monitor_eval/scores/", "monitor_eval/monitors/",
                                 "monitor_eval/feature_cache/")) for f in files)
    again = build_report(pub).read_text(encoding="utf-8")
    assert problems_of(pub, again) == []
    assert re.search(r'<section id="monitor">(.*?)</section>', again, flags=re.DOTALL).group(1).count("<table") == \
        section.count("<table")


def test_a_test_split_run_logs_its_look_before_any_forward_pass(tmp_path, monkeypatch):
    ledger = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("SAFENEURONS_LEDGER", str(ledger))
    cfg = load_config(MonitorEvalConfig, None, [*_planted_inputs(tmp_path), "split=test", "refusal=false",
                                                "residual_probe=false", "bootstrap=100"])
    lm = _planted_lm()
    seen: list[int] = []

    def check(*_):  # every forward pass happens after the opened line
        seen.append(sum(1 for line in ledger.read_text().splitlines() if json.loads(line)["event"] == "opened"))

    handle = lm.model.model.register_forward_pre_hook(check)
    try:
        run_monitor_eval(cfg, tmp_path / "run", progress=False, lm=lm)
    finally:
        handle.remove()
    assert seen and set(seen) == {1}
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [r["event"] for r in lines] == ["opened", "result"] and lines[0]["id"] == lines[1]["id"]
    assert [s["split"] for s in lines[0]["prompt_sets"]] == ["test", "test"]
    assert lines[1]["result"]["rows"]
    # a ledger that cannot be written stops the run before the run folder or any model work
    monkeypatch.setenv("SAFENEURONS_LEDGER", str(tmp_path))  # a folder
    with pytest.raises(ConfigError, match="cannot append to the test ledger"):
        run_monitor_eval(cfg, tmp_path / "run2", progress=False, lm=lm)
    assert not (tmp_path / "run2").exists()


def test_bad_settings_fail_at_load():
    for bad, needle in (("sets=[ES, SAS]", "sets"), ("fprs=[0.0]", "fprs"), ("score_harmless=[a]", "score_harmless"),
                        ("fit_share=1", "fit_share"), ("multijail_languages=[xx]", "MultiJail has no language"),
                        ("judge=gaurd", "judge")):
        with pytest.raises(ConfigError, match=needle):
            load_config(MonitorEvalConfig, None, [bad])


# -- the command line ---------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # one torch thread, as conftest gives the in-process tests: a tiny model on two contended threads is ~100x slower
    env = {**os.environ, "COLUMNS": "200", "SAFENEURONS_LEDGER": str(cwd / "ledger.jsonl"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "safeneurons.cli.main", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env, check=False)


def test_monitor_evaluate_command_on_a_tiny_model(tmp_path):
    lm = _planted_lm()
    model_dir = tmp_path / "model"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    sets = [f"--set={o}" for o in _planted_inputs(tmp_path) if not o.startswith("neurons=")]
    proc = _cli("monitor", "evaluate", "--model", str(model_dir), "--neurons", str(tmp_path / "neurons"),
                "--attack-set", str(tmp_path / "attack.json"), "--out", str(tmp_path / "run"), "-q",
                *sets, "--set", "residual_probe=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "# Monitor evaluation" in proc.stdout and "report:" in proc.stdout
    doc = json.loads((tmp_path / "run" / "monitor_eval.json").read_text())
    assert doc["model_checksum"].startswith("sha256:") and [c["name"] for c in doc["conditions"]] == ["ORI", "PRUNED"]
    assert (tmp_path / "run" / "report.html").is_file()
    # the sealed split is never chosen from --set (only --split), and nothing is written then
    proc = _cli("monitor", "evaluate", "--model", str(model_dir), "--neurons", str(tmp_path / "neurons"), *sets,
                "--set", "split=test", "--out", str(tmp_path / "run2"), cwd=tmp_path)
    assert proc.returncode == 2 and "--split test" in proc.stderr and not (tmp_path / "run2").exists()
    proc = _cli("config", "show", "monitor", "evaluate", cwd=tmp_path)
    assert proc.returncode == 0 and "multijail_translate_n" in proc.stdout and "attack_set" in proc.stdout
