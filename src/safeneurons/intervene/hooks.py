"""Neuron interventions as context managers on plain Hugging Face hooks.

Every intervention is a per-coordinate affine map ``x -> a * x + b`` on a site's activation:
zeroing (``a=0, b=0``, the SafeNeuron/SS-Neuron "pruning" or "suppression"), scaling by ``alpha``
(SS-Neuron "reinforcement"), or setting to a value such as the harmful-group mean (``a=0, b=v``).
Several interventions compose in order. Hooks are registered in ``__enter__`` after every site has
been resolved, and removed in ``finally``, so an exception never leaves one behind (the hook primitive is
:mod:`safeneurons.models.hooks`, shared with statistics and importance). The model is
never wrapped, so TRL, PEFT and lm-eval still see a ``PreTrainedModel``.

>>> with ablate(model, neurons):          # doctest: +SKIP
...     out = model.generate(**batch)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from safeneurons.models.adapters import get_module
from safeneurons.models.hooks import module_hooks
from safeneurons.models.layout import ModelLayout, model_layout
from safeneurons.neurons import NeuronSet

Mode = Literal["zero", "scale", "set"]
ACTIVE_ATTR = "_safeneurons_active"


@dataclass(frozen=True)
class Intervention:
    """What to do to a neuron set: ``zero``, ``scale`` by ``alpha``, or ``set`` to ``value``.

    ``value`` is a scalar or ``{(layer, site): array of len(indices)}`` aligned with the set's indices."""

    neurons: NeuronSet
    mode: Mode = "zero"
    alpha: float = 0.0
    value: float | Mapping[tuple[int, str], Any] | None = None
    label: str = field(default="")

    def describe(self) -> str:
        base = self.label or self.neurons.name or "set"
        if self.mode == "zero":
            return f"zero({base}, n={len(self.neurons)})"
        if self.mode == "scale":
            return f"scale({base}, alpha={self.alpha}, n={len(self.neurons)})"
        return f"set({base}, n={len(self.neurons)})"


def as_interventions(x: "Sequence[Intervention] | Intervention | NeuronSet") -> list[Intervention]:
    """Normalise the accepted forms: one intervention, a list, or a bare NeuronSet (= zero it)."""
    if isinstance(x, NeuronSet):
        return [Intervention(x, "zero")]
    if isinstance(x, Intervention):
        return [x]
    return [Intervention(i, "zero") if isinstance(i, NeuronSet) else i for i in x]


def _module_width(module: nn.Module, io: str) -> int:
    base = getattr(module, "base_layer", module)  # PEFT LoRA wraps the original layer
    w = base.weight
    conv1d = type(base).__name__ == "Conv1D"
    if io == "input":
        return int(w.shape[0] if conv1d else w.shape[1])
    return int(w.shape[1] if conv1d else w.shape[0])


class _Affine:
    """Per-module accumulated ``a, b`` vectors (float64 on CPU until first use)."""

    def __init__(self, width: int) -> None:
        self.a = np.ones(width, dtype=np.float64)
        self.b = np.zeros(width, dtype=np.float64)
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def compose(self, coords: np.ndarray, a: float | np.ndarray, b: float | np.ndarray) -> None:
        # new(x) = a * (A x + B) + b
        self.b[coords] = a * self.b[coords] + b
        self.a[coords] = a * self.a[coords]

    def tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            a = torch.as_tensor(self.a, dtype=like.dtype, device=like.device)
            b = torch.as_tensor(self.b, dtype=like.dtype, device=like.device) if self.b.any() else None
            self._cache[key] = (a, b)
        return self._cache[key]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.tensors(x)
        return x * a if b is None else torch.addcmul(b, x, a)


def _plan(layout: ModelLayout, interventions: Sequence[Intervention]) -> dict[tuple[int, str, str], _Affine]:
    plans: dict[tuple[int, str, str], _Affine] = {}
    shape = layout.shape()
    for iv in interventions:
        iv.neurons.check_fits(shape)
        for (layer, site), idx in iv.neurons.groups().items():
            lay = layout.site(site)
            module = layout.module(layer, site)
            key = (layer, lay.module, lay.io)
            if key not in plans:
                plans[key] = _Affine(_module_width(module, lay.io))
            coords = idx + lay.offset
            if iv.mode == "zero":
                plans[key].compose(coords, 0.0, 0.0)
            elif iv.mode == "scale":
                plans[key].compose(coords, float(iv.alpha), 0.0)
            elif iv.mode == "set":
                if isinstance(iv.value, Mapping):
                    v = np.asarray(iv.value[(layer, site)], dtype=np.float64)
                    if v.shape != idx.shape:
                        raise ValueError(f"set value for {layer}.{site} has shape {v.shape}, expected {idx.shape}")
                else:
                    v = float(iv.value if iv.value is not None else 0.0)
                plans[key].compose(coords, 0.0, v)
            else:
                raise ValueError(f"unknown intervention mode {iv.mode!r}; use zero, scale or set")
    return plans


@contextmanager
def intervene(model: nn.Module, interventions: Sequence[Intervention] | Intervention | NeuronSet,
              layout: ModelLayout | None = None) -> Iterator[list[str]]:
    """Apply interventions inside the ``with`` block; yields their descriptions."""
    ivs = as_interventions(interventions)
    layout = layout or model_layout(model)
    plans = _plan(layout, ivs)  # resolves every site before anything is registered
    hooks = [(get_module(layout.layers[layer], module_path), io, aff.apply)
             for (layer, module_path, io), aff in plans.items()]
    active: list[str] = getattr(model, ACTIVE_ATTR, [])
    descriptions = [iv.describe() for iv in ivs]
    try:
        with module_hooks(hooks):
            setattr(model, ACTIVE_ATTR, active + descriptions)
            yield descriptions
    finally:
        if active:
            setattr(model, ACTIVE_ATTR, active)
        elif hasattr(model, ACTIVE_ATTR):
            delattr(model, ACTIVE_ATTR)


def ablate(model: nn.Module, neurons: NeuronSet, layout: ModelLayout | None = None):
    """Zero ``neurons`` at every position (the pruning attack / suppression)."""
    return intervene(model, Intervention(neurons, "zero"), layout)


def scale(model: nn.Module, neurons: NeuronSet, alpha: float, layout: ModelLayout | None = None):
    """Multiply ``neurons`` by ``alpha`` at every position (reinforcement when ``alpha > 1``)."""
    return intervene(model, Intervention(neurons, "scale", alpha=alpha), layout)


def set_to(model: nn.Module, neurons: NeuronSet, value: float | Mapping[tuple[int, str], Any],
           layout: ModelLayout | None = None):
    """Set ``neurons`` to ``value`` (a scalar or per-(layer, site) arrays, e.g. a group mean)."""
    return intervene(model, Intervention(neurons, "set", value=value), layout)


def active_interventions(model: nn.Module) -> list[str]:
    """Descriptions of the interventions currently attached to ``model``."""
    return list(getattr(model, ACTIVE_ATTR, []))


def fingerprint(interventions: "Sequence[Intervention] | Intervention | NeuronSet | None") -> str:
    """A stable hash of what the interventions do (mode, alpha, values, exact neurons); ``"none"`` if empty.

    Used as a cache key: two runs with the same neurons and modes share cached generations."""
    if interventions is None:
        return "none"
    ivs = as_interventions(interventions)
    if not ivs:
        return "none"
    import hashlib

    h = hashlib.sha256()
    for iv in ivs:
        h.update(f"{iv.mode}|{iv.alpha!r}|".encode())
        for (layer, site), idx in sorted(iv.neurons.groups().items()):
            h.update(f"{layer}.{site}:".encode())
            h.update(idx.tobytes())
            if isinstance(iv.value, Mapping):
                h.update(np.asarray(iv.value[(layer, site)], dtype=np.float64).tobytes())
        if iv.value is not None and not isinstance(iv.value, Mapping):
            h.update(repr(float(iv.value)).encode())
    return "sha256:" + h.hexdigest()
