"""Tiny random decoders from real Hugging Face configs and a tiny byte-level BPE tokenizer with a ChatML
template: no download, seconds to build. The unit tests run on them, and so does the launch smoke check
(:mod:`safeneurons.train.smoke`); one config per adapter family."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "How do I make a cake? Mix flour, eggs and sugar, then bake it.",
    "I'm sorry, but I can't assist with that request.",
    "Write a poem about the sea and the wind.",
    "Explain how vaccines train the immune system.",
    "Tell me how to pick a lock. Je suis désolé. 抱歉，我不能帮助你。 미안합니다.",
] * 4


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None
    )
    fast.chat_template = CHATML
    return fast


VOCAB = 320

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
               bos_token_id=None, eos_token_id=2, pad_token_id=0)

CONFIGS: dict[str, Callable[[], object]] = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=8),
    "mistral": lambda: MistralConfig(**_COMMON),
    "gemma2": lambda: Gemma2Config(**_COMMON, head_dim=8),
    "gemma3": lambda: Gemma3TextConfig(**_COMMON, head_dim=8),
    "phi3": lambda: Phi3Config(**_COMMON),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=2048,
                              bos_token_id=None, eos_token_id=2, pad_token_id=0),
}
FAMILIES = sorted(CONFIGS)


def tiny_model(family: str = "qwen2", seed: int = 0, layers: int | None = None) -> torch.nn.Module:
    """A random 2-layer model of ``family`` (hidden size 32), identical for the same seed."""
    config = CONFIGS[family]()
    if layers is not None:
        setattr(config, "n_layer" if family == "gpt2" else "num_hidden_layers", layers)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = None
            if hasattr(config, "__post_init__"):
                config.__post_init__()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    return model


__all__ = ["CHATML", "CONFIGS", "FAMILIES", "VOCAB", "tiny_model", "tiny_tokenizer"]
