"""Turning prompts (and optional responses) into token ids, with the chat template by default.

The prompt part ends where the assistant turn starts (the template's generation prompt), so
"last prompt token" is the last token before the model would start answering."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from safeneurons.errors import DataError

log = logging.getLogger("safeneurons.stats")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    prompt_len: int  # tokens belonging to the (templated) prompt; the rest is the response


def render_prompt(tokenizer: Any, prompt: str, chat_template: bool = True, system_prompt: str | None = None) -> str:
    """The text the model sees before answering: chat-templated with a generation prompt, or raw."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has no chat template; "
                "pass --no-chat-template (or chat_template: false) to use raw prompts."
            )
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return prompt


def encode(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str | None] | None = None,
           chat_template: bool = True, system_prompt: str | None = None, max_length: int = 1024) -> list[Encoded]:
    out = []
    for i, p in enumerate(prompts):
        text = render_prompt(tokenizer, p, chat_template, system_prompt)
        special = not chat_template
        pid = tokenizer(text, add_special_tokens=special)["input_ids"]
        resp = responses[i] if responses is not None else None
        rid = tokenizer(resp, add_special_tokens=False)["input_ids"] if resp else []
        if not pid:
            raise DataError(f"prompt {i} encodes to no tokens.")
        if len(pid) > max_length:
            # keep the end: the last prompt token must stay the one before the answer
            log.warning("prompt %d has %d tokens; keeping its last %d (max_length)", i, len(pid), max_length)
            pid = pid[-max_length:]
        ids = pid + rid[: max(0, max_length - len(pid))]
        out.append(Encoded(ids, len(pid)))
    return out


def pad_batch(batch: Sequence[Encoded], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` for a batch, padded on ``side``."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        n = len(e.ids)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[r, sl] = torch.tensor(e.ids, dtype=torch.long)
        mask[r, sl] = 1
    return ids, mask


def length_sorted_batches(items: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little padding."""
    order = sorted(range(len(items)), key=lambda i: -len(items[i].ids))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_token_id(tokenizer: Any) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pid is None:
        raise DataError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token.")
    return int(pid)
