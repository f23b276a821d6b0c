"""``safeneurons publish`` trims every verdicts.json to its published form (docs/results/index.md, "What the
run folders hold"): one record per scored prompt with what the readers use, the full reply with the judge's
reason for 3 records per condition and language, compliance first."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safeneurons import runformat as rf
from safeneurons.evaluate.asr import AsrTable, successes
from safeneurons.report.load import parse_verdicts

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
FULL_COMMIT = "6072a43"  # the published folders before their verdicts were trimmed


def _record(cond: str, lang: str, i: int, label: str, multijail: bool) -> dict:
    rid = f"multijail-{i}" if multijail else f"strongreject-{i}"
    return {"condition": cond, "category": f"cat{i % 3}", "language": lang, "id": rid,
            "prompt": f"prompt {i} ({lang})", "response": f"reply {cond} {lang} {i}",
            "verdict": {"label": label, "harmful": {"compliance": True, "refusal": False}.get(label),
                        "score": float(label == "compliance"),
                        "reason": f"why {i}", "judge": "refusal"}}


def _records(multijail: bool) -> list[dict]:
    """Groups with no, one, and many compliances, fewer records than full examples, and labels mixed."""
    langs = ("en", "zh", "bn") if multijail else ("en",)
    out = []
    for cond, n, compliant in (("ORI", 8, set()), ("FULL", 8, {5}), ("ES", 9, {1, 2, 4, 6, 8}), ("SAS", 2, {0})):
        for lang in langs:
            out += [_record(cond, lang, i, "compliance" if i in compliant else "degenerate" if i % 4 == 3
                            else "refusal", multijail) for i in range(n)]
    return out


def _is_full(rec: dict) -> bool:
    return "response" in rec


@pytest.mark.parametrize("multijail", [False, True])
def test_one_record_per_prompt_with_the_fields_readers_use(multijail):
    records = _records(multijail)
    trimmed = rf.trim_verdict_records(records)
    assert len(trimmed) == len(records)
    for full, short in zip(records, trimmed):
        for key in ("condition", "language", "id"):
            assert short[key] == full[key]
        assert {k: short["verdict"][k] for k in ("label", "harmful", "score", "judge")} == \
            {k: full["verdict"][k] for k in ("label", "harmful", "score", "judge")}
        if _is_full(short):
            assert short == full  # prompt, reply and the judge's reason, untouched
        else:
            assert "reason" not in short["verdict"]
            # StrongREJECT records keep prompt and category (the split and build_burned key on the text);
            # MultiJail records name their prompt by row id
            assert ("prompt" in short and "category" in short) is (not multijail)
            if not multijail:
                assert (short["prompt"], short["category"]) == (full["prompt"], full["category"])
    # the readers see the same: ASR tables, per-prompt successes, the report's counts and fallback examples
    group = ("language",) if multijail else ("category",)
    assert AsrTable.from_records(trimmed, group_by=group).to_dict() == AsrTable.from_records(records, group_by=group).to_dict()
    for cond in ("ORI", "FULL", "ES", "SAS"):
        assert successes(trimmed, cond) == successes(records, cond)
    assert parse_verdicts(trimmed) == parse_verdicts(records)


@pytest.mark.parametrize("n", [0, 1, 3, 5])
def test_n_full_replies_per_condition_and_language_compliance_first(n):
    records = _records(multijail=True)
    trimmed = rf.trim_verdict_records(records, full_examples=n)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault((r["condition"], r["language"]), []).append(i)
    for idx in groups.values():
        full = {i for i in idx if _is_full(trimmed[i])}
        assert len(full) == min(n, len(idx))
        compliant = [i for i in idx if records[i]["verdict"]["label"] == "compliance"][:n]
        others = [i for i in idx if i not in compliant][:n - len(compliant)]  # filled up in order
        assert full == set(compliant + others)


def test_trimming_is_idempotent_and_written_one_record_a_line(tmp_path):
    src = tmp_path / "full.json"
    src.write_text(json.dumps(_records(multijail=False), indent=2), encoding="utf-8")
    once, twice = tmp_path / "once.json", tmp_path / "twice.json"
    rf.trim_verdicts(src, once)
    rf.trim_verdicts(once, twice)
    assert once.read_bytes() == twice.read_bytes()
    lines = once.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "[" and lines[-1] == "]" and len(lines) == len(_records(False)) + 2
    assert json.loads(once.read_text(encoding="utf-8")) == rf.trim_verdict_records(_records(False))
    rf.trim_verdicts(once, once)  # in place
    assert once.read_bytes() == twice.read_bytes()


def test_the_published_verdicts_are_already_in_the_published_form():
    files = sorted(RESULTS.rglob(rf.VERDICTS))
    assert files
    for f in files:
        assert rf.trimmed_verdicts(f) == f.read_text(encoding="utf-8"), f


@pytest.mark.parametrize("name", ["headline/verdicts.json",
                                  "multilingual-0.5b-align-floor96-m2-fresh/multilingual/verdicts.json"])
def test_trimming_the_full_files_from_history_gives_the_published_ones(tmp_path, name):
    path = f"docs/results/{name}"
    try:
        full = subprocess.run(["git", "show", f"{FULL_COMMIT}:{path}"], cwd=ROOT, capture_output=True,
                              check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"git history with {FULL_COMMIT} not available")
    (tmp_path / "full.json").write_bytes(full)
    rf.trim_verdicts(tmp_path / "full.json", tmp_path / "trimmed.json")
    assert (tmp_path / "trimmed.json").read_bytes() == (ROOT / path).read_bytes()


def _load_script(path: Path, name: str):
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


def test_build_burned_keys_and_rejudge_refusal(tmp_path):
    """data/build_burned.py keys on the same prompts (text, MultiJail row ids); rejudge.py stops on a trimmed
    file with a pointer to the full one instead of judging empty replies."""
    full_dir, pub_dir = tmp_path / "full", tmp_path / "pub"
    for sub, mj in (("attack", False), ("ml/multilingual", True)):
        (full_dir / sub).mkdir(parents=True)
        (full_dir / sub / rf.VERDICTS).write_text(json.dumps(_records(mj)), encoding="utf-8")
        rf.trim_verdicts(full_dir / sub / rf.VERDICTS, pub_dir / sub / rf.VERDICTS)
    build_burned = _load_script(ROOT / "data" / "build_burned.py", "build_burned")
    assert build_burned.verdict_keys([pub_dir]) == build_burned.verdict_keys([full_dir])
    rejudge = _load_script(ROOT / "benchmarks" / "judge_agreement" / "rejudge.py", "rejudge")
    with pytest.raises(SystemExit, match="trimmed when published"):
        rejudge.rejudge(pub_dir / "attack" / rf.VERDICTS, judge=None)


def _tables(html: str, run_dir: Path) -> list[str]:
    """The report's tables, its run directory's path left out."""
    return re.findall(r"<table\b.*?</table>", html.replace(str(run_dir), "RUN"), flags=re.DOTALL)


def _section(html: str, name: str) -> str:
    return re.search(rf'<section id="{name}">(.*?)</section>', html, flags=re.DOTALL).group(1)


def _without_completions(parts: list[str]) -> list[str]:
    """The report's parts without the mention of completions/ (its file-list row, the examples' note)."""
    pattern = r'<tr><td class="mono">completions/</td>.*?</tr>|<p class="note">Completions written:.*?</p>\n?'
    return [re.sub(pattern, "", t) for t in parts]


@pytest.mark.needs_data
def test_published_tiny_run_reports_the_same_tables(tmp_path):
    from test_pipelines_tiny import tiny_lm

    from safeneurons.config import load_config
    from safeneurons.pipelines.attack import AttackConfig, run_attack
    from safeneurons.report import build_report, load_run
    from safeneurons.report.publish import publish_run

    cfg = load_config(AttackConfig, None, ["judge=refusal", "data.n_identify=6", "data.n_eval=4",
                                           "generation.max_new_tokens=3", "identify.params={tau_es: 0.5, tau_sas: 1.0}",
                                           "capability.n=2", "capability.perplexity_texts=2", "random_seeds=[0]"])
    run = run_attack(cfg, tmp_path / "run", progress=False, lm=tiny_lm())
    pub, whole = tmp_path / "pub", tmp_path / "whole"
    publish_run(run, pub)
    publish_run(run, whole, full=True)
    full_records = json.loads((run / rf.VERDICTS).read_text(encoding="utf-8"))
    published = json.loads((pub / rf.VERDICTS).read_text(encoding="utf-8"))
    assert json.loads((whole / rf.VERDICTS).read_text(encoding="utf-8")) == full_records
    assert published == rf.trim_verdict_records(full_records) and published != full_records
    assert sum(map(_is_full, published)) == 3 * len({r["condition"] for r in full_records})
    # the report of the published folder has the tables of the whole run's, with examples.json and without
    # (then the examples come from verdicts.json: the full records kept are the ones shown); the run's file
    # list differs in completions/ only, which publish never copies (--full neither)
    for drop_examples in (False, True):
        if drop_examples:
            for d in (run, pub, whole):
                (d / rf.EXAMPLES).unlink()
        html = {d.name: build_report(d, tmp_path / f"{d.name}-report-{drop_examples}").read_text(encoding="utf-8")
                for d in (run, pub, whole)}
        tables = {name: _tables(text, tmp_path / name) for name, text in html.items()}
        assert len(tables["run"]) > 3 and tables["pub"] == tables["whole"]
        assert _without_completions(tables["pub"]) == _without_completions(tables["run"])
        examples = {name: _section(text, "examples") for name, text in html.items()}
        assert examples["pub"] == examples["whole"] == _without_completions([examples["run"]])[0]
        assert load_run(pub).verdicts == load_run(run).verdicts


def test_published_results_stay_under_ten_megabytes():
    """docs/results holds the claims' folders, not raw dumps (issue 37): its files add up to less than 10 MB."""
    root = Path(__file__).resolve().parents[2] / "docs" / "results"
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 10_000_000, f"docs/results holds {total / 1e6:.1f} MB of files"
