"""Prompts to scored batches: encoding (with the prompt-set hash that keys resumable results), padded
length-sorted batches with the weights of the scored positions and the mask of the ablated ones, and the
progress bar the estimators share."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safeneurons.errors import DataError
from safeneurons.identify.importance.config import ImportanceConfig
from safeneurons.stats.encode import Encoded, encode, length_sorted_batches, pad_batch


@dataclass
class _Batch:
    idx: list[int]  # global prompt indices
    ids: torch.Tensor  # [B, T] right-padded
    mask: torch.Tensor  # [B, T]
    score_w: torch.Tensor  # [B, T] weights of the scored positions (rows sum to 1)
    ablate_m: torch.Tensor  # [B, T] bool: positions where the neuron is zeroed
    lengths: list[int]


def _texts_and_responses(prompts: Any, responses: Sequence[str | None] | None) -> tuple[list[str], list | None]:
    from safeneurons.data.prompts import PromptSet

    if isinstance(prompts, PromptSet):
        texts = prompts.texts()
        resp = list(responses) if responses is not None else prompts.responses()
    elif isinstance(prompts, str):
        raise DataError("prompts must be a list of strings or a PromptSet, not one string.")
    else:
        texts = [str(p) for p in prompts]
        resp = list(responses) if responses is not None else None
    if not texts:
        raise DataError("no prompts given; deactivation importance is a mean over prompts.")
    if resp is not None and len(resp) != len(texts):
        raise DataError(f"{len(resp)} responses for {len(texts)} prompts; give one response per prompt.")
    if resp is not None and all(r is None for r in resp):
        resp = None
    return texts, resp


def _encode(tokenizer: Any, prompts: Any, responses: Sequence[str | None] | None,
            cfg: ImportanceConfig) -> tuple[list[Encoded], str]:
    texts, resp = _texts_and_responses(prompts, responses)
    needs_resp = cfg.reads_responses
    if needs_resp and (resp is None or any(not r for r in resp)):
        missing = "all" if resp is None else str([i for i, r in enumerate(resp) if not r][:5])
        raise DataError(f"importance.position={cfg.position!r} / ablate_positions={cfg.ablate_positions!r} need a "
                        f"response for every prompt (missing: {missing}); give (prompt, response) pairs or use "
                        "position='last'.")
    encoded = encode(tokenizer, texts, resp if needs_resp else None, cfg.chat_template, cfg.system_prompt,
                     cfg.max_length)
    if needs_resp:
        short = [i for i, e in enumerate(encoded) if len(e.ids) <= e.prompt_len]
        if short:
            raise DataError(f"prompts {short[:5]} have no response tokens left after truncation to "
                            f"max_length={cfg.max_length}; raise importance.max_length.")
    h = hashlib.sha256()
    for e in encoded:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
        h.update(f"|{e.prompt_len};".encode())
    return encoded, "sha256:" + h.hexdigest()


def _make_batches(encoded: list[Encoded], cfg: ImportanceConfig, pad: int, device: torch.device) -> list[_Batch]:
    out = []
    for idx in length_sorted_batches(encoded, cfg.batch_size):
        batch = [encoded[i] for i in idx]
        ids, mask = pad_batch(batch, pad, "right")
        width = ids.shape[1]
        w = torch.zeros((len(batch), width), dtype=torch.float64)
        ab = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, e in enumerate(batch):
            n, p = len(e.ids), e.prompt_len
            if cfg.position == "last":
                w[r, p - 1] = 1.0
            else:
                w[r, p:n] = 1.0 / (n - p)
            if cfg.ablate_positions == "all":
                ab[r, :n] = True
            elif cfg.ablate_positions == "last":
                ab[r, p - 1] = True
            else:
                ab[r, p:n] = True
        out.append(_Batch(list(idx), ids.to(device), mask.to(device), w.to(device), ab.to(device),
                          [len(e.ids) for e in batch]))
    return out


class _Progress:
    """A tqdm bar when ``enabled`` (neurons for the ablation estimators, batches for the others), else nothing."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "neuron") -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
