"""Last-prompt-token features kept in a run folder, so a resumed run recomputes nothing it has.

Features (:func:`safeneurons.evaluate.features.prompt_features`: a neuron set's activations and the residual
stream after every layer) are written in shards of at most ``shard_size`` prompts, each a safetensors file
(``neurons`` ``[k, n_neurons]`` and ``residual`` ``[k, layers, hidden]``, float32; metadata: the feature key
and the prompts' text hashes) under ``<feature_cache>/<key>/`` (:func:`safeneurons.runformat.me_feature_shard`).
The key is the sha256 of everything that changes a feature: the model's weights checksum (with its spec and
name when the checksum is unknown), the chat template, the zeroed neurons' fingerprint, the neurons read, whether
the residual stream is kept, and the prompt rendering. A prompt is looked up by the hash of its text within
its key's folder, so a larger or smaller prompt list reuses every prompt already there and computes only the
rest, one forward pass per prompt; an interrupted pass loses at most one shard. No pickle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from safeneurons import runformat as rf
from safeneurons.io import atomic_path, read_safetensors, sha256_text
from safeneurons.neurons import NeuronSet

log = logging.getLogger("safeneurons.monitor")

SHARD_SIZE = 128


@dataclass(frozen=True)
class Features:
    """Rows in the order of the texts asked for: ``neurons`` ``[n, k]``, ``residual`` ``[n, layers, hidden]``
    (None without the residual stream); ``computed``: how many prompts needed a forward pass."""

    neurons: np.ndarray
    residual: np.ndarray | None
    computed: int


def text_hash(text: str) -> str:
    return sha256_text(text)[:24]


def feature_key(lm: Any, columns: NeuronSet, zeroed: NeuronSet | None, residual: bool, rendering: dict[str, Any]) -> str:
    """The cache key of features of model ``lm`` with ``zeroed`` neurons zeroed (see the module text)."""
    from safeneurons.evaluate.monitor import neuron_fingerprint
    from safeneurons.intervene.hooks import fingerprint

    checksum = str(getattr(lm, "checksum", "") or "")
    model = checksum if checksum not in ("", "unknown") else f"unknown:{lm.spec}:{lm.name}"
    template = str(getattr(lm.tokenizer, "chat_template", None) or "")
    blob = json.dumps({"v": 1, "model": model, "template": sha256_text(template),
                       "zeroed": fingerprint(zeroed) if zeroed is not None else "none",
                       "columns": neuron_fingerprint(columns) if columns else "none", "residual": residual,
                       "rendering": rendering}, sort_keys=True, default=str)
    return sha256_text(blob)[:32]


def _shards(folder: Path) -> dict[str, tuple[Path, int]]:
    """``{text hash: (shard, row)}`` over every readable shard in ``folder`` (an unreadable one is skipped and
    its prompts computed again)."""
    found: dict[str, tuple[Path, int]] = {}
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            _, meta = read_safetensors(path)
            hashes = json.loads(meta.get("prompts", "[]"))
        except Exception as exc:  # noqa: BLE001 - a cut shard: recompute its prompts
            log.warning("feature cache: %s is unreadable (%s); its prompts are computed again", path.name, exc)
            continue
        for row, h in enumerate(hashes):
            found.setdefault(str(h), (path, row))
    return found


def cached_features(run: Any, lm: Any, texts: Sequence[str], columns: NeuronSet, *, zeroed: NeuronSet | None,
                    residual: bool, chat_template: bool, system_prompt: str | None, max_length: int,
                    batch_size: int, shard_size: int = SHARD_SIZE) -> Features:
    """The features of every text (in order) for model ``lm`` with ``zeroed`` neurons zeroed: read from the
    run's feature cache where there, computed and written shard by shard where not."""
    import torch
    from safetensors.torch import save_file

    from safeneurons.evaluate.features import prompt_features
    from safeneurons.intervene.hooks import ablate

    rendering = {"chat_template": chat_template, "system_prompt": system_prompt, "max_length": max_length}
    key = feature_key(lm, columns, zeroed, residual, rendering)
    folder = run.file(rf.me_feature_shard(key, "x")).parent
    have = _shards(folder)
    unique = list(dict.fromkeys(texts))
    missing = [t for t in unique if text_hash(t) not in have]
    for start in range(0, len(missing), shard_size):
        chunk = missing[start : start + shard_size]
        with ablate(lm.model, zeroed) if zeroed is not None else nullcontext():  # registered first: read zeroed
            f = prompt_features(lm.model, lm.tokenizer, chunk, columns if columns else None, residual=residual,
                                chat_template=chat_template, system_prompt=system_prompt, max_length=max_length,
                                batch_size=batch_size)
        hashes = [text_hash(t) for t in chunk]
        tensors = {"neurons": torch.from_numpy(f.neurons.astype(np.float32))}
        if f.residual is not None:
            tensors["residual"] = torch.from_numpy(np.ascontiguousarray(f.residual, dtype=np.float32))
        path = run.file(rf.me_feature_shard(key, sha256_text("".join(hashes))[:16]))
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": key, "prompts": json.dumps(hashes)})
        have.update({h: (path, row) for row, h in enumerate(hashes)})
    return _gather(unique, texts, have, residual, len(missing))


def _gather(unique: list[str], texts: Sequence[str], have: dict[str, tuple[Path, int]], residual: bool,
            computed: int) -> Features:
    loaded: dict[Path, dict[str, Any]] = {}
    rows_n, rows_r = {}, {}
    for t in unique:
        path, row = have[text_hash(t)]
        if path not in loaded:
            loaded[path] = read_safetensors(path)[0]
        rows_n[t] = loaded[path]["neurons"][row].numpy()
        if residual:
            rows_r[t] = loaded[path]["residual"][row].numpy()
    neurons = np.stack([rows_n[t] for t in texts]).astype(np.float64) if texts else np.zeros((0, 0))
    res = np.stack([rows_r[t] for t in texts]) if residual and texts else None
    return Features(neurons, res, computed)


__all__ = ["Features", "cached_features", "feature_key", "text_hash"]
