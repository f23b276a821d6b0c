"""What `safeneurons demo` (and `attack`, the same end) leaves on the terminal: a short attack-success table,
one line per capability measure and the report's path; no raw results file. Run as a subprocess of the real
CLI on a tiny random model with the shipped demo config (numbers are meaningless)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from safeneurons.report.terminal import HEADER, text_table
from tiny import make_tiny_model, tiny_tokenizer

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]
# a line of pretty-printed JSON: an object bracket, a list opening on its own or before an object, string or
# list, a list closing, or a "key": line (a log line's "[12/07/26 19:17:10]" timestamp is none of these)
_JSON_LINE = re.compile(r'^\s*(\{|\}|\[\s*($|[{"\[])|\]|"[^"]*"\s*:)')


def _demo(tmp_path: Path, *settings: str) -> subprocess.CompletedProcess:
    model = tmp_path / "tiny-model"
    make_tiny_model("qwen2").save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    sets = [f"model.spec={model}", "judge=refusal", "data.n_identify=6", "data.n_eval=4",
            "generation.max_new_tokens=3", "identify.params={tau_es: 0.5, tau_sas: 1.0}", *settings]
    args = ["demo", "--out", str(tmp_path / "run"), "--quiet"]
    for s in sets:
        args += ["--set", s]
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "safeneurons.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": path, "COLUMNS": "200"})


def test_demo_prints_a_short_table_and_the_report_path_and_no_raw_json(tmp_path):
    proc = _demo(tmp_path, "capability.tasks=[arc_challenge]", "capability.n=2", "capability.perplexity_texts=2",
                 "conditions=[ORI, FULL, RANDOM]", "random_seeds=[0, 1]")
    assert proc.returncode == 0, proc.stderr
    raw = [ln for ln in (proc.stdout + proc.stderr).splitlines() if _JSON_LINE.match(ln)]
    assert not raw, raw
    lines = proc.stdout.splitlines()
    assert lines[0].split() == " ".join(HEADER).split()
    assert [ln.split()[0] for ln in lines[1:5]] == ["ORI", "FULL", "RANDOM0", "RANDOM1"]
    assert re.search(r"\d+ / 4 +\d+\.\d \[\d+\.\d–\d+\.\d\]$", lines[1]), lines[1]
    assert any(ln.startswith("arc_challenge (") and "ORI" in ln and "RANDOM0" in ln for ln in lines)
    assert any(ln.startswith("perplexity on benign text: ORI ") for ln in lines)
    assert lines[-1].startswith("report: ") and Path(lines[-1][len("report: "):]).is_file()
    assert len(lines) <= 12, proc.stdout


def test_text_table_aligns_columns():
    table = text_table([("ORI", "0", "12 / 48"), ("RANDOM1", "2,145", "3 / 48")], ("condition", "n", "k / n"))
    assert table.splitlines() == ["condition      n    k / n",
                                  "ORI            0  12 / 48",
                                  "RANDOM1    2,145   3 / 48"]
