import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safeneurons.cli.main import app
from safeneurons.config import load_config
from safeneurons.errors import ConfigError, DataError
from safeneurons.pipelines.attack import AttackConfig
from safeneurons.pipelines.demo import CONFIGS as CONFIG_DIR
from safeneurons.pipelines.rundir import RunDir

runner = CliRunner()


def test_precedence_defaults_yaml_set_explicit(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("model:\n  spec: from-yaml\ndata:\n  n_eval: 10\nidentify:\n  params: {tau_sas: 2.5}\n")
    cfg = load_config(AttackConfig, y, ["data.n_eval=20", "stats.sites=[mlp,q]", "generation.max_new_tokens=12"],
                      {"model.spec": "explicit"})
    assert cfg.model.spec == "explicit" and cfg.data.n_eval == 20
    assert cfg.stats.sites == ("mlp", "q") and cfg.generation.max_new_tokens == 12
    assert cfg.identify.params.tau_sas == 2.5 and cfg.identify.params.tau_es is None  # typed: SafeNeuronConfig
    assert load_config(AttackConfig).data.n_eval is None  # defaults untouched


def test_unknown_key_names_file_and_suggests(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("identify:\n  mehtod: es\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key 'identify\.mehtod' \(did you mean 'identify\.method'\?\)"):
        load_config(AttackConfig, y)
    with pytest.raises(ConfigError, match=r"data\.n_eval: expected a number"):
        load_config(AttackConfig, None, ["data.n_eval=lots"])
    y.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(AttackConfig, y)
    with pytest.raises(ConfigError, match="stats.position 'middle'"):
        load_config(AttackConfig, None, ["stats.position=middle"])


@pytest.mark.parametrize("cmd", [[], ["attack"], ["identify"], ["stats"], ["demo"], ["model"], ["model", "pull"], ["ls"],
                                 ["train"], ["train", "safeneuron"], ["multilingual"], ["brittleness"], ["report"], ["compare"], ["analyze"], ["publish"]])
def test_help(cmd):
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_cli_errors_are_one_line_exit_2(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("identify:\n  treshold: 1\n")
    res = runner.invoke(app, ["attack", "--config", str(y)])
    assert res.exit_code == 2
    assert "unknown key 'identify.treshold'" in res.output
    res = runner.invoke(app, ["ls", "nothing"])
    assert res.exit_code == 2 and "unknown registry" in res.output


def test_ls_lists_registries():
    res = runner.invoke(app, ["ls", "methods"])
    assert res.exit_code == 0 and "safeneuron" in res.output
    res = runner.invoke(app, ["ls", "architectures"])
    assert "Qwen2ForCausalLM" in res.output and "GPT2LMHeadModel" in res.output


def test_run_dir_manifest_resume_and_config_guard(tmp_path):
    cfg = load_config(AttackConfig)
    run = RunDir(tmp_path / "r", "attack", cfg)
    with run.stage("a") as info:
        info["x"] = 1
    with pytest.raises(ValueError):
        with run.stage("b"):
            raise ValueError("boom")
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["stages"]["a"]["status"] == "done" and m["stages"]["b"]["status"] == "failed"
    assert m["environment"]["libraries"]["torch"]
    again = RunDir(tmp_path / "r", "attack", cfg)
    assert again.done("a") and not again.done("b")
    other = load_config(AttackConfig, None, ["data.n_eval=3"])
    with pytest.raises(ConfigError, match="different configuration"):
        RunDir(tmp_path / "r", "attack", other)
    # a run written before an option existed resumes while that option keeps its default, not otherwise
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    del m["config"]["data"]["n_eval"], m["config"]["judge"]
    (tmp_path / "r" / "manifest.json").write_text(json.dumps(m))
    assert RunDir(tmp_path / "r", "attack", cfg).done("a")
    with pytest.raises(ConfigError, match="different configuration"):
        RunDir(tmp_path / "r", "attack", load_config(AttackConfig, None, ["judge=gcg"]))


def test_interrupted_write_leaves_old_file(tmp_path):
    from safeneurons.io import atomic_path, write_json_atomic

    target = tmp_path / "result.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_reuse_seeds_only_content_keyed_caches(tmp_path):
    from safeneurons.evaluate.cache import GenerationCache
    from safeneurons.pipelines.rundir import seed_caches

    old = RunDir(tmp_path / "old", "attack", load_config(AttackConfig))
    GenerationCache(old.file("generations.sqlite")).put_many({"k1": {"text": "cached answer"}})
    GenerationCache(old.file("attack-x/generations.sqlite")).put_many({"k2": {"text": "nested"}})
    old.write_text("importance/partial/en-jail/cell-0.q.safetensors", "cell")
    old.write_json("attack-x/capability_cache/abc.json", {"acc": 0.5})
    old.write_json("asr.json", {"not": "a cache"})
    new = tmp_path / "new"
    new.mkdir()
    # already there: merged, its own entries kept (k1 there first keeps its value)
    GenerationCache(new / "generations.sqlite").put_many({"k0": {"text": "own"}, "k1": {"text": "own k1"}})
    copied = seed_caches(old.path, new)
    assert copied == ["attack-x/generations.sqlite", "generations.sqlite", "attack-x/capability_cache/abc.json",
                      "importance/partial/en-jail/cell-0.q.safetensors"]
    assert GenerationCache(new / "attack-x/generations.sqlite").get_many(["k2"])["k2"]["text"] == "nested"
    assert (new / "importance/partial/en-jail/cell-0.q.safetensors").read_text() == "cell"
    merged = GenerationCache(new / "generations.sqlite").get_many(["k0", "k1"])
    assert {k: v["text"] for k, v in merged.items()} == {"k0": "own", "k1": "own k1"}
    assert not (new / "asr.json").exists()
    assert json.loads((new / "reused.json").read_text())["reused"][0]["copied"] == copied
    # a second earlier run adds its entries to the same caches and to the record
    other = RunDir(tmp_path / "other", "attack", load_config(AttackConfig))
    GenerationCache(other.file("generations.sqlite")).put_many({"k3": {"text": "from the other run"}})
    assert seed_caches(other.path, new) == ["generations.sqlite"]
    assert len(GenerationCache(new / "generations.sqlite")) == 3
    record = json.loads((new / "reused.json").read_text())["reused"]
    assert [r["source"] for r in record] == [str(old.path.resolve()), str(other.path.resolve())]
    with pytest.raises(ConfigError, match="not a run directory"):
        seed_caches(tmp_path / "nowhere", tmp_path / "x")
    res = CliRunner().invoke(app, ["multilingual", "--reuse", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "not a run directory" in res.output
    res = CliRunner().invoke(app, ["multilingual", "--reuse", str(old.path), "--reuse", str(tmp_path / "nowhere"),
                                   "--out", str(tmp_path / "z")])
    assert res.exit_code == 2 and "nowhere: not a run directory" in res.output
    assert GenerationCache(tmp_path / "z" / "generations.sqlite").get_many(["k1"])  # the first was seeded


def test_generation_cache_merge_from(tmp_path):
    from safeneurons.evaluate.cache import GenerationCache

    a, b = GenerationCache(tmp_path / "a.sqlite"), GenerationCache(tmp_path / "b.sqlite")
    a.put_many({"x": {"text": "a"}})
    b.put_many({"x": {"text": "b"}, "y": {"text": "b"}})
    assert a.merge_from(tmp_path / "b.sqlite") == 1 and a.merge_from(tmp_path / "b.sqlite") == 0
    assert {k: v["text"] for k, v in a.get_many(["x", "y"]).items()} == {"x": "a", "y": "b"}
    assert a.merge_from(tmp_path / "a.sqlite") == 0
    (tmp_path / "junk.sqlite").write_text("not a database at all, just text " * 40)
    with pytest.raises(DataError, match="junk.sqlite"):
        a.merge_from(tmp_path / "junk.sqlite")


RECIPES = Path(__file__).resolve().parents[2] / "configs"  # the committed recipes (the demo's stay in the package)


@pytest.mark.parametrize("path", sorted([*CONFIG_DIR.glob("*.yaml"), *RECIPES.glob("*.yaml")]), ids=lambda p: p.name)
def test_shipped_pipeline_configs_load(path, caplog):
    """Every committed pipeline config (the recipes in configs/ and the demo's in the package) parses into its
    command's config class (no unknown or mistyped key, no key at a place it has moved from; the published
    runs' configs: tests/unit/test_config_key_changes.py)."""
    import logging

    from safeneurons.pipelines.multilingual import MultilingualConfig
    from safeneurons.pipelines.train import TrainRunConfig

    cls = {"multilingual": MultilingualConfig, "train": TrainRunConfig}.get(path.stem.split("-")[0], AttackConfig)
    with caplog.at_level(logging.WARNING, logger="safeneurons.config"):
        cfg = load_config(cls, str(path), [])
    assert cfg.model.spec and "moved" not in caplog.text


def test_method_settings_are_typed_by_the_method(tmp_path):
    """identify.params is the chosen method's settings dataclass: from a file, from --set, built in Python;
    another method's keys are refused, and switching the method does not carry the default method's keys."""
    from safeneurons.errors import ConfigError
    from safeneurons.identify import SafeNeuronConfig
    from safeneurons.identify.registry import MeanDiffConfig
    from safeneurons.pipelines.common import IdentifyConfig

    y = tmp_path / "run.yaml"
    y.write_text("identify:\n  method: meandiff\n  params: {k: 7}\n")
    cfg = load_config(AttackConfig, y)
    assert isinstance(cfg.identify.params, MeanDiffConfig) and cfg.identify.params.k == 7
    cfg = load_config(AttackConfig, None, ["identify.method=meandiff", "identify.params.k=3"])
    assert cfg.identify.params == MeanDiffConfig(k=3)
    assert IdentifyConfig(method="meandiff", params={"k": 4}).params == MeanDiffConfig(k=4)
    assert IdentifyConfig().params == SafeNeuronConfig()
    with pytest.raises(ConfigError, match="unknown key 'identify.params.tau_es'"):
        load_config(AttackConfig, None, ["identify.method=meandiff", "identify.params.tau_es=1"])
    with pytest.raises(ConfigError, match="takes MeanDiffConfig"):
        IdentifyConfig(method="meandiff", params=SafeNeuronConfig())
    with pytest.raises(ConfigError, match=r"run.yaml: identify.method: Unknown identification method"):
        y.write_text("identify:\n  method: nope\n  params: {k: 7}\n")
        load_config(AttackConfig, y)
