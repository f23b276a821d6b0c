"""Test helpers on top of :mod:`safeneurons.models.tiny`: tiny models tracked for the hook-leak check."""

from __future__ import annotations

import weakref

import torch

from safeneurons.models.tiny import CHATML, CONFIGS, FAMILIES, VOCAB, tiny_model, tiny_tokenizer

_LIVE_MODELS: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


def make_tiny_model(family: str = "qwen2", seed: int = 0, layers: int | None = None) -> torch.nn.Module:
    model = tiny_model(family, seed, layers)
    _LIVE_MODELS.add(model)
    return model


def hooks_left(model: torch.nn.Module) -> list[str]:
    """Names of modules that still carry forward/backward hooks."""
    left = []
    for name, mod in model.named_modules():
        if mod._forward_hooks or mod._forward_pre_hooks or mod._backward_hooks:
            left.append(name)
    return left

__all__ = ["CHATML", "CONFIGS", "FAMILIES", "VOCAB", "make_tiny_model", "tiny_tokenizer", "hooks_left"]
