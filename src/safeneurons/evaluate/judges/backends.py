"""Chat backends for model judges: anything with ``complete(messages, max_new_tokens) -> list[str]``.

- :class:`HFChatBackend`: a local Hugging Face causal LM, greedy decoding, the tokenizer's chat template,
  left padding, fixed-size batches.
- :class:`OpenAIChatBackend`: any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (OpenAI,
  vLLM, llama.cpp server, TGI, Ollama), with ``urllib`` only and temperature 0."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from safeneurons.errors import JudgeError

Message = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": str}``."""


@runtime_checkable
class ChatBackend(Protocol):
    """One chat completion per conversation, in order."""

    def complete(self, messages: Sequence[Sequence[Message]], max_new_tokens: int) -> list[str]: ...


def merge_system_into_user(conversation: Sequence[Message]) -> list[Message]:
    """Fold system messages into the first user message (for chat templates without a system role,
    e.g. Gemma 2, whose template raises on ``role == "system"``)."""
    system = "\n\n".join(m["content"] for m in conversation if m["role"] == "system")
    rest = [dict(m) for m in conversation if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
    elif system:
        rest.insert(0, {"role": "user", "content": system})
    return rest


class HFChatBackend:
    """Greedy generation with a local ``transformers`` model.

    Prompts are rendered with ``tokenizer.apply_chat_template(..., add_generation_prompt=True)`` and tokenised
    without extra special tokens (the template already has them), padded on the left so that every row's new
    tokens start at the same column. Special tokens are dropped from the decoded text."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise JudgeError(f"HFChatBackend: batch_size must be at least 1, got {batch_size}.")
        if getattr(tokenizer, "chat_template", None) is None:
            raise JudgeError(
                f"HFChatBackend: tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                "use the chat/instruct variant of the model or set tokenizer.chat_template."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, model_id: str, *, batch_size: int = 8, device: str | None = None, dtype: str = "auto"
    ) -> HFChatBackend:
        """Load a chat model by hub id or local directory."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(model_id)
            model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise JudgeError(
                f"cannot load judge model {model_id!r}: {exc}. Pass a local directory, or a hub id with network "
                "access (and `huggingface-cli login` for gated models)."
            ) from exc
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        return cls(model, tok, batch_size=batch_size)

    def render(self, conversation: Sequence[Message]) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                list(conversation), tokenize=False, add_generation_prompt=True
            )
        except Exception:
            if not any(m["role"] == "system" for m in conversation):
                raise
            return self.tokenizer.apply_chat_template(
                merge_system_into_user(conversation), tokenize=False, add_generation_prompt=True
            )

    def complete(self, messages: Sequence[Sequence[Message]], max_new_tokens: int) -> list[str]:
        import torch

        texts = [self.render(conv) for conv in messages]
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad_id is None:
            raise JudgeError(
                "HFChatBackend: the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token."
            )
        device = next(self.model.parameters()).device
        out: list[str] = []
        old_side = tok.padding_side
        old_pad = tok.pad_token
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            for start in range(0, len(texts), self.batch_size):
                chunk = texts[start : start + self.batch_size]
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
                with torch.inference_mode():
                    gen = self.model.generate(
                        **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
                    )
                new = gen[:, enc["input_ids"].shape[1] :]
                out.extend(tok.batch_decode(new, skip_special_tokens=True))
        finally:
            tok.padding_side = old_side
            if old_pad is None:
                tok.pad_token = None
        return out


class OpenAIChatBackend:
    """``POST {base_url}/chat/completions`` with ``{"model", "messages", "max_tokens", "temperature": 0}``.

    The API key is read from the environment variable ``api_key_env`` at call time and sent as
    ``Authorization: Bearer …``; when the variable is unset no header is sent (local servers need none).
    HTTP errors raise :class:`JudgeError` with the status and the start of the body; 429 and 5xx are retried
    ``max_retries`` times with exponential backoff. ``concurrency`` requests run in parallel threads."""

    RETRY_STATUS = frozenset({429, 500, 502, 503, 504})

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        *,
        temperature: float = 0.0,
        max_retries: int = 2,
        backoff_s: float = 1.0,
        concurrency: int = 1,
    ) -> None:
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise JudgeError(
                f"OpenAIChatBackend: base_url must start with http:// or https://, got {base_url!r}."
            )
        if not model:
            raise JudgeError("OpenAIChatBackend: model name is empty; pass the served model's name.")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout
        self.temperature = temperature
        self.max_retries = max(0, max_retries)
        self.backoff_s = backoff_s
        self.concurrency = max(1, concurrency)

    def complete(self, messages: Sequence[Sequence[Message]], max_new_tokens: int) -> list[str]:
        if self.concurrency == 1 or len(messages) < 2:
            return [self._one(conv, max_new_tokens) for conv in messages]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda c: self._one(c, max_new_tokens), messages))

    def _one(self, conversation: Sequence[Message], max_new_tokens: int) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": [dict(m) for m in conversation],
                "max_tokens": max_new_tokens,
                "temperature": self.temperature,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read().decode("utf-8", errors="replace")
                break
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", errors="replace") if exc.fp else ""
                if exc.code in self.RETRY_STATUS and attempt < self.max_retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                raise JudgeError(
                    f"judge endpoint {self.url} returned HTTP {exc.code} for model {self.model!r}: "
                    f"{_excerpt(text)}. Check the base URL, model name and ${self.api_key_env}."
                ) from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt < self.max_retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                reason = getattr(exc, "reason", exc)
                raise JudgeError(
                    f"cannot reach judge endpoint {self.url}: {reason}. Is the server running and the URL right?"
                ) from exc
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            raise JudgeError(
                f"judge endpoint {self.url} answered without choices[0].message.content: {_excerpt(raw)}"
            ) from exc
        return "" if content is None else str(content)


def _excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")
