"""Batched generation from an in-memory Hugging Face model, optionally with neuron interventions active.

:func:`generate` renders each prompt (chat template with a generation prompt by default, see
:func:`safeneurons.stats.encode.render_prompt`), groups prompts into length-sorted batches, left-pads
them, and calls ``model.generate`` inside :func:`safeneurons.intervene.intervene` so the interventions
act on every decoding step. Only the new text is decoded (special tokens skipped), and results come
back in the original prompt order. With a :class:`~safeneurons.evaluate.cache.GenerationCache`, cached
prompts are not generated again and each finished batch is stored at once (an interrupted run keeps
what it finished).

Reproducibility: greedy decoding is deterministic. Sampling reseeds torch's RNG per batch from
``(config.seed, the batch's rendered prompts)`` inside ``torch.random.fork_rng`` (the caller's RNG state is
untouched), so re-running the same prompts with the same ``batch_size`` gives the same samples.

:func:`generate_vllm` is an optional fast path: interventions are baked into a pruned copy of the weights
(:func:`safeneurons.intervene.export_pruned`) and the copy is served by vLLM.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch

from safeneurons.errors import ConfigError, SafeneuronsError
from safeneurons.intervene.hooks import active_interventions, as_interventions, fingerprint, intervene
from safeneurons.stats.encode import Encoded, length_sorted_batches, pad_batch, pad_token_id, render_prompt

if TYPE_CHECKING:
    from safeneurons.evaluate.cache import GenerationCache
    from safeneurons.intervene.hooks import Intervention
    from safeneurons.neurons import NeuronSet

logger = logging.getLogger("safeneurons.evaluate")

FinishReason = Literal["eos", "stop", "length"]


@dataclass
class GenerationConfig:
    """Decoding settings for :func:`generate` (and the cache key: see :meth:`decoding_key`)."""

    max_new_tokens: int = field(default=64, metadata={"help": "Most tokens generated per prompt (>= 1)."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0; used when do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass in (0, 1] (used when do_sample)."})
    seed: int = field(default=0, metadata={"help": "Seed of the per-batch sampling RNG (>= 0)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per model.generate call (>= 1)."})
    chat_template: bool = field(
        default=True, metadata={"help": "Wrap each prompt in the tokenizer's chat template (False: raw text)."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message put before each prompt (chat template only)."}
    )
    stop: tuple[str, ...] = field(
        default=(), metadata={"help": "Strings that end a generation early; the text is cut before the first one."}
    )
    share_prefix: int | None = field(
        default=None, metadata={"help": "When all prompts start with the same tokens, at least this many (e.g. 64 "
                                        "for a few-shot prefix), run them once and decode every batch from copies of "
                                        "their key/value cache; null (default) runs every prompt in full. Same text "
                                        "up to float rounding."}
    )

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(
                f"GenerationConfig.{name} = {getattr(self, name)!r} is invalid: expected {expected}."
            )

        for name in ("max_new_tokens", "batch_size", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(name, "an integer")
        if self.max_new_tokens < 1:
            raise bad("max_new_tokens", "an integer >= 1")
        if self.batch_size < 1:
            raise bad("batch_size", "an integer >= 1")
        if self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if self.share_prefix is not None and (isinstance(self.share_prefix, bool)
                                              or not isinstance(self.share_prefix, int) or self.share_prefix < 1):
            raise bad("share_prefix", "an integer >= 1 or null")
        for name in ("do_sample", "chat_template"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, "a number")
        if not self.temperature > 0:
            raise bad("temperature", "a number > 0 (use do_sample=false for greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "a number in (0, 1]")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise bad("system_prompt", "a string or null")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        if not all(isinstance(s, str) and s for s in self.stop):
            raise bad("stop", "a list of non-empty strings")

    def decoding_key(self) -> dict[str, Any]:
        """The settings that change what is generated for an already rendered prompt (cache key part).

        Sampling-only settings are left out for greedy decoding; ``batch_size`` and ``share_prefix`` are left
        out (they change only floating-point noise for greedy decoding); chat template and system prompt are part of the
        rendered prompt text instead."""
        key: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                               "stop": list(self.stop)}
        if self.do_sample:
            key.update(temperature=float(self.temperature), top_p=float(self.top_p), seed=self.seed,
                       batch_size=self.batch_size)
        return key

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GenerationConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"GenerationConfig has no field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}.")
        d = dict(d)
        if "stop" in d and d["stop"] is not None:
            d["stop"] = tuple(d["stop"]) if not isinstance(d["stop"], str) else (d["stop"],)
        return cls(**d)


@dataclass(frozen=True)
class Generation:
    """One generated response with its metadata."""

    text: str
    n_new_tokens: int
    finish_reason: FinishReason  # "eos": end-of-turn token, "stop": a stop string, "length": token budget
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "n_new_tokens": self.n_new_tokens, "finish_reason": self.finish_reason}


# ----------------------------------------------------------------------------------------------
# helpers


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-turn ids: the model's generation config eos ids plus the tokenizer's eos id."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for v in ([gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])) + [tokenizer.eos_token_id]:
        if v is not None and int(v) not in ids:
            ids.append(int(v))
    return ids


def _model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _batch_seed(seed: int, texts: Sequence[str]) -> int:
    h = hashlib.sha256(str(seed).encode())
    for t in texts:
        h.update(b"\x00" + t.encode("utf-8"))
    return int.from_bytes(h.digest()[:8], "little") & ((1 << 63) - 1)


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _encode_rendered(tokenizer: Any, rendered: Sequence[str], chat_template: bool) -> list[Encoded]:
    # Same convention as safeneurons.stats.encode.encode: the chat template carries its own special
    # tokens (BOS included), raw prompts get the tokenizer's special tokens. Never truncated.
    out = []
    for i, text in enumerate(rendered):
        ids = tokenizer(text, add_special_tokens=not chat_template)["input_ids"]
        if not ids:
            raise ConfigError(f"prompt {i} encodes to no tokens; remove empty prompts.")
        out.append(Encoded(list(ids), len(ids)))
    return out


def _hf_generation_kwargs(model: Any, tokenizer: Any, config: GenerationConfig) -> dict[str, Any]:
    from transformers import GenerationConfig as HFGenerationConfig

    base = getattr(model, "generation_config", None)
    gc = HFGenerationConfig.from_dict(base.to_dict()) if base is not None else HFGenerationConfig()
    gc.max_new_tokens = config.max_new_tokens
    gc.max_length = None
    gc.min_new_tokens = None
    gc.min_length = 0
    gc.do_sample = config.do_sample
    gc.num_beams = 1
    gc.num_return_sequences = 1
    if config.do_sample:
        gc.temperature = float(config.temperature)
        gc.top_p = float(config.top_p)
        gc.top_k = None
    else:  # greedy: unset the sampling knobs some checkpoints ship, so transformers does not warn
        gc.temperature = None
        gc.top_p = None
        gc.top_k = None
    gc.pad_token_id = pad_token_id(tokenizer)
    gc.eos_token_id = _eos_ids(model, tokenizer)
    kwargs: dict[str, Any] = {"generation_config": gc}
    if config.stop:
        gc.stop_strings = list(config.stop)
        kwargs["tokenizer"] = tokenizer  # transformers needs it to match stop strings
    return kwargs


def prompt_list(prompts: Sequence[str]) -> list[str]:
    """``prompts`` as a list, each checked to be a string (one string alone is refused: wrap it in a list)."""
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, not one string; wrap it in a list.")
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ConfigError(f"prompt {i} is a {type(p).__name__}, expected a string.")
    return prompts


def _shared_head(encoded: Sequence[Encoded], minimum: int | None) -> int:
    """Length of the token prefix all prompts share, if at least ``minimum`` and there are two prompts or more
    (else 0). Each prompt keeps one token of its own, so every batch feeds ``generate`` at least one new token."""
    if minimum is None or len(encoded) < 2:
        return 0
    first = encoded[0].ids
    n = min(len(e.ids) for e in encoded) - 1
    for e in encoded[1:]:
        n = next((j for j in range(n) if e.ids[j] != first[j]), n)
    return n if n >= minimum else 0


def _run_batches(model: Any, tokenizer: Any, rendered: Sequence[str], config: GenerationConfig,
                 progress: bool, on_batch: Any = None, before_batch: Any = None,
                 stopping: Any = None) -> list[Generation]:
    """Generate for ``rendered`` (already templated) texts; returns results in input order.

    ``before_batch(indices)`` is called just before each batch's ``model.generate`` with the indices of its
    rows in order (after any shared-prefix pass), ``on_batch({index: Generation})`` after it; ``stopping``
    (a transformers ``StoppingCriteriaList``) is passed to every ``model.generate`` call."""
    from tqdm.auto import tqdm

    encoded = _encode_rendered(tokenizer, rendered, config.chat_template)
    pad_id = pad_token_id(tokenizer)
    eos = set(_eos_ids(model, tokenizer))
    kwargs = _hf_generation_kwargs(model, tokenizer, config)
    device = _model_device(model)
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    results: list[Generation | None] = [None] * len(rendered)
    head = _shared_head(encoded, config.share_prefix)
    head_ids = torch.tensor([encoded[0].ids[:head]], dtype=torch.long)  # (1, head): the shared prefix
    head_cache = None
    if head:
        with torch.inference_mode():
            head_cache = model(input_ids=head_ids.to(device), use_cache=True).past_key_values
        logger.debug("%d prompts share a %d-token prefix: run once", len(encoded), head)
    bar = tqdm(total=len(rendered), desc="generate", unit="prompt", file=sys.stderr, disable=not progress,
               leave=False)
    try:
        for batch in length_sorted_batches(encoded, config.batch_size):
            items = [encoded[i] for i in batch]
            longest = len(items[0].ids)
            if max_pos and longest + config.max_new_tokens > int(max_pos):
                logger.warning("prompt of %d tokens + %d new tokens exceeds the model's %d positions",
                               longest, config.max_new_tokens, max_pos)
            if head_cache is None:
                ids, mask = pad_batch(items, pad_id, side="left")
                extra = {}
            else:  # [shared head | pads | own tail]: the pads sit between, positions follow the mask
                tails, tail_mask = pad_batch([Encoded(e.ids[head:], len(e.ids) - head) for e in items], pad_id,
                                             side="left")
                ids = torch.cat([head_ids.expand(len(items), -1), tails], 1)
                mask = torch.cat([torch.ones((len(items), head), dtype=tail_mask.dtype), tail_mask], 1)
                cache = copy.deepcopy(head_cache)
                cache.batch_repeat_interleave(len(items))
                extra = {"past_key_values": cache}
            ids, mask = ids.to(device), mask.to(device)
            if stopping is not None:
                extra["stopping_criteria"] = stopping
            if before_batch is not None:
                before_batch(list(batch))
            with torch.inference_mode():
                if config.do_sample:
                    devices = [device] if device.type == "cuda" else []
                    with torch.random.fork_rng(devices=devices):
                        torch.manual_seed(_batch_seed(config.seed, [rendered[i] for i in batch]))
                        out = model.generate(input_ids=ids, attention_mask=mask, **extra, **kwargs)
                else:
                    out = model.generate(input_ids=ids, attention_mask=mask, **extra, **kwargs)
            new = out[:, ids.shape[1]:].cpu().tolist()
            done: dict[int, Generation] = {}
            for row, idx in enumerate(batch):
                toks = new[row]
                eos_at = next((j for j, t in enumerate(toks) if t in eos), None)
                if eos_at is not None:
                    toks, reason = toks[:eos_at], "eos"
                    n = eos_at + 1
                else:
                    if pad_id not in eos:  # finished rows (stop strings) are filled with pad
                        while toks and toks[-1] == pad_id:
                            toks = toks[:-1]
                    n, reason = len(toks), "length"
                text = tokenizer.decode(toks, skip_special_tokens=True)
                text, stopped = _cut_at_stop(text, config.stop)
                if stopped:
                    reason = "stop"
                g = Generation(text, n, reason)  # type: ignore[arg-type]
                results[idx] = g
                done[idx] = g
            if on_batch is not None:
                on_batch(done)
            bar.update(len(batch))
    finally:
        bar.close()
    return [r for r in results if r is not None]


# ----------------------------------------------------------------------------------------------
# public API


def generate_detailed(model: Any, tokenizer: Any, prompts: Sequence[str], config: GenerationConfig | None = None,
                      *, interventions: "Sequence[Intervention] | Intervention | NeuronSet | None" = None,
                      cache: "GenerationCache | None" = None, model_key: str = "",
                      progress: bool = True) -> list[Generation]:
    """Like :func:`generate` but returns :class:`Generation` records (text, new-token count, finish reason,
    whether it came from the cache)."""
    config = config or GenerationConfig()
    prompts = prompt_list(prompts)
    if not prompts:
        return []
    ivs = as_interventions(interventions) if interventions is not None else []
    fp = fingerprint(ivs) if ivs else "none"
    rendered = [render_prompt(tokenizer, p, config.chat_template, config.system_prompt) for p in prompts]

    keys: list[str] = []
    cached: dict[str, dict[str, Any]] = {}
    if cache is not None:
        from safeneurons.evaluate.cache import cache_key

        if not model_key:
            raise ConfigError(
                "generate(cache=...) needs model_key identifying the weights (e.g. LoadedModel.checksum); "
                "without it two models would share cached answers."
            )
        outside = active_interventions(model)
        if outside:
            raise ConfigError(
                f"generate(cache=...) was called while interventions {outside} are attached to the model from "
                "outside; pass them as interventions=... instead so they become part of the cache key."
            )
        decoding = config.decoding_key()
        keys = [cache_key(model_key, fp, r, decoding) for r in rendered]
        cached = cache.get_many(keys)

    # what still has to be generated (deduplicated by key when caching)
    todo: list[int] = []
    seen: dict[str, int] = {}
    for i in range(len(prompts)):
        if cache is not None:
            if keys[i] in cached or keys[i] in seen:
                continue
            seen[keys[i]] = i
        todo.append(i)

    fresh: dict[int, Generation] = {}
    if todo:
        def store(done: dict[int, Generation]) -> None:
            if cache is not None:
                cache.put_many({keys[todo[j]]: g.to_dict() for j, g in done.items()})

        t0 = time.perf_counter()
        sub = [rendered[i] for i in todo]
        if ivs:
            with intervene(model, ivs):
                gens = _run_batches(model, tokenizer, sub, config, progress, on_batch=store)
        else:
            gens = _run_batches(model, tokenizer, sub, config, progress, on_batch=store)
        fresh = {todo[j]: g for j, g in enumerate(gens)}
        logger.debug("generated %d responses in %.1fs", len(todo), time.perf_counter() - t0)

    out: list[Generation] = []
    for i in range(len(prompts)):
        if i in fresh:
            out.append(fresh[i])
        elif cache is not None and keys[i] in cached:
            rec = cached[keys[i]]
            out.append(Generation(str(rec["text"]), int(rec.get("n_new_tokens", -1)),
                                  rec.get("finish_reason", "length"), cached=True))
        else:  # duplicate of an earlier prompt generated in this call
            g = fresh[seen[keys[i]]]
            out.append(Generation(g.text, g.n_new_tokens, g.finish_reason, cached=False))
    return out


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], config: GenerationConfig | None = None, *,
             interventions: "Sequence[Intervention] | Intervention | NeuronSet | None" = None,
             cache: "GenerationCache | None" = None, model_key: str = "", progress: bool = True) -> list[str]:
    """Generate one response per prompt; returns the decoded new text in the original prompt order.

    ``interventions`` (an :class:`~safeneurons.intervene.Intervention`, a list, or a bare ``NeuronSet`` =
    zero it) are active for every decoding step and removed afterwards. With ``cache``, ``model_key``
    (e.g. ``LoadedModel.checksum``) is required; prompts already cached are not generated again.
    Progress goes to stderr (tqdm) unless ``progress=False``."""
    return [g.text for g in generate_detailed(model, tokenizer, prompts, config, interventions=interventions,
                                              cache=cache, model_key=model_key, progress=progress)]


# ----------------------------------------------------------------------------------------------
# vLLM backend (optional)


def _import_vllm() -> Any:
    try:
        import vllm  # type: ignore[import-not-found]
    except ImportError as exc:
        raise SafeneuronsError(
            "generate_vllm needs the optional package vllm, which is not installed "
            f"({exc}); install it with pip install 'safeneurons[vllm]' (CUDA machines only), "
            "or use generate() with the transformers backend."
        ) from None
    return vllm


def generate_vllm(model_path: str | os.PathLike[str] | Any, prompts: Sequence[str],
                  config: GenerationConfig | None = None,
                  interventions: "Sequence[Intervention] | Intervention | NeuronSet | None" = None, *,
                  tokenizer: Any = None, work_dir: str | os.PathLike[str] | None = None,
                  **llm_kwargs: Any) -> list[str]:
    """Generate with vLLM. Interventions are written into a pruned copy of the weights
    (:func:`safeneurons.intervene.export_pruned`) in a temporary directory, which vLLM then serves.

    ``model_path`` is a model directory (loaded with :func:`safeneurons.models.load_model` only when
    interventions must be baked in) or an in-memory ``PreTrainedModel`` (then pass ``tokenizer``).
    ``llm_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization=0.8``). Only zero/scale
    interventions (and set on biased modules) can be baked in; others raise from ``export_pruned``."""
    vllm = _import_vllm()
    config = config or GenerationConfig()
    ivs = as_interventions(interventions) if interventions is not None else []
    in_memory = not isinstance(model_path, (str, os.PathLike))
    if in_memory and tokenizer is None:
        raise ConfigError("generate_vllm with an in-memory model needs tokenizer=...")

    with tempfile.TemporaryDirectory(prefix="safeneurons-vllm-", dir=work_dir) as tmp:
        if ivs or in_memory:
            from safeneurons.intervene.surgery import export_pruned

            if in_memory:
                model = model_path
            else:
                from safeneurons.models import load_model

                lm = load_model(str(model_path))
                model, tokenizer = lm.model, (tokenizer or lm.tokenizer)
            serve = export_pruned(model, tokenizer, ivs, Path(tmp) / "model")
        else:
            serve = Path(model_path)
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(serve))
        rendered = [render_prompt(tokenizer, p, config.chat_template, config.system_prompt) for p in prompts]
        # token ids, so a chat template's own BOS is not doubled by vLLM's tokenizer call
        requests = [{"prompt_token_ids": e.ids} for e in _encode_rendered(tokenizer, rendered, config.chat_template)]
        llm = vllm.LLM(model=str(serve), seed=config.seed, **llm_kwargs)
        params = vllm.SamplingParams(
            max_tokens=config.max_new_tokens,
            temperature=float(config.temperature) if config.do_sample else 0.0,
            top_p=float(config.top_p) if config.do_sample else 1.0,
            seed=config.seed,
            stop=list(config.stop) or None,
            skip_special_tokens=True,
        )
        outputs = llm.generate(requests, params)
        texts = [o.outputs[0].text for o in outputs]
        del llm
    return [_cut_at_stop(t, config.stop)[0] for t in texts]


__all__ = ["Generation", "GenerationConfig", "generate", "generate_detailed", "generate_vllm"]
