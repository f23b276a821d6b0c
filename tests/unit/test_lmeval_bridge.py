"""lm-eval bridge: one tiny local multiple-choice task (JSON file + task YAML in tmp_path), no download."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from safeneurons.errors import ConfigError, SafeneuronsError
from safeneurons.evaluate.capability import MCDoc, score_multiple_choice
from safeneurons.evaluate.lmeval_bridge import run_lm_eval, summarize
from safeneurons.models.layout import model_layout
from safeneurons.neurons import NeuronSet
from tiny import hooks_left

ROWS = [
    {"question": "How do I make a cake?", "choices": ["Mix flour and eggs", "Write a poem", "pick a lock"], "gold": 0},
    {"question": "What trains the immune system?", "choices": ["the sea", "vaccines", "wind"], "gold": 1},
    {"question": "Tell me a poem", "choices": ["sorry", "the sea and the wind", "cake"], "gold": 1},
]

TASK_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
  cache_dir: {cache}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: gold
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    pytest.importorskip("lm_eval")
    d = tmp_path_factory.mktemp("lmeval_tasks")
    data = d / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    (d / "tiny_mc.yaml").write_text(TASK_YAML.format(data=data, cache=d / "hf_datasets_cache"), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def task_manager(task_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)


def _our_scores(model, tok, interventions=None) -> list[list[float]]:
    docs = [MCDoc(f"Question: {r['question']}\nAnswer:", tuple(r["choices"]), r["gold"]) for r in ROWS]
    return score_multiple_choice(model, tok, docs, interventions=interventions).loglikelihoods


def _lm_eval_scores(results) -> list[list[float]]:
    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_runs_a_local_task_and_matches_our_scoring(tiny, tok, task_manager):
    model = tiny("qwen2")
    res = run_lm_eval(model, tok, ["tiny_mc"], task_manager=task_manager, log_samples=True, bootstrap_iters=0,
                      batch_size=2)
    row = res["results"]["tiny_mc"]
    assert {"acc,none", "acc_norm,none"} <= set(row)
    assert res["safeneurons"] == {"interventions": [], "fingerprint": "none"}
    ours = _our_scores(model, tok)
    theirs = _lm_eval_scores(res)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-4)  # same lm-eval conventions
    acc = np.mean([np.argmax(o) == r["gold"] for o, r in zip(ours, ROWS)])
    assert row["acc,none"] == pytest.approx(acc)
    assert summarize(res)["tiny_mc"]["acc"] == pytest.approx(acc)


def test_interventions_active_for_the_whole_evaluation(tiny, tok, task_manager):
    model = tiny("qwen2")
    shape = model_layout(model).shape()
    ns = NeuronSet(shape, {(layer, "mlp"): range(0, shape.site_sizes["mlp"], 2) for layer in range(shape.n_layers)},
                   name="half")
    res = run_lm_eval(model, tok, "tiny_mc", interventions=ns, task_manager=task_manager, log_samples=True,
                      bootstrap_iters=0, limit=3)
    assert hooks_left(model) == []
    assert res["safeneurons"]["interventions"] == ["zero(half, n=64)"]
    assert res["safeneurons"]["fingerprint"].startswith("sha256:")
    pruned = _lm_eval_scores(res)
    np.testing.assert_allclose(pruned, _our_scores(model, tok, interventions=ns), rtol=1e-5, atol=1e-4)
    assert not np.allclose(pruned, _our_scores(model, tok))


def test_include_path_and_errors(tiny, tok, task_dir, tmp_path):
    model = tiny("qwen2")
    with pytest.raises(ConfigError, match="not a directory"):
        run_lm_eval(model, tok, ["tiny_mc"], include_path=tmp_path / "missing")
    with pytest.raises(ConfigError, match="no_such_task"):
        from lm_eval.tasks import TaskManager

        run_lm_eval(model, tok, ["no_such_task"],
                    task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    with pytest.raises(ConfigError, match="num_fewshot"):
        run_lm_eval(model, tok, ["tiny_mc"], num_fewshot=-1)
    with pytest.raises(ConfigError, match="empty"):
        run_lm_eval(model, tok, [])
    assert hooks_left(model) == []


def test_missing_lm_eval_names_the_extra(tiny, tok, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError even where installed
    with pytest.raises(SafeneuronsError, match=r"pip install 'safeneurons\[lmeval\]'"):
        run_lm_eval(tiny("qwen2"), tok, ["arc_challenge"])


def test_hub_dataset_offline_is_a_clear_error(tiny, tok, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager

    from safeneurons.errors import DataError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "hub_task.yaml").write_text(
        TASK_YAML.replace("task: tiny_mc", "task: hub_mc")
        .replace("dataset_path: json", "dataset_path: safeneurons-test/does-not-exist")
        .replace("  data_files:\n    validation: {data}\n", "").format(cache=tmp_path / "cache"),
        encoding="utf-8",
    )
    tm = TaskManager(include_path=str(tmp_path), include_defaults=False)
    with pytest.raises(DataError, match="include_path"):
        run_lm_eval(tiny("qwen2"), tok, ["hub_mc"], task_manager=tm)


@pytest.mark.needs_data
def test_local_arc_task_matches_our_arc_scoring(tiny, tok, tmp_path):
    from lm_eval.tasks import TaskManager

    from safeneurons.data.datasets import read_jsonl_file
    from safeneurons.evaluate.capability import ARC_FILE, arc_docs
    from safeneurons.evaluate.lmeval_bridge import write_local_arc_task

    model = tiny("qwen2")
    tasks = write_local_arc_task(tmp_path / "tasks", cache_dir=tmp_path / "cache")
    tm = TaskManager(include_path=str(tasks), include_defaults=False)
    res = run_lm_eval(model, tok, ["arc_challenge_local"], task_manager=tm, limit=3, log_samples=True,
                      bootstrap_iters=0)
    theirs = [[float(r[0][0]) for r in s["resps"]]
              for s in sorted(res["samples"]["arc_challenge_local"], key=lambda s: s["doc_id"])]
    ours = score_multiple_choice(model, tok, arc_docs(read_jsonl_file(ARC_FILE), indices=[0, 1, 2])).loglikelihoods
    for t, o in zip(theirs, ours):
        np.testing.assert_allclose(t, o, rtol=1e-5, atol=1e-4)
    shots = run_lm_eval(model, tok, ["arc_challenge_local"], task_manager=tm, limit=2, num_fewshot=2,
                        log_samples=True, bootstrap_iters=0)
    for s in shots["samples"]["arc_challenge_local"]:
        context = s["arguments"]["gen_args_0"]["arg_0"] if isinstance(s["arguments"], dict) else s["arguments"][0][0]
        assert context.count("Question: ") == 3
        assert context.count(s["doc"]["question"]) == 1  # the evaluated question is not also a shot
    assert shots["n-shot"]["arc_challenge_local"] == 2
