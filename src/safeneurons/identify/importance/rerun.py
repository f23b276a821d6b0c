"""Prefix-cache re-runs: capture the residual stream entering layer ``l`` and every later layer's call
arguments from one ordinary forward, then re-run only layers ``l..L-1`` and the final norm (replicated
along the batch); :func:`_check_cache_path` checks that path against the ordinary forward."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from safeneurons.identify.importance.batches import _Batch
from safeneurons.models.hooks import hook_handles

log = logging.getLogger(__name__)


def _final_rep(out: Any) -> torch.Tensor:
    """The final hidden state ``[B, T, d]`` from a decoder's output."""
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0] if isinstance(out, (tuple, list)) else out


def _final_norm(decoder: nn.Module) -> nn.Module | None:
    """The decoder's final norm (applied after the last layer), None where it has none under a known name."""
    for name in ("norm", "ln_f", "final_layernorm", "final_norm"):
        m = getattr(decoder, name, None)
        if isinstance(m, nn.Module):
            return m
    return None


def _expand(obj: Any, b: int, reps: int) -> Any:
    """Repeat batch-dimension tensors (dim 0 == b, ndim >= 2) ``reps`` times, prompt-major."""
    if reps == 1:
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.dim() >= 2 and obj.shape[0] == b and b > 1:
            return obj.repeat_interleave(reps, 0)
        return obj
    if isinstance(obj, tuple):
        return tuple(_expand(o, b, reps) for o in obj)
    if isinstance(obj, list):
        return [_expand(o, b, reps) for o in obj]
    if isinstance(obj, dict):
        return {k: _expand(v, b, reps) for k, v in obj.items()}
    return obj


@dataclass
class _Captured:
    hidden: torch.Tensor  # residual stream entering layer ``start``
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]]  # layer -> (positional args after hidden, kwargs)
    baseline: torch.Tensor  # final hidden state [B, T, d]


def _capture(decoder: nn.Module, layers: list[nn.Module], batch: _Batch, start: int) -> _Captured:
    """One ordinary forward that records the input of layer ``start`` and every later layer's call."""
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    store: dict[str, torch.Tensor] = {}

    def make(i: int) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            kw = dict(kwargs)
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                hidden, rest = kw.pop("hidden_states"), ()
            calls[i] = (rest, kw)
            if i == start:
                store["hidden"] = hidden

        return hook

    with hook_handles() as handles:
        for i in range(start, len(layers)):
            handles.append(layers[i].register_forward_pre_hook(make(i), with_kwargs=True))
        out = decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False)
    return _Captured(store["hidden"], calls, _final_rep(out))


def _run_from(layers: list[nn.Module], norm: nn.Module, cap: _Captured, start: int, reps: int) -> torch.Tensor:
    """Layers ``start..`` and the final norm from the captured state, each prompt replicated ``reps`` times."""
    b = cap.hidden.shape[0]
    h = cap.hidden.repeat_interleave(reps, 0) if reps > 1 else cap.hidden
    for i in range(start, len(layers)):
        rest, kw = cap.calls[i]
        out = layers[i](h, *_expand(rest, b, reps), **_expand(kw, b, reps))
        h = out[0] if isinstance(out, (tuple, list)) else out
    return norm(h)


def _check_cache_path(layers: list[nn.Module], norm: nn.Module, cap: _Captured, start: int) -> bool:
    """Compare the layer-call path (two replicas) with the ordinary forward once; False = fall back."""
    try:
        h = _run_from(layers, norm, cap, start, 2)
    except Exception as exc:  # noqa: BLE001  (an unsupported layer signature: any error means fall back)
        log.info("importance: the cached-prefix layer path failed (%s: %s); using full forwards instead "
                 "(slower, same result).", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    ref = cap.baseline.repeat_interleave(2, 0)
    if h.shape != ref.shape:
        log.info("importance: the cached-prefix layer path gives shape %s, not %s; using full forwards.",
                 tuple(h.shape), tuple(ref.shape))
        return False
    scale = float(ref.abs().max()) + 1.0
    tol = 1e-4 if ref.dtype == torch.float32 or ref.dtype == torch.float64 else 5e-2
    err = float((h - ref).abs().max()) / scale
    if not err <= tol:
        log.info("importance: the cached-prefix layer path differs from the full forward (rel. error %.2e); "
                 "using full forwards instead (slower, same result).", err)
        return False
    return True
