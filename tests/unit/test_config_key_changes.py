"""Config keys taken out of the library (issue 37 item 4): the variants that lost and no recipe uses are removed
and fail at load naming the key, the record and the commit; the ones kept to reproduce recorded runs moved under
one ``experimental`` section and are still read at their old place, with a warning; every standing recipe and
every published run's config still loads, resumes and keeps its expansion cache key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from safeneurons.config import load_config, migrate_keys, to_dict
from safeneurons.errors import ConfigError
from safeneurons.pipelines.multilingual import ExpansionConfig, MultilingualConfig
from safeneurons.pipelines.train import TrainRunConfig

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "results"


def _published(name: str) -> Path:
    return PUBLISHED / name / "config.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# removed: expansion.objective dpo and its settings section

def test_a_removed_value_fails_naming_the_key_the_record_and_the_commit(tmp_path):
    path = _write(tmp_path, "expansion:\n  objective: dpo\n")
    with pytest.raises(ConfigError) as err:
        load_config(MultilingualConfig, path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: expansion.objective = 'dpo' was removed")
    assert "docs/results.md §5" in msg and "commit 1843d6d" in msg
    with pytest.raises(ConfigError, match=r"--set expansion.objective: expansion.objective = 'dpo' was removed"):
        load_config(MultilingualConfig, None, ["expansion.objective=dpo"])
    with pytest.raises(ConfigError, match=r"multilingual.expansion: objective = 'dpo' was removed"):
        ExpansionConfig(objective="dpo")  # built in Python: the same words
    assert load_config(MultilingualConfig, None, ["expansion.objective=align"]).expansion.objective == "align"


def test_a_removed_section_fails_unless_it_sets_nothing(tmp_path):
    path = _write(tmp_path, "expansion:\n  dpo: {beta: 0.2}\n")
    with pytest.raises(ConfigError, match=r"run.yaml: 'expansion.dpo' was removed .*docs/results.md §5.*1843d6d"):
        load_config(MultilingualConfig, path)
    with pytest.raises(ConfigError, match=r"--set expansion.dpo.beta: 'expansion.dpo' was removed"):
        load_config(MultilingualConfig, None, ["expansion.dpo.beta=0.2"])
    # the empty section every published multilingual config carries, and a stored one of defaults, set nothing
    empty = load_config(MultilingualConfig, _write(tmp_path, "expansion:\n  dpo: {}\n"))
    assert "dpo" not in to_dict(empty)["expansion"] and empty == load_config(MultilingualConfig, None, ["expansion.dpo={}"])
    from safeneurons.train.dpo_config import SafeNeuronDPOConfig

    assert "dpo" not in migrate_keys(ExpansionConfig, {"dpo": to_dict(SafeNeuronDPOConfig())}, warn=False)


# moved: pairs.degrade, pairs.drop_unfinished, expansion.scales under experimental

def test_a_moved_key_is_read_at_its_old_place_with_a_warning(tmp_path, caplog):
    path = _write(tmp_path, "pairs:\n  degrade: anchor\n  drop_unfinished: false\ndpo:\n  sft_weight: 1.0\n")
    with caplog.at_level(logging.WARNING, logger="safeneurons.config"):
        cfg = load_config(TrainRunConfig, path)
    assert (cfg.pairs.experimental.degrade, cfg.pairs.experimental.drop_unfinished) == ("anchor", False)
    assert f"{path}: 'pairs.degrade' moved to 'pairs.experimental.degrade'" in caplog.text
    assert "'pairs.drop_unfinished' moved to 'pairs.experimental.drop_unfinished'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="safeneurons.config"):
        cfg = load_config(MultilingualConfig, None, ["expansion.scales=[0.5]"])
    assert cfg.expansion.experimental.scales == (0.5,)
    assert "--set expansion.scales: 'expansion.scales' moved to 'expansion.experimental.scales'" in caplog.text
    # a mapping given for the section is migrated inside; the new place reads the same without a warning
    assert load_config(TrainRunConfig, None, ["pairs={degrade: truncate}"]).pairs.experimental.degrade == "truncate"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="safeneurons.config"):
        same = load_config(MultilingualConfig, None, ["expansion.experimental.scales=[0.5]"])
    assert same == cfg and not caplog.text
    # the old place wins over nothing: given at both places in one file, it is refused
    both = _write(tmp_path, "expansion:\n  scales: [0.5]\n  experimental: {scales: [0.25]}\n")
    with pytest.raises(ConfigError, match=r"'expansion.scales' moved to 'expansion.experimental.scales' and both"):
        load_config(MultilingualConfig, both)
    # a --set at the old place overrides the file's new place, as any later setting does
    newer = _write(tmp_path, "expansion:\n  experimental: {scales: [0.25]}\n")
    assert load_config(MultilingualConfig, newer, ["expansion.scales=[0.5]"]).expansion.experimental.scales == (0.5,)


def test_experimental_settings_are_checked_where_they_now_live():
    with pytest.raises(ConfigError, match=r"pairs\.experimental\.degrade 'bogus'"):
        load_config(TrainRunConfig, None, ["pairs.degrade=bogus"])
    with pytest.raises(ConfigError, match=r"experimental\.scales = \[1\.0\]"):
        load_config(MultilingualConfig, None, ["expansion.scales=[1]"])


# every standing recipe: configs/, the package's, every published run's

def _command_class(path: Path) -> type:
    from safeneurons.cli.reference import config_class

    return config_class(json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))["command"])


PUBLISHED_CONFIGS = sorted(PUBLISHED.glob("*/config.yaml"))


@pytest.mark.parametrize("path", PUBLISHED_CONFIGS, ids=lambda p: p.parent.name)
def test_every_published_run_config_loads_and_its_stored_config_resumes(path, tmp_path):
    """A published run's config.yaml loads, and its manifest's stored config (the form written when it ran)
    migrates to the same configuration, so resuming or ``--reuse`` of such a run sees no difference."""
    from safeneurons.pipelines.rundir import EARLIER_VALUES, RunDir, _defaults, _same_config

    cls = _command_class(path)
    manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))

    def lacks(config: dict, dotted: str) -> bool:
        *parents, last = dotted.split(".")
        for part in parents:
            config = config.get(part) or {}
        return last not in config

    # runs published before evaluation splits scored every prompt: they resume with --split all
    earlier = {k: v for k, v in EARLIER_VALUES.get(manifest["command"], {}).items() if lacks(manifest["config"], k)}
    cfg = load_config(cls, path, explicit=earlier)
    stored = migrate_keys(cls, manifest["config"], str(path), warn=False)
    assert _same_config(stored, to_dict(cfg), _defaults(cfg), EARLIER_VALUES.get(manifest["command"]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert RunDir(tmp_path / "run", manifest["command"], cfg).manifest["resumed"] == manifest.get("resumed", 0) + 1


def test_published_recipes_keep_their_variants_and_expansion_keys():
    """The published settings land at their new places, and the expansion cache key of each recipe (it hashes
    the objective's settings) is the one the code before the change computed for the same target and data."""
    from safeneurons.neurons import ModelShape, NeuronSet
    from safeneurons.pipelines.multilingual import _expansion_key

    response = load_config(MultilingualConfig, _published("multilingual-0.5b-response"))
    assert response.expansion.experimental.scales == (0.25, 0.5) and response.expansion.objective == "sft"
    fresh = load_config(MultilingualConfig, _published("multilingual-0.5b-align-floor96-m2-fresh"))
    assert fresh.expansion.experimental.scales == () and fresh.expansion.objective == "align"
    trained = load_config(TrainRunConfig, _published("train-0.5b-ep1-mix30-r2"))
    assert (trained.pairs.experimental.degrade, trained.pairs.experimental.drop_unfinished) == ("other_prompt", True)
    shape = ModelShape(n_layers=2, site_sizes={"q": 4, "o": 4}, params_per_neuron={"q": 8, "o": 8}, total_params=100)
    target = NeuronSet.from_triples(shape, [(0, "q", 1), (1, "o", 2)], name="t")
    keys = {name: _expansion_key("sha256:abc", target, [("prompt", "refusal")],
                                 load_config(MultilingualConfig, path).expansion)
            for name, path in (("response", _published("multilingual-0.5b-response")),
                               ("floor96", _published("multilingual-0.5b-align-floor96-m2")),
                               ("fresh", _published("multilingual-0.5b-align-floor96-m2-fresh")),
                               ("0.5b", ROOT / "configs" / "multilingual-0.5b.yaml"))}
    # computed with the code of commit 1843d6d (before objective: dpo and expansion.dpo were removed)
    assert keys == {"response": "sha256:abc:expansion:9e8e33fe3fca5452",
                    "floor96": "sha256:abc:expansion:54991d69531a7f00",
                    "fresh": "sha256:abc:expansion:54991d69531a7f00",
                    "0.5b": "sha256:abc:expansion:be2344f257a9fbf0"}


def test_a_stored_config_with_a_removed_variant_cannot_be_resumed(tmp_path):
    from safeneurons.pipelines.rundir import RunDir

    cfg = load_config(MultilingualConfig, None, ["judge=refusal"])
    stored = {**to_dict(cfg), "expansion": {**to_dict(cfg)["expansion"], "objective": "dpo"}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"command": "multilingual", "config": stored,
                                                                 "stages": {}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"manifest.json: expansion.objective = 'dpo' was removed"):
        RunDir(tmp_path / "run", "multilingual", cfg)
