import json

import pytest

from safeneurons.data import load_prompt_file, load_prompts, normalise, overlap, remove_overlap, split
from safeneurons.data.paths import find_data_dir
from safeneurons.data.prompts import Prompt, PromptSet
from safeneurons.errors import ConfigError, DataError

needs_data = pytest.mark.needs_data


def test_csv_jsonl_txt(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,category\nHow to x?,c1\nHow to y?,c2\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"instruction": "Do z", "category": "c"}) + "\n\n")
    (tmp_path / "c.txt").write_text("one\n\ntwo\n")
    a = load_prompt_file(tmp_path / "a.csv")
    assert a.texts() == ["How to x?", "How to y?"] and a.prompts[1].category == "c2"
    assert load_prompt_file(tmp_path / "b.jsonl").texts() == ["Do z"]
    assert load_prompt_file(tmp_path / "c.txt").texts() == ["one", "two"]
    assert a.sha256.startswith("sha256:")


def test_bad_files_name_file_and_row(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("prompt\nok\n\"\"\nfine\n")
    with pytest.raises(DataError, match=r"p\.csv row 3: column 'prompt' is empty"):
        load_prompt_file(p)
    q = tmp_path / "q.jsonl"
    q.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"q\.jsonl line 2: invalid JSON"):
        load_prompt_file(q)
    r = tmp_path / "r.csv"
    r.write_text("text_x\nhello\n")
    with pytest.raises(DataError, match=r"r\.csv row 2: no 'prompt'"):
        load_prompt_file(r)
    e = tmp_path / "e.txt"
    e.write_text("\n\n")
    with pytest.raises(DataError, match="no prompts found"):
        load_prompt_file(e)
    with pytest.raises(DataError, match="does not exist"):
        load_prompt_file(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="unsupported prompt file type"):
        (tmp_path / "x.xml").write_text("<a/>")
        load_prompt_file(tmp_path / "x.xml")


def test_unknown_dataset_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'advbench'"):
        load_prompts("advbnch")


def test_split_is_deterministic_disjoint_and_dedups():
    prompts = [Prompt(f"Prompt number {i}") for i in range(200)] + [Prompt("prompt number 3  ")]
    ps = PromptSet("x", prompts)
    tr, ev = split(ps, 0.25, seed=1)
    tr2, ev2 = split(PromptSet("x", list(reversed(prompts))), 0.25, seed=1)
    norm = lambda ps: {normalise(t) for t in ps.texts()}  # noqa: E731
    assert norm(tr) == norm(tr2) and norm(ev) == norm(ev2)
    assert not overlap(tr, ev)
    assert len(tr) + len(ev) == 200  # the near-duplicate was removed
    assert 30 < len(ev) < 70
    assert normalise("  Hello   World!! ") == "hello world"


@needs_data
def test_named_datasets_and_overlap_removal():
    adv = load_prompts("advbench")
    sr = load_prompts("strongreject")
    assert len(adv) == 520 and len(sr) == 313
    kept, n = remove_overlap(sr, adv)
    assert n == 25 and len(kept) == 288  # the 25 verbatim AdvBench rows of StrongREJECT
    assert len(load_prompts("strongreject:no-advbench")) == 288
    mj = load_prompts("multijail", language="sw")
    assert len(mj) == 315 and mj.prompts[0].language == "sw"
    assert len(load_prompts("xstest")) == 250
    assert len(load_prompts("harmbench")) == 200
    assert load_prompts("advbench", limit=10, seed=3).texts() == load_prompts("advbench", limit=10, seed=3).texts()


@needs_data
def test_manifest_checksum_mismatch_is_reported(tmp_path):
    import shutil

    src = find_data_dir()
    dst = tmp_path / "datasets"
    shutil.copytree(src / "advbench", dst / "advbench")
    shutil.copy(src / "MANIFEST.json", dst / "MANIFEST.json")
    (dst / "advbench" / "advbench.csv").chmod(0o644)
    with open(dst / "advbench" / "advbench.csv", "a") as fh:
        fh.write("extra,[]\n")
    with pytest.raises(DataError, match="sha256 does not match MANIFEST"):
        load_prompts("advbench", data_dir=dst)
