"""The report shows everything a run writes: each pipeline's tiny run (train with two rounds, attack,
multilingual with expansion, analyze, brittleness, monitor evaluate) on a tiny random model, rendered, and every file of its
folder checked against the page.

What the run produced is read off its folder, not listed here: each file is looked up in the run format
(:data:`safeneurons.runformat.ENTRIES`), which names the report section that shows it (or why none does:
caches, weights, binary statistics). A file the format does not know fails, so a new file needs an entry
and a section; a file the format gives a section must be listed as read ("Files read", status ok), its
section must be present, and no "Not in this run" / "Could not be read" box may name it. A train run's
``attack-<model>/`` folders are runs of their own: their reports are checked the same way and linked."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest
from test_brittleness import TINY as BRITTLENESS_TINY
from test_pipelines_tiny import tiny_lm, train_overrides

from safeneurons.runformat import classify, matches, run_files, subruns

pytestmark = pytest.mark.needs_data


def _train(root: Path) -> Path:
    from safeneurons.config import load_config
    from safeneurons.pipelines.train import TrainRunConfig, run_train

    overrides = train_overrides(root / "tiny-model", "rounds=2", "over_refusal_n=2",
                                "attack.capability.tasks=[arc_challenge]", "attack.capability.n=2")
    return run_train(load_config(TrainRunConfig, None, overrides), root / "run", progress=False)


def _attack(root: Path) -> Path:
    from safeneurons.config import load_config
    from safeneurons.pipelines.attack import AttackConfig, run_attack

    cfg = load_config(AttackConfig, None, ["judge=refusal", "data.n_identify=6", "data.n_eval=4",
                                           "generation.max_new_tokens=3", "identify.params={tau_es: 0.5, tau_sas: 1.0}",
                                           "capability.n=2", "capability.perplexity_texts=2", "random_seeds=[0]"])
    return run_attack(cfg, root / "run", progress=False, lm=tiny_lm())


def _multilingual(root: Path) -> Path:
    from safeneurons.config import load_config
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual

    cfg = load_config(MultilingualConfig, None, [
        "judge=refusal", "languages=[en,zh,sw]", "n_identify=3", "n_eval=2", "n_norm=3", "generation.max_new_tokens=3",
        "importance.n_probes=2", "p=0.25", "expansion.target=union", "expansion.holdout=[sw]",
        "expansion.leave_one_out=true", "expansion.over_refusal_n=2", "expansion.benign_n=2",
        "expansion.benign_max_new_tokens=3", "expansion.benign_check_n=1",
        ("expansion.sft={max_steps: 1, per_device_train_batch_size: 2, gradient_accumulation_steps: 1, "
         "learning_rate: 0.01, warmup_ratio: 0.0, max_length: 64}")])
    return run_multilingual(cfg, root / "run", progress=False, lm=tiny_lm())


def _analyze(root: Path) -> Path:
    from safeneurons.config import load_config
    from safeneurons.pipelines.analyze import AnalyzeConfig, run_analyze

    cfg = load_config(AnalyzeConfig, None, ["n_per_category=4", "min_per_category=4", "n_harmless=6",
                                            "identify.params={tau_es: 0.5, tau_sas: 1.0}"])
    return run_analyze(cfg, root / "run", progress=False, lm=tiny_lm())


def _brittleness(root: Path) -> Path:
    from safeneurons.config import load_config
    from safeneurons.pipelines.brittleness import BrittlenessConfig, run_brittleness

    cfg = load_config(BrittlenessConfig, None, [*BRITTLENESS_TINY, "fractions=[1, 10]", "random_seeds=[0]"])
    return run_brittleness(cfg, root / "run", progress=False, lm=tiny_lm())


def _monitor_eval(root: Path) -> Path:
    """Every readout, MultiJail with translated benign prompts and the PRUNED condition (so every file kind)."""
    from safeneurons.config import load_config
    from safeneurons.models import model_layout
    from safeneurons.neurons import NeuronSet
    from safeneurons.pipelines.monitor_eval import MonitorEvalConfig, run_monitor_eval

    lm = tiny_lm()
    shape = model_layout(lm.model).shape()
    folder = root / "sets"
    folder.mkdir()
    for name, idx in (("FULL", range(12)), ("ES", range(4)), ("SAS", range(4, 9))):
        NeuronSet.from_triples(shape, [(layer, "mlp", i) for layer in range(2) for i in idx], name=name).save(
            folder / f"{name}.json")
    cfg = load_config(MonitorEvalConfig, None, [
        f"neurons={folder}", f"attack_set={folder / 'FULL.json'}", "judge=refusal", "n_fit=10", "n_score=4",
        "multijail_languages=[en, zh]", "multijail_n=2", "multijail_translate_n=2", "generation.max_new_tokens=3",
        "bootstrap=100"])
    return run_monitor_eval(cfg, root / "run", progress=False, lm=lm)


RUNS = {"train": _train, "attack": _attack, "multilingual": _multilingual, "analyze": _analyze,
        "brittleness": _brittleness, "monitor_eval": _monitor_eval}


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([a-z]+)">(.*?)</section>', html, flags=re.DOTALL))


def _files_read(html: str) -> dict[str, str]:
    """The Files read table: file (or folder/, or pattern) -> status."""
    rows = re.findall(r'<tr><td class="mono">([^<]*)</td><td class="[a-z]+">([a-z]+)</td>', _sections(html)["files"])
    return dict(rows)


def problems_of(run: Path, html: str) -> list[str]:
    """What the report at ``html`` misses of the run folder ``run`` (empty: nothing)."""
    from safeneurons.report.views import SECTIONS

    ids = {s.id for s in SECTIONS}
    secs = _sections(html)
    toc_absent = set(re.findall(r'<a href="#([a-z]+)" class="absent"', html))
    boxes = re.findall(r'<div class="missing (\w+)" role="note" data-missing="([^"]*)">', html)
    read = _files_read(html)
    shown: dict[str, list[str]] = defaultdict(list)
    out = []
    for rel in run_files(run):
        entry = classify(rel)
        if entry is None:
            out.append(f"{rel}: not in safeneurons.runformat.ENTRIES (give it an entry and a report section)")
        elif entry.section in ids:
            shown[entry.section].append(rel)
        elif entry.section not in (None, "subrun"):
            out.append(f"{rel}: its entry names section {entry.section!r}, which the report does not have")
    for sid, rels in shown.items():
        if sid in toc_absent or sid not in secs:
            out.append(f"section {sid!r} is marked absent though the run wrote {rels[:3]}")
        for rel in rels:
            named = [(kind, f) for kind, f in boxes if matches(f, rel)]
            if named:
                out.append(f"{rel}: the report says {named[0][0]} ({named[0][1]})")
            status = next((s for f, s in read.items() if matches(f, rel)), None)
            if status != "ok":
                out.append(f"{rel}: Files read lists it as {status or 'not read'}")
    for sub in subruns(run).values():
        rel = sub.relative_to(run).as_posix()
        if f'href="{rel}/report.html"' not in html:
            out.append(f"{rel}/: the report does not link its report")
        sub_html = sub / "report.html"
        if not sub_html.is_file():
            out.append(f"{rel}/report.html was not written")
            continue
        out += [f"{rel}/ {p}" for p in problems_of(sub, sub_html.read_text(encoding="utf-8"))]
    return out


@pytest.fixture(scope="module", params=list(RUNS))
def built(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, RUNS[request.param](tmp_path_factory.mktemp(request.param))


def test_report_shows_everything_the_run_wrote(built):
    from safeneurons.report import build_report

    kind, run = built
    html = build_report(run).read_text(encoding="utf-8")
    problems = problems_of(run, html)
    assert not problems, f"{kind} run: {len(problems)} problems:\n" + "\n".join(problems)
    # sections another command writes are left out, not boxed: a tiny run of one command shows no missing box
    boxes = re.findall(r"Not in this run\.[^<]{0,160}", html)
    assert not boxes, f"{kind} run: 'Not in this run' boxes: {boxes}"
    if kind == "brittleness":  # the curve's figure, every point and the neurons-to-break summary
        import json

        section = _sections(html)["brittleness"]
        curve = json.loads((run / "brittleness" / "curve.json").read_text())
        assert 'data-file="figures/brittleness_curve.png"' in section
        rows = re.findall(r"<tr><th>([a-z/-]+)</th><td class=\"num\">(\d*)</td><td class=\"num\">([\d.]+)</td>"
                          r"<td class=\"num\">(\d+)</td><td class=\"num\">(\d+) / (\d+)</td>", section)
        assert rows == [(p["attacker"], "" if p["seed"] is None else str(p["seed"]), f"{p['fraction']:g}",
                         str(p["n_neurons"]), str(p["k"]), str(p["n"])) for p in curve["points"]]
        assert "Neurons to break" in section and "leaves the random band" in section
    if kind == "monitor_eval":  # the ROC figure and a table per condition and scored pair
        section = _sections(html)["monitor"]
        assert 'data-file="figures/monitor_roc.png"' in section
        for title in ("ORI: xstest:unsafe vs xstest:safe", "PRUNED: strongreject vs self_instruct", "Survival: all",
                      "MultiJail AUROC (harmful rows vs benign prompts translated"):
            assert title in section, title


def test_migration_is_idempotent_and_stamps_the_format(built, tmp_path):
    import json
    import shutil

    from safeneurons.runformat import FORMAT, migrate

    _, run = built
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.safetensors", "model", "trainer"))
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["format"] == FORMAT  # new runs are written in the current format
    del manifest["format"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert migrate(copy) == [f"manifest.json: format None -> {FORMAT}"]
    assert migrate(copy) == []
    assert json.loads((copy / "manifest.json").read_text())["format"] == FORMAT


def test_migration_maps_older_names_onto_the_format(tmp_path):
    """What earlier versions (and hand-made folders the old report accepted) wrote: a training log at the
    run's root or under train/log.json, reused.json of one source. migrate() renames and reshapes them once;
    the report then reads them at their current names."""
    import json

    from safeneurons.report import build_report
    from safeneurons.runformat import FORMAT, migrate, train_log

    run = tmp_path / "old"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"command": "train", "status": "done", "stages": {}}))
    (run / "train_log.json").write_text(json.dumps({"records": [{"step": 1, "loss": 0.7, "frozen_drift": 0.0}]}))
    (run / "reused.json").write_text(json.dumps({"source": "/runs/a", "copied": ["x"], "at": "2026-11-26"}))
    html = build_report(run).read_text(encoding="utf-8")
    assert 'data-missing="*/train_log.json"' in html  # not guessed at by the reader
    changes = migrate(run)
    assert changes == [f"train_log.json -> {train_log('train')}", "reused.json: one source -> list",
                       f"manifest.json: format None -> {FORMAT}"]
    assert json.loads((run / "reused.json").read_text()) == {"reused": [{"source": "/runs/a", "copied": ["x"],
                                                                         "at": "2026-11-26"}]}
    html = build_report(run).read_text(encoding="utf-8")
    assert "Frozen weights did not move" in html and "/runs/a" in html
    assert problems_of(run, html) == [] and migrate(run) == []
