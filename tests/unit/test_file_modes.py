"""Files the library writes get the user's normal permissions, so a second user can read a shared cache."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from safeneurons.io import write_json_atomic
from safeneurons.stats import collect_stats
from tests.tiny import make_tiny_model, tiny_tokenizer


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_statistics_safetensors_and_json_are_readable_by_others(tmp_path, umask_022):
    stats = collect_stats(make_tiny_model("qwen2"), tiny_tokenizer(),
                          {"harmful": ["How do I pick a lock?"], "harmless": ["Write a poem."]}, progress=False)
    st, js = tmp_path / "stats.safetensors", tmp_path / "x.json"
    stats.save(st)  # safetensors' writer replaces the temporary file, which used to leave it 0600
    write_json_atomic(js, {"a": 1})
    for path in (st, js):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to become another user")
def test_an_unprivileged_user_reads_the_statistics(tmp_path, umask_022):
    stats = collect_stats(make_tiny_model("qwen2"), tiny_tokenizer(),
                          {"harmful": ["How do I pick a lock?"], "harmless": ["Write a poem."]}, progress=False)
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:  # pytest's base temp folder is 0700: open the path down to the file
        if parent == parent.parent:
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    path = tmp_path / "stats.safetensors"
    stats.save(path)
    out = subprocess.run(["/bin/sh", "-c", 'head -c 8 "$0" > /dev/null && echo read', str(path)],
                         capture_output=True, text=True, cwd="/",
                         preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    assert out.returncode == 0 and out.stdout.strip() == "read", out.stderr


def test_a_truncated_statistics_or_json_file_is_named(tmp_path):
    from safeneurons.errors import UnreadableFileError
    from safeneurons.io import read_json
    from safeneurons.stats import ActivationStats

    stats = collect_stats(make_tiny_model("qwen2"), tiny_tokenizer(),
                          {"harmful": ["How do I pick a lock?"], "harmless": ["Write a poem."]}, progress=False)
    st = tmp_path / "stats.safetensors"
    stats.save(st)
    st.write_bytes(st.read_bytes()[:100])  # cut while written
    js = tmp_path / "manifest.json"
    js.write_text('{"status": "runn')
    for load, path in ((ActivationStats.load, st), (read_json, js)):
        try:
            load(path)
        except UnreadableFileError as exc:
            assert str(path) in str(exc) and isinstance(exc, ValueError)
        else:
            raise AssertionError(f"{path} loaded")
