"""Scaling a trained update: ``θ(s) = θ₀ + s · (θ₁ − θ₀)``.

A fine-tuned model ``θ₁`` and its starting point ``θ₀`` span a line of models; ``s = 1`` is the trained
one, ``s = 0`` the original, ``s < 1`` a weaker update (the "task vector" of Ilharco et al., ICLR 2023, scaled;
WiSE-FT, Wortsman et al., CVPR 2022, is ``0 < s < 1``). Scoring a few strengths traces the trade-off a
training run makes (e.g. attack success against over-refusal) without training again. Only the tensors that
training changed are touched, so a masked update that moved 0.06 % of the parameters costs that much memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from safeneurons.errors import ConfigError


def changed_parameters(tuned: nn.Module, base: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: θ₁ − θ₀}`` for the parameters whose values differ (names as ``tuned.named_parameters()``)."""
    base_params = dict(base.named_parameters())
    delta: dict[str, torch.Tensor] = {}
    for name, p in tuned.named_parameters():
        if name not in base_params:
            raise ConfigError(f"scaled update: parameter {name!r} of the trained model is not in the base model.")
        q = base_params[name]
        if p.shape != q.shape:
            raise ConfigError(f"scaled update: {name!r} has shape {tuple(p.shape)} in the trained model and "
                              f"{tuple(q.shape)} in the base model.")
        if not torch.equal(p.detach(), q.detach().to(p.device, p.dtype)):
            delta[name] = p.detach() - q.detach().to(p.device, p.dtype)
    return delta


@contextmanager
def scaled_update(tuned: nn.Module, base: nn.Module, scale: float) -> Iterator[nn.Module]:
    """Within the block, ``tuned``'s weights are ``θ₀ + scale · (θ₁ − θ₀)``; on exit (also on error) they are
    exactly ``θ₁`` again. ``scale = 1`` leaves the model untouched; any real ``scale`` is allowed (``> 1``
    extrapolates)."""
    if not math.isfinite(scale):
        raise ConfigError(f"scaled update: scale must be a finite number, got {scale!r}.")
    if scale == 1.0:
        yield tuned
        return
    delta = changed_parameters(tuned, base)
    params, base_params = dict(tuned.named_parameters()), dict(base.named_parameters())
    saved = {name: params[name].detach().clone() for name in delta}
    try:
        with torch.no_grad():
            for name, d in delta.items():
                params[name].copy_(base_params[name].detach().to(d.device, d.dtype) + scale * d)
        yield tuned
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
