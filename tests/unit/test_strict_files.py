"""Property: a CSV or JSON-lines prompt file either loads every row or fails naming a row (no silent loss)."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeneurons.data import load_prompt_file
from safeneurons.errors import DataError

# prompt texts: printable, with the characters that break naive CSV handling; no leading/trailing blanks
_chars = st.sampled_from(list("abcxyz ,;'\"\\é中") + ["\t"])
texts = st.text(_chars, min_size=1, max_size=30).map(str.strip).filter(bool)
ROW_ERROR = re.compile(r"(row|line) \d+")


def _csv_text(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["prompt", "category"])
    w.writerows(rows)
    return buf.getvalue()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(texts, texts), min_size=1, max_size=8))
def test_a_well_formed_csv_loads_every_row_exactly(tmp_path, rows):
    path = tmp_path / "p.csv"
    path.write_text(_csv_text(rows), encoding="utf-8")
    ps = load_prompt_file(path)
    assert [(p.text, p.category) for p in ps] == rows


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(texts, texts), min_size=2, max_size=8), where=st.integers(min_value=0),
       junk=st.sampled_from(['"', '"', ",", '""', '\n"']))
def test_a_damaged_csv_loads_every_row_or_names_one(tmp_path, rows, where, junk):
    text = _csv_text(rows)
    header_end = text.index("\n") + 1
    pos = header_end + where % (len(text) - header_end)
    damaged = text[:pos] + junk + text[pos:]
    path = tmp_path / "p.csv"
    path.write_text(damaged, encoding="utf-8")
    data_lines = [ln for ln in damaged[header_end:].split("\n") if ln.strip()]
    try:
        ps = load_prompt_file(path)
    except DataError as exc:
        assert str(path) in str(exc) and ROW_ERROR.search(str(exc)), str(exc)
        return
    # loaded: then one prompt per record, and no record was lost by merging physical lines
    assert len(ps) == len(data_lines) or any("\n" in p.text or "\n" in p.category for p in ps)
    assert len(ps) >= len(rows) - (junk == '\n"')  # never fewer than the rows written, bar a split line


def test_the_stray_quote_of_the_report_fails_naming_the_row(tmp_path):
    # issue 39: one stray quote merged two rows and a third vanished (3 prompts from 4 rows), exit 0
    path = tmp_path / "p.csv"
    path.write_text('prompt,category\nHow do I a,x\n"How do I b,y\nHow do I c,z\nHow do I d,w\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.csv row 3 \(line 3\)"):
        load_prompt_file(path)


def test_a_ragged_row_is_named(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,category\nHow do I a,x\nHow do I b,y,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 3 \(line 3\): 3 fields where the header has 2"):
        load_prompt_file(path)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(texts, min_size=1, max_size=8), where=st.integers(min_value=0),
       junk=st.sampled_from(["{", "}", '"', ",", "x"]))
def test_a_jsonl_file_loads_every_row_or_names_a_line(tmp_path, rows, where, junk):
    text = "".join(json.dumps({"prompt": t}) + "\n" for t in rows)
    pos = where % len(text)
    damaged = text[:pos] + junk + text[pos:]
    path = tmp_path / "p.jsonl"
    path.write_text(damaged, encoding="utf-8")
    try:
        ps = load_prompt_file(path)
    except DataError as exc:
        assert str(path) in str(exc) and ROW_ERROR.search(str(exc)), str(exc)
        return
    assert len(ps) == len(rows)
