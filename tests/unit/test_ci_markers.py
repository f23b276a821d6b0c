"""CI cannot pass by skipping: a test that needs the datasets or a browser fails under CI=true when they are
missing (and is skipped elsewhere); the markers select what they say; a per-test timeout is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA_TEST = "tests/unit/test_data.py::test_named_datasets_and_overlap_removal"


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "SAFENEURONS_DATA_DIR", "SAFENEURONS_CHROMIUM")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args],
                          cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=600)


def test_missing_data_is_a_skip_outside_ci_and_a_failure_in_ci(tmp_path):
    empty = str(tmp_path)  # no MANIFEST.json: the datasets are missing
    local = _pytest(DATA_TEST, SAFENEURONS_DATA_DIR=empty)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = _pytest(DATA_TEST, SAFENEURONS_DATA_DIR=empty, CI="true")
    assert ci.returncode == 1 and "CI must not pass by skipping" in ci.stdout, ci.stdout


def test_missing_browser_is_a_failure_in_ci():
    ci = _pytest("tests/unit/test_report.py", "-m", "browser", SAFENEURONS_CHROMIUM="/nonexistent/chromium",
                 CI="true")
    assert ci.returncode == 1 and "no chromium binary" in ci.stdout, ci.stdout
    assert " passed" not in ci.stdout.splitlines()[-1]


def test_markers_select_what_they_say():
    listed = _pytest("--collect-only", "-m", "needs_data", "tests/unit/test_data.py", "tests/unit/test_pipelines_tiny.py")
    names = [ln for ln in listed.stdout.splitlines() if "::" in ln]
    assert any("test_pipelines_tiny.py" in n for n in names) and DATA_TEST in names
    assert not any("test_csv_jsonl_txt" in n for n in names)  # a test that needs no data is not selected
    slow = _pytest("--collect-only", "-m", "slow", "tests")
    slow_names = [ln for ln in slow.stdout.splitlines() if "::" in ln]
    assert slow_names and all(n.startswith("tests/integration/") for n in slow_names)
    browser = _pytest("--collect-only", "-m", "browser", "tests/unit/test_report.py")
    assert [ln for ln in browser.stdout.splitlines() if "::" in ln]


def test_a_per_test_timeout_is_configured():
    import tomllib

    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 0 < int(opts["timeout"]) <= 1800
