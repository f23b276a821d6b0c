"""The CLI boundary: one clear line per failure (file and cause), the traceback only with --debug, a message
on Ctrl-C. Run as subprocesses of the real CLI where a real failure can be made."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer

from safeneurons.cli.common import failure_line, friendly_errors


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    code = "from safeneurons.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **env})


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "INFO" not in ln and "WARNING" not in ln]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.mark.parametrize("config, needle", [
    ('{"model_type": "qwen2", ', "config.json cannot be read as JSON"),
    ('{"model_type": "qwen9"}', "model_type 'qwen9' is not one this transformers knows"),
    ('[1, 2]', "holds a JSON list"),
])
def test_a_broken_model_folder_is_one_line(tmp_path, config, needle):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(config)
    proc = _cli("stats", "--model", str(model), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert needle in line and str(model) in line
    assert not (tmp_path / "run").exists()  # the model folder is checked before the run folder is made


def test_debug_shows_the_traceback(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{")
    proc = _cli("--debug", "stats", "--model", str(model), "--out", str(tmp_path / "run"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_an_out_path_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _cli("judge", "validate", "--judge", "refusal", "--labels", str(blocker / "labels"))
    assert proc.returncode == 2
    assert str(blocker / "labels") in _one_line_error(proc)


def test_failure_lines_name_file_and_cause():
    line, code = failure_line(PermissionError(13, "Permission denied", "/x/stats.safetensors"))
    assert code == 2 and line == "Permission denied: /x/stats.safetensors"
    try:
        json.loads('{"a": ')
    except json.JSONDecodeError as exc:
        line, code = failure_line(exc)
    assert code == 2 and "invalid JSON" in line and "line 1" in line
    line, code = failure_line(RuntimeError("boom"))
    assert code == 1 and line.startswith("RuntimeError: boom") and "--debug" in line


def test_ctrl_c_says_what_was_saved_and_how_to_resume(capsys):
    @friendly_errors
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stop:
        interrupted()
    assert stop.value.exit_code == 130
    said = capsys.readouterr().err
    assert "interrupted" in said and "resume" in said


@pytest.mark.parametrize("setting, needle", [
    ("judge=refusl", "judge = 'refusl' is not a judge; did you mean 'refusal'?"),
    ("identify.params.tau_sas=.nan", "identify.params.tau_sas = nan: numbers must be finite"),
    ("identify.params.tau_es=-.inf", "identify.params.tau_es = -inf: numbers must be finite"),
    ("data.n_identify=-3", "data.n_identify = -3: a count of prompts must be at least 1"),
    ("data.n_eval=0", "data.n_eval = 0: a count of prompts must be at least 1"),
])
def test_bad_settings_fail_before_any_work_and_leave_no_run_folder(tmp_path, setting, needle):
    out = tmp_path / "run"
    proc = _cli("attack", "--model", "qwen2.5-coder-0.5b-instruct", "--out", str(out), "--set", setting)
    assert proc.returncode == 2 and needle in _one_line_error(proc)
    assert not out.exists()  # nothing to block the corrected rerun


def test_a_misspelt_judge_fails_at_load_in_multilingual_and_train(tmp_path):
    for args in (["multilingual", "--set", "data_judge=gaurd"], ["train", "safeneuron", "--set", "pairs.judge=x"]):
        out = tmp_path / args[0]
        proc = _cli(*args, "--out", str(out))
        assert proc.returncode == 2 and "is not a judge" in _one_line_error(proc), args
        assert not out.exists()
