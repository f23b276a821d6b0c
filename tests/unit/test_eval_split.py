"""The sealed dev/test split of the evaluation sets (safeneurons.data.split_of), the burned-prompt list, and
the test-scoring ledger (safeneurons.pipelines.ledger): each test fails when its guarantee breaks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from safeneurons.data import Prompt, PromptSet, eval_split, item_key, split_of
from safeneurons.data import prompts as prompts_mod
from safeneurons.errors import ConfigError, DataError
from safeneurons.pipelines import ledger

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
needs_data = pytest.mark.needs_data


# the split --------------------------------------------------------------------------------------------
KEYS = [f"How do I make item number {i}?" for i in range(400)] + [f"multijail-{i}" for i in range(50)]


def test_split_is_stable_across_calls_orders_and_processes():
    sides = {k: split_of(k) for k in KEYS}
    assert set(sides.values()) == {"dev", "test"}
    assert {k: split_of(k) for k in reversed(KEYS)} == sides
    assert split_of("  HOW do I make item number 3?! ") == sides["How do I make item number 3?"]  # normalised
    code = ("import json, sys; from safeneurons.data import split_of; "
            "print(json.dumps([split_of(k) for k in json.load(sys.stdin)]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(KEYS), capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert json.loads(out.stdout) == [sides[k] for k in KEYS]


@given(st.lists(st.text(min_size=1, max_size=30).filter(lambda t: t.strip()), min_size=1, max_size=40),
       st.randoms(use_true_random=False))
def test_split_is_disjoint_covers_the_set_and_ignores_order(texts, rnd):
    ps = PromptSet("x", [Prompt(t, id=str(i)) for i, t in enumerate(texts)])
    dev, test = eval_split(ps, "dev"), eval_split(ps, "test")
    assert len(dev) + len(test) == len(ps)
    assert not {item_key(p) for p in dev} & {item_key(p) for p in test}
    shuffled = list(ps.prompts)
    rnd.shuffle(shuffled)
    again = eval_split(PromptSet("y", shuffled), "test")
    assert sorted(p.id for p in again) == sorted(p.id for p in test)
    assert eval_split(ps, "all") is ps


def test_about_half_of_the_items_are_test():
    keys = [f"question {i}" for i in range(4000)]
    share = sum(split_of(k) == "test" for k in keys) / len(keys)
    assert prompts_mod.TEST_FRACTION == 0.5 and abs(share - 0.5) < 0.03


def test_a_burned_key_is_dev_whatever_its_hash(monkeypatch):
    key = next(k for k in KEYS if split_of(k) == "test")
    monkeypatch.setattr(prompts_mod, "burned_hashes", lambda: frozenset({prompts_mod.burned_hash(key)}))
    assert split_of(key) == "dev"
    assert split_of(key.upper() + " ") == "dev"  # burned by the normalised key


def test_bad_split_names_the_key():
    from safeneurons.pipelines.common import DataConfig
    from safeneurons.pipelines.multilingual import MultilingualConfig

    with pytest.raises(ConfigError, match=r"data\.split = 'train'"):
        DataConfig(split="train")
    with pytest.raises(ConfigError, match=r"multilingual\.split = 'holdout'"):
        MultilingualConfig(split="holdout")
    with pytest.raises(DataError, match="split = 'x'"):
        eval_split(PromptSet("x", [Prompt("a")]), "x")


# the datasets: sampling within the split, burned prompts, MultiJail rows ----------------------------------
@needs_data
def test_eval_prompts_sample_within_the_split_whatever_the_seed_and_size():
    from safeneurons.pipelines.common import DataConfig, load_eval_data, load_identification_data

    ident = list(load_identification_data(DataConfig(n_identify=8)))
    pools = {split: {p.text for p in load_eval_data(DataConfig(split=split), ident)}
             for split in ("dev", "test")}
    assert pools["dev"] and pools["test"] and not pools["dev"] & pools["test"]
    everything = {p.text for p in load_eval_data(DataConfig(split="all"), ident)}
    assert pools["dev"] | pools["test"] == everything
    for seed in (0, 1, 7):
        for n in (5, 40):
            got = load_eval_data(DataConfig(split="test", seed=seed, n_eval=n), ident)
            assert len(got) == n and {p.text for p in got} <= pools["test"]


@needs_data
def test_an_identification_dataset_as_evaluation_set_keeps_its_rows_not_sampled_for_identification():
    from safeneurons.data import load_prompts, normalise
    from safeneurons.pipelines.common import DataConfig, load_eval_data, load_identification_data

    data = DataConfig(n_identify=128, eval="advbench")
    harmful, harmless = load_identification_data(data)
    held = load_eval_data(data, [harmful, harmless])
    sampled = {normalise(p.text) for p in harmful}
    dev = {normalise(p.text) for p in eval_split(load_prompts("advbench"), "dev")}
    assert {normalise(p.text) for p in held} == dev - sampled  # every dev row but the sampled ones
    assert 0 < len(held) < len(dev)
    # another evaluation set still loses every row of the identification datasets, sampled or not
    other = load_eval_data(DataConfig(n_identify=8, split="all"), [harmful, harmless])
    assert not {normalise(p.text) for p in other} & {normalise(p.text) for p in load_prompts("advbench")}


def _scored_on_test(path):
    """data/build_burned.scored_on_test: whether the published run that wrote ``path`` scored --split test."""
    sys.path.insert(0, str(ROOT / "data"))
    try:
        from build_burned import scored_on_test
    finally:
        sys.path.remove(str(ROOT / "data"))
    return scored_on_test(path)


def _published(name):
    """Files ``name`` of published runs that scored dev (or predate the split); test-split runs are left out."""
    return sorted(f for f in RESULTS.rglob(name) if not _scored_on_test(f))


@needs_data
def test_prompts_scored_in_published_runs_are_never_test():
    """Every prompt of every published verdicts.json (MultiJail rows by id), every XSTest prompt of a
    published over-refusal result and every capability question id recorded there lands on dev."""
    from safeneurons.data import load_prompts

    assert _published("verdicts.json") and prompts_mod.burned_hashes()
    for f in _published("verdicts.json"):
        for rec in json.loads(f.read_text()):
            key = rec["id"] if rec["id"].startswith("multijail-") else rec["prompt"]
            assert split_of(key) == "dev", (f, rec["id"])
    text_of = {p.id: p.text for p in load_prompts("xstest:all")}
    for f in _published("over_refusal/*.json"):
        res = json.loads(f.read_text())
        for r in (res.get("verdicts") or []) + res["examples"]:
            assert split_of(text_of[r["id"]]) == "dev", (f, r["id"])
    for f in _published("capability.json"):
        for cond in json.loads(f.read_text()).values():
            for task, res in cond.get("tasks", {}).items():
                assert all(split_of(f"{task}:{i}") == "dev" for i in res.get("ids") or []), (f, task)
    # and the published harmful prompts would otherwise have put some in test: the list does something
    texts = {rec["prompt"] for rec in json.loads((RESULTS / "headline" / "verdicts.json").read_text())}
    salt, norm = prompts_mod.SPLIT_SALT, prompts_mod.normalise
    raw = [t for t in texts if int(prompts_mod.sha256_text(f"{salt}:{norm(t)}")[:8], 16) < 2**31]
    assert raw


@needs_data
def test_published_test_split_runs_scored_only_test_rows():
    """A published --split test run (e.g. multilingual-0.5b-expansion-test) scored only rows of the test half."""
    files = [f for f in RESULTS.rglob("verdicts.json") if _scored_on_test(f)]
    assert files
    for f in files:
        for rec in json.loads(f.read_text()):
            key = rec["id"] if rec["id"].startswith("multijail-") else rec["prompt"]
            assert split_of(key) == "test", (f, rec["id"])


@needs_data
def test_burned_list_is_what_the_script_builds():
    sys.path.insert(0, str(ROOT / "data"))
    try:
        import build_burned
    finally:
        sys.path.remove(str(ROOT / "data"))
    built = build_burned.build()
    shipped = json.loads(prompts_mod.BURNED_FILE.read_text())
    assert built == shipped and shipped["hashes"] == sorted(set(shipped["hashes"]))
    assert shipped["made_by"] == "data/build_burned.py" and shipped["counts"]["multijail"] > 0


@needs_data
def test_multijail_languages_of_a_row_share_its_side_and_test_runs_train_like_dev_runs():
    from safeneurons.config import load_config
    from safeneurons.pipelines.multilingual import MultilingualConfig, floor_prompts, split_rows

    def cfg(split):
        return load_config(MultilingualConfig, None, ["judge=refusal", "languages=[en,zh,sw]", "n_identify=5", "n_eval=6",
                                                      f"split={split}", "expansion.objective=align",
                                                      "expansion.harmful_floor_n=3"])

    runs = {s: split_rows(cfg(s)) for s in ("dev", "test", "all")}
    for split in ("dev", "test"):
        ident, held = runs[split]
        for rows in (ident, held):
            assert len({frozenset(p.id for p in ps) for ps in rows.values()}) == 1  # same rows everywhere
        assert all(split_of(p.id) == split for ps in held.values() for p in ps)
        assert all(split_of(p.id) == "dev" for ps in ident.values() for p in ps)
        assert len(held["zh"]) == 6 and {p.language for p in held["sw"]} == {"sw"}
    # identification rows and floors do not depend on which half is scored
    assert [p.id for p in runs["dev"][0]["en"]] == [p.id for p in runs["test"][0]["en"]]
    assert floor_prompts(cfg("dev")) == floor_prompts(cfg("test"))
    assert not {p.id for p in runs["dev"][1]["en"]} & {p.id for p in runs["test"][1]["en"]}
    # split: all keeps the row choice of the runs published before the split
    from safeneurons.data import load_prompts
    from safeneurons.pipelines.multilingual import _row_order

    order = _row_order({p.id for p in load_prompts("multijail")}, 0)
    assert {p.id for p in runs["all"][0]["en"]} == set(order[:5])


@needs_data
def test_capability_questions_are_drawn_within_the_split():
    from safeneurons.data.datasets import read_jsonl_file
    from safeneurons.evaluate.capability import ARC_FILE, question_key, scored_keys, split_indices, subsample

    rows = read_jsonl_file(ARC_FILE)
    for split in ("dev", "test"):
        idx = split_indices("arc_challenge", rows, 20, 0, split)
        assert len(idx) == 20
        assert all(split_of(question_key("arc_challenge", rows[i], i)) == split for i in idx)
        assert split_indices("arc_challenge", rows, 20, 0, split) == idx
    assert split_indices("arc_challenge", rows, 20, 0, "all") == subsample(len(rows), 20, 0)
    pool, scored = scored_keys("arc_challenge", None, 0, "test")
    assert set(scored) == set(pool) and len(pool) < len(rows)


@needs_data
def test_gsm8k_training_questions_never_come_from_the_test_split():
    from safeneurons.config import load_config
    from safeneurons.pipelines.train import TrainRunConfig, general_prompts

    def cfg(split):
        return load_config(TrainRunConfig, None, ["attack.judge=refusal", 
            "pairs.general_dataset=gsm8k", "pairs.n_general=300", "attack.capability.tasks=[gsm8k]",
            "attack.capability.n_per_task={gsm8k: 50}", f"attack.data.split={split}"])

    dev, test = general_prompts(cfg("dev")), general_prompts(cfg("test"))
    assert dev.texts() == test.texts()  # the split scored does not change what is trained
    assert all(split_of(f"gsm8k:{p.id.rsplit('-', 1)[1]}") == "dev" for p in dev)
    assert any(split_of(f"gsm8k:{p.id.rsplit('-', 1)[1]}") == "test" for p in general_prompts(cfg("all")))
    with pytest.raises(ConfigError, match="data.split = 'test' is not read here.*--split"):
        load_config(TrainRunConfig, None, ["attack.judge=refusal", "data.split=test"])


# the ledger ------------------------------------------------------------------------------------------------
def _ref(name="strongreject", h="sha256:abc"):
    return ledger.EvalSetRef(name, "test", h, 10, 4, "sha256:def")


def test_ledger_lines_and_counts(tmp_path, monkeypatch):
    path = tmp_path / "l.jsonl"
    monkeypatch.setenv(ledger.LEDGER_ENV, str(path))
    assert ledger.ledger_path() == path and ledger.ledger_counts() == {}
    look = ledger.open_look(tmp_path / "run", {"a": 1}, "sha256:m", [_ref(), _ref("xstest", "sha256:x")],
                            command="safeneurons attack --split test")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["event"] == "opened" and lines[0]["command"].endswith("--split test")
    assert lines[0]["date"].endswith("+00:00") and lines[0]["config_hash"] == ledger.config_hash({"a": 1})
    assert lines[0]["prompt_sets"][0] == _ref().to_dict() and lines[0]["model_checksum"] == "sha256:m"
    look.close(asr={"ORI": {"k": 1, "n": 4}})
    ledger.open_look(tmp_path / "run2", {"a": 2}, "sha256:m", [_ref()])
    recs = ledger.read_ledger()
    assert [r["event"] for r in recs] == ["opened", "result", "opened"] and recs[1]["id"] == recs[0]["id"]
    assert recs[1]["result"] == {"asr": {"ORI": {"k": 1, "n": 4}}}
    assert ledger.ledger_counts() == {"sha256:abc": 2, "sha256:x": 1}
    summary = {r["name"]: r for r in ledger.ledger_summary()}
    assert summary["strongreject"]["looks"] == 2 and summary["strongreject"]["finished"] == 1
    with open(path, "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(DataError, match=r"l\.jsonl line 4: invalid JSON"):
        ledger.read_ledger()


def test_unwritable_ledger_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(ledger.LEDGER_ENV, str(tmp_path / "file" / "ledger.jsonl"))
    with pytest.raises(ConfigError, match=r"cannot append to the test ledger .*ledger\.jsonl.*LEDGER"):
        ledger.check_writable()
    with pytest.raises(ConfigError, match="nothing was scored on the test split"):
        ledger.open_look(tmp_path, {}, "m", [_ref()])


def test_the_default_ledger_is_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(ledger.LEDGER_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert ledger.ledger_path() == tmp_path / "test-ledger.jsonl"


def test_lower_layers_do_not_import_the_ledger():
    src = ROOT / "src" / "safeneurons"
    for f in src.rglob("*.py"):
        if f.parts[-2] in ("pipelines", "cli"):
            continue
        assert "pipelines.ledger" not in f.read_text(), f


# the CLI: only --split selects test -------------------------------------------------------------------------
@pytest.mark.parametrize("cmd, key", [(["attack"], "data.split"), (["demo"], "data.split"),
                                      (["train", "safeneuron"], "attack.data.split"),
                                      (["multilingual"], "split")])
def test_set_cannot_select_the_test_split(cmd, key, tmp_path, monkeypatch):
    from safeneurons.cli.main import app
    from safeneurons.pipelines import attack, multilingual, train

    ran = []
    for module, name in ((attack, "run_attack"), (train, "run_train"), (multilingual, "run_multilingual")):
        monkeypatch.setattr(module, name, lambda *a, **k: ran.append(a) or tmp_path)
    res = CliRunner().invoke(app, [*cmd, "--set", f"{key}=test", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "--split test" in res.output and key in res.output, res.output
    assert not ran


def test_a_config_file_cannot_select_the_test_split_but_the_flag_can(tmp_path, monkeypatch):
    from safeneurons.cli.main import app
    from safeneurons.pipelines import attack

    seen = []
    monkeypatch.setattr(attack, "run_attack", lambda cfg, out, progress=True: seen.append(cfg) or tmp_path)
    y = tmp_path / "recipe.yaml"
    y.write_text("data:\n  split: test\n  n_eval: 3\n")
    res = CliRunner().invoke(app, ["attack", "--config", str(y), "--no-report"])
    assert res.exit_code == 2 and "recipe.yaml" in res.output and "--split test" in res.output, res.output
    assert not seen
    res = CliRunner().invoke(app, ["attack", "--config", str(y), "--split", "test", "--no-report"])
    assert res.exit_code == 0, res.output
    assert seen[0].data.split == "test" and seen[0].data.n_eval == 3
    res = CliRunner().invoke(app, ["attack", "--split", "all", "--no-report"])
    assert res.exit_code == 0 and seen[1].data.split == "all"
    res = CliRunner().invoke(app, ["attack", "--no-report"])
    assert res.exit_code == 0 and seen[2].data.split == "dev"


def test_ledger_command_lists_looks(tmp_path, monkeypatch):
    from safeneurons.cli.main import app

    monkeypatch.setenv(ledger.LEDGER_ENV, str(tmp_path / "l.jsonl"))
    ledger.open_look(tmp_path, {}, "m", [_ref()]).close(asr={})
    res = CliRunner().invoke(app, ["ledger"])
    assert res.exit_code == 0 and "strongreject" in res.output and "sha256:abc" in res.output, res.output
    res = CliRunner().invoke(app, ["ledger", "--lines"])
    assert [json.loads(x)["event"] for x in res.output.splitlines()] == ["opened", "result"]


# tiny pipelines: the opened line comes before any generation on test prompts --------------------------------
def tiny_lm():
    from safeneurons.models.loading import LoadedModel
    from tiny import make_tiny_model, tiny_tokenizer

    return LoadedModel(make_tiny_model("qwen2"), tiny_tokenizer(), "tiny", "tiny-qwen2", None, "sha256:tiny",
                       "float32", "local")


ATTACK = ["data.n_identify=6", "data.n_eval=4", "generation.max_new_tokens=3",
          "identify.params={tau_es: 0.5, tau_sas: 1.0}", "capability.n=2", "capability.perplexity_texts=0",
          "random_seeds=[0]", "conditions=[ORI, FULL]", "capability.conditions=[ORI]", "data.split=test"]


@needs_data
def test_attack_on_test_fails_before_generation_when_the_ledger_cannot_be_written(tmp_path, monkeypatch):
    from safeneurons.config import load_config
    from safeneurons.pipelines import attack

    (tmp_path / "file").write_text("")
    monkeypatch.setenv(ledger.LEDGER_ENV, str(tmp_path / "file" / "ledger.jsonl"))
    cfg = load_config(attack.AttackConfig, None, ATTACK)
    with pytest.raises(ConfigError, match="cannot append to the test ledger"):
        attack.run_attack(cfg, tmp_path / "run", progress=False, lm=tiny_lm())
    assert not (tmp_path / "run").exists()
    # the ledger breaks after the start-up check: the opened line still comes before the first generation
    monkeypatch.setattr(attack, "check_writable", lambda: None)
    with pytest.raises(ConfigError, match="cannot append to the test ledger"):
        attack.run_attack(cfg, tmp_path / "run", progress=False, lm=tiny_lm())
    assert not (tmp_path / "run" / "generations.sqlite").exists()
    assert not (tmp_path / "run" / "completions").exists()


@needs_data
def test_attack_on_test_writes_opened_before_generating_and_result_after(tmp_path, monkeypatch):
    from safeneurons.config import load_config
    from safeneurons.evaluate import generate as generate_mod
    from safeneurons.pipelines import attack

    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(ledger.LEDGER_ENV, str(path))
    real, events = generate_mod.generate, []

    def checked(*args, **kwargs):
        events.append([json.loads(x)["event"] for x in path.read_text().splitlines()])
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_mod, "generate", checked)
    cfg = load_config(attack.AttackConfig, None, ATTACK)
    out = attack.run_attack(cfg, tmp_path / "run", progress=False, lm=tiny_lm())
    assert events and all(e == ["opened"] for e in events)  # every generation ran after the opened line
    opened, result = [json.loads(x) for x in path.read_text().splitlines()]
    assert (opened["event"], result["event"]) == ("opened", "result") and opened["id"] == result["id"]
    assert opened["run_dir"] == str(out.resolve()) and opened["model_checksum"] == "sha256:tiny"
    names = [s["name"] for s in opened["prompt_sets"]]
    assert names == ["strongreject", "capability:arc_challenge"]
    assert set(result["result"]["asr"]) == {"ORI", "FULL"} and result["result"]["asr"]["ORI"]["n"] == 4
    assert "arc_challenge" in result["result"]["capability"]["ORI"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["data"]["split"] == "test"
    assert list(manifest["data"]["eval_sets"].values()) == opened["prompt_sets"]
    scored = json.loads((out / "completions" / "ORI.json").read_text())
    assert len(scored) == 4 and all(split_of(r["prompt"]) == "test" for r in scored)
    assert ledger.ledger_counts(path) == {s["hash"]: 1 for s in opened["prompt_sets"]}
    # a dev run of the same recipe leaves no line
    dev = load_config(attack.AttackConfig, None, [*ATTACK[:-1], "data.split=dev"])
    attack.run_attack(dev, tmp_path / "dev", progress=False, lm=tiny_lm())
    assert len(path.read_text().splitlines()) == 2


@needs_data
def test_multilingual_on_test_is_ledgered_before_the_held_out_rows(tmp_path, monkeypatch):
    from safeneurons.config import load_config
    from safeneurons.evaluate import generate as generate_mod
    from safeneurons.pipelines.multilingual import MultilingualConfig, run_multilingual

    path = tmp_path / "ledger.jsonl"
    monkeypatch.setenv(ledger.LEDGER_ENV, str(path))
    real, seen = generate_mod.generate, []

    def checked(model, tok, prompts, *args, **kwargs):
        seen.append((set(prompts), path.read_text()))
        return real(model, tok, prompts, *args, **kwargs)

    monkeypatch.setattr(generate_mod, "generate", checked)
    cfg = load_config(MultilingualConfig, None, ["judge=refusal", 
        "languages=[en,zh]", "n_identify=3", "n_eval=2", "n_norm=3", "generation.max_new_tokens=3",
        "importance.n_probes=2", "p=0.25", "conditions=[ORI, SUPPRESS_SS]", "expansion.enabled=false",
        "split=test"])
    out = run_multilingual(cfg, tmp_path / "ml", progress=False, lm=tiny_lm())
    verdicts = json.loads((out / "multilingual" / "verdicts.json").read_text())
    held = {r["prompt"] for r in verdicts}
    assert held and all(split_of(r["id"]) == "test" for r in verdicts)
    assert all('"event": "opened"' in ledger_text for prompts, ledger_text in seen if prompts & held)
    opened, result = [json.loads(x) for x in path.read_text().splitlines()]
    assert opened["prompt_sets"][0]["name"] == "multijail" and opened["prompt_sets"][0]["n"] == 2
    asr = result["result"]["asr"]
    assert set(asr) == {"ORI", "SUPPRESS_SS"} and set(asr["ORI"]) == {"en", "zh"}


def test_a_run_started_before_the_split_resumes_only_with_split_all(tmp_path):
    from safeneurons.pipelines.attack import AttackConfig
    from safeneurons.pipelines.common import DataConfig, check_resumed_split
    from safeneurons.pipelines.rundir import RunDir

    old = RunDir(tmp_path / "old", "attack", AttackConfig())
    del old.manifest["config"]["data"]["split"]  # as written before evaluation splits existed
    old.save()
    with pytest.raises(ConfigError, match=r"before evaluation splits.*--split all \(data\.split\)"):
        check_resumed_split(tmp_path / "old", "data.split", "dev")
    with pytest.raises(ConfigError, match="different configuration"):
        RunDir(tmp_path / "old", "attack", AttackConfig())
    check_resumed_split(tmp_path / "old", "data.split", "all")
    RunDir(tmp_path / "old", "attack", AttackConfig(data=DataConfig(split="all")))  # resumes
    check_resumed_split(tmp_path / "new", "data.split", "dev")  # a fresh directory: nothing to check
    RunDir(tmp_path / "dev", "attack", AttackConfig())
    check_resumed_split(tmp_path / "dev", "data.split", "dev")  # written with the split: fine


@needs_data
def test_a_test_run_takes_xstest_benign_training_prompts_from_dev_without_the_dev_sample():
    """The expansion recipe (150 XSTest benign training prompts, 100 scored for over-refusal) runs on the test
    split: its benign prompts are dev prompts, disjoint from the test half it scores; a dev run, which must skip
    its own over-refusal sample, has too few dev prompts left and says so."""
    from safeneurons.config import load_config
    from safeneurons.pipelines.common import over_refusal_prompts
    from safeneurons.pipelines.multilingual import MultilingualConfig, _benign_prompts

    recipe = ROOT / "docs/results/multilingual-0.5b-align-floor96-m2/config.yaml"
    test = load_config(MultilingualConfig, recipe, ["split=test"])
    benign = _benign_prompts(test)
    assert len(benign) == test.expansion.benign_n == 150
    _, scored = over_refusal_prompts(test.expansion.over_refusal_n, test.data_dir, test.seed, "test")
    assert not set(benign) & set(scored.texts())
    assert all(split_of(t) == "dev" for t in benign)
    with pytest.raises(ConfigError, match="benign_n = 150"):
        _benign_prompts(load_config(MultilingualConfig, recipe, ["split=dev"]))
