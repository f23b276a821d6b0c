"""Bad input, one case per line, through the real CLI as a subprocess: each must exit 2 with one line naming
the problem, print no traceback, and leave nothing that blocks the corrected rerun (no run folder when the
config or the model folder is wrong: they are checked before the folder is created).

The cases follow the kinds of issue 39's list (silent wrong values, late failures, unreadable files, bad
--out paths) and add others of the same kinds: method settings, judge options, training and multilingual
ranges, prompt files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[2] / "configs/train-0.5b-rounds.yaml"
MODEL = "qwen2.5-coder-0.5b-instruct"  # never loaded: every case fails before the model is read


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    code = "from safeneurons.cli.main import main; main()"
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=env, **kw)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "INFO" not in ln and "WARNING" not in ln]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# (command, --set settings, text the one-line error must hold)
CASES = [
    # method settings: typed per method, checked when the config loads
    ("attack", ["identify.params.tau_ess=1"], "unknown key 'identify.params.tau_ess' (did you mean 'identify.params.tau_es'?)"),
    ("attack", ["identify.params.tau_es=high"], "identify.params.tau_es: expected a number, got 'high'"),
    ("attack", ["identify.params.statistic=z"], "identify.statistic must be 'd' or 't'"),
    ("attack", ["identify.method=meandif"], "Did you mean 'meandiff'?"),
    ("attack", ["identify.method=meandiff", "identify.params.k=0"], "identify.params.k = 0"),
    ("attack", ["identify.params=5"], "identify.params"),
    # judges and their options
    ("attack", ["judge=refusal", "judge_params.head_sentence=2"], "did you mean 'head_sentences'"),
    ("attack", ["judge_params.phrases=x"], "judge 'guard' has no option 'phrases'"),
    # non-finite and out-of-range numbers
    ("attack", ["identify.params.tau_sas=.nan"], "identify.params.tau_sas = nan: numbers must be finite"),
    ("attack", ["data.n_identify=-3"], "data.n_identify = -3"),
    ("attack", ["generation.max_new_tokens=abc"], "generation.max_new_tokens: expected a number"),
    ("train", ["dpo.beta=.nan"], "dpo.beta = nan: numbers must be finite"),
    ("train", ["dpo.beta=-1"], "beta = -1.0; expected a positive number"),
    ("train", ["dpo.learning_rate=-1"], "learning_rate = -1.0; expected a positive number"),
    ("train", ["dpo.sft_weight=-0.5"], "sft_weight = -0.5; expected >= 0"),
    ("train", ["dpo.lerning_rate=1e-5"], "unknown key 'dpo.lerning_rate' (did you mean 'dpo.learning_rate'?)"),
    ("train", ["dpo.trainer_overrides={warmup_step: 3}"], "did you mean warmup_steps"),
    ("train", ["pairs.safety_fraction=1.5"], "train.pairs.safety_fraction = 1.5; expected a share in [0, 1]"),
    ("train", ["pairs.n_general=-1"], "train.pairs.n_general = -1"),
    ("train", ["rounds=0"], "train.rounds must be >= 1"),
    ("train", ["sft.max_length=2"], "max_length = 2; expected >= 8 tokens"),
    ("multilingual", ["p=0"], "multilingual.p = 0.0"),
    ("multilingual", ["p=1.5"], "multilingual.p = 1.5"),
    ("multilingual", ["alpha=-2"], "multilingual.alpha = -2.0"),
    ("multilingual", ["alpha=.inf"], "alpha = inf: numbers must be finite"),
    ("multilingual", ["expansion.align.floor_margn=1"], "did you mean 'expansion.align.floor_margin'?"),
    ("multilingual", ["expansion.objective=align", "expansion.align.anchor_weight=-1"], "anchor_weight = -1.0"),
    ("multilingual", ["languages=[en, xx]"], "xx"),
    # variants removed from the library: the key, the record and the last commit that had them
    ("multilingual", ["expansion.objective=dpo"], "expansion.objective = 'dpo' was removed"),
    ("multilingual", ["expansion.dpo.beta=0.2"], "'expansion.dpo' was removed (settings of the removed objective: dpo). "
                                                 "Its results stay in docs/results.md §5"),
    ("train", ["pairs.experimental.degrade=bogus"], "train.pairs.experimental.degrade 'bogus'; choose from other_prompt"),
    # the model: checked before the run folder exists
    ("attack", ["model.spec=./no/such/model/dir"], "no such directory"),
]


def _command(name: str) -> list[str]:
    return ["train", "safeneuron", "--config", str(RECIPE)] if name == "train" else [name]


@pytest.mark.parametrize("command, settings, needle", CASES, ids=[f"{c}:{' '.join(s)}" for c, s, _ in CASES])
def test_bad_settings_fail_in_one_line_before_the_run_folder(tmp_path, command, settings, needle):
    out = tmp_path / "run"
    sets = [arg for s in settings for arg in ("--set", s)]
    model = [] if any(s.startswith("model.spec=") for s in settings) else ["--set", f"model.spec={MODEL}"]
    proc = _cli(*_command(command), *model, *sets, "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert needle in _one_line_error(proc)
    assert not out.exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, text, needle", [
    ("stray_quote.csv", 'prompt\nfirst\n"second\nthird\nfourth\n', "stray_quote.csv"),
    ("ragged.csv", "prompt,category\na,b\nc,d,e\n", "ragged.csv"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "bad.jsonl"),
    ("latin1.csv", None, "latin1.csv"),
])
def test_a_broken_prompt_file_fails_naming_it_before_the_run_folder(tmp_path, name, text, needle):
    path = tmp_path / name
    if text is None:
        path.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    else:
        _write(path, text)
    out = tmp_path / "run"
    proc = _cli("attack", "--set", f"model.spec={MODEL}", "--set", f"data.harmful={path}", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert needle in _one_line_error(proc)
    assert not out.exists()


@pytest.mark.parametrize("text, needle", [
    ("model: [1, 2\n", "invalid YAML"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("modle:\n  spec: x\n", "unknown key 'modle' (did you mean 'model'?)"),
])
def test_a_broken_config_file_is_one_line(tmp_path, text, needle):
    cfg = _write(tmp_path / "run.yaml", text)
    proc = _cli("attack", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    line = _one_line_error(proc)
    assert needle in line and str(cfg) in line
    assert not (tmp_path / "run").exists()


def test_a_missing_config_file_and_a_set_without_value_are_one_line(tmp_path):
    proc = _cli("attack", "--config", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "missing.yaml does not exist" in _one_line_error(proc)
    proc = _cli("attack", "--set", "judge")
    assert proc.returncode == 2 and "expected KEY=VALUE" in _one_line_error(proc)


def _model_dir(tmp_path: Path) -> Path:
    """A real tiny model folder (random weights) so a run gets past loading to its run folder."""
    from tiny import make_tiny_model, tiny_tokenizer

    path = tmp_path / "tiny"
    make_tiny_model("qwen2").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_out_path_that_cannot_be_a_folder_is_one_line(tmp_path, where):
    blocker = _write(tmp_path / "blocker", "x")
    out = blocker if where == "a file" else blocker / "run"
    proc = _cli("stats", "--model", str(_model_dir(tmp_path)), "--set", "data.n_identify=2", "--out", str(out))
    assert proc.returncode == 2
    assert str(blocker) in _one_line_error(proc)
    assert blocker.read_text() == "x"  # nothing overwritten


def _unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot create entries in: a 0555 folder for an ordinary user; for root (who
    ignores permission bits; the interpreter may live under /root, out of reach of an unprivileged uid) a
    place the kernel refuses, such as sysfs. None when there is none."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return locked
    for candidate in (Path("/sys"), Path("/sys/kernel")):
        try:
            (candidate / "safeneurons-probe").mkdir()
        except OSError:
            return candidate
        (candidate / "safeneurons-probe").rmdir()
    return None


def test_an_unwritable_out_folder_is_one_line(tmp_path):
    locked = _unwritable_folder(tmp_path)
    if locked is None:
        pytest.skip("no folder this user cannot write to")
    out = locked / "safeneurons-run"
    proc = _cli("stats", "--model", str(_model_dir(tmp_path)), "--set", "data.n_identify=2", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert str(out) in _one_line_error(proc)
    assert not out.exists()


def test_a_truncated_manifest_is_named_on_resume(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    _write(out / "manifest.json", '{"command": "identify", "config": {')
    proc = _cli("stats", "--model", str(_model_dir(tmp_path)), "--set", "data.n_identify=2", "--out", str(out))
    assert proc.returncode == 2
    assert str(out / "manifest.json") in _one_line_error(proc)
