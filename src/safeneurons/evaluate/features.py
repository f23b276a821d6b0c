"""Last-prompt-token features in one forward pass: a neuron set's activations and, optionally, the residual
stream after every decoder layer.

The last prompt token is the token before the answer (chat template with a generation prompt by default, as
in :mod:`safeneurons.stats`). Neuron activations are read where the set's sites live (an MLP neuron: the input
of the down projection, :mod:`safeneurons.models.adapters`), in the set's iteration order (layer, then site,
then index); the residual stream of layer ``ℓ`` is that decoder layer's output hidden state. Hooks are
registered inside the call, so interventions already attached to the model (zeroed neurons) are seen as they
act: their hooks were registered first. Decoder only (no LM head), right padding, length-sorted batches; a
pass that needs no residual stream stops once the deepest layer of the set has been read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from safeneurons.errors import NumericalError
from safeneurons.models.hooks import module_hooks
from safeneurons.models.layout import ModelLayout, model_layout
from safeneurons.neurons import SITES, NeuronSet
from safeneurons.stats.collect import decoder_of
from safeneurons.stats.encode import encode, length_sorted_batches, pad_batch, pad_token_id


@dataclass(frozen=True)
class Cell:
    """One (layer, site) group of a set: columns in the site module's activation, slice of the features."""

    layer: int
    site: str
    cols: torch.Tensor
    out: slice


def site_order(site: str) -> int:
    return SITES.index(site) if site in SITES else len(SITES)


def cells_of(layout: ModelLayout, neurons: NeuronSet, device: torch.device) -> list[Cell]:
    """The set's (layer, site) groups in its iteration order, which is the feature order."""
    cells, start = [], 0
    for (layer, site), idx in sorted(neurons.groups().items(), key=lambda kv: (kv[0][0], site_order(kv[0][1]))):
        cols = torch.as_tensor(idx + layout.site(site).offset, dtype=torch.long, device=device)
        cells.append(Cell(layer, site, cols, slice(start, start + idx.size)))
        start += idx.size
    return cells


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class _Stop(Exception):
    """Raised by the last capture of a pass: the layers after it are not needed."""


@dataclass(frozen=True)
class PromptFeatures:
    """``neurons``: ``[n, len(set)]`` float64 activations; ``residual``: ``[n, layers, hidden]`` float32 (None
    when not asked for)."""

    neurons: np.ndarray
    residual: np.ndarray | None


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def prompt_features(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], neurons: NeuronSet | None, *,
                    residual: bool = False, chat_template: bool = True, system_prompt: str | None = None,
                    max_length: int = 512, batch_size: int = 8,
                    on_batch: Callable[[int], None] | None = None) -> PromptFeatures:
    """The features of every prompt at its last prompt token, one forward pass per batch: the activations of
    ``neurons`` (None or empty: none) and, with ``residual``, every decoder layer's output. ``on_batch(k)``
    is called after each batch with the number of prompts it held."""
    layout = model_layout(model)
    device = model_device(model)
    cells = cells_of(layout, neurons, device) if neurons else []
    n_feat = len(neurons) if neurons else 0
    encoded = encode(tokenizer, list(prompts), None, chat_template, system_prompt, max_length)
    out = np.zeros((len(encoded), n_feat), dtype=np.float64)
    n_layers = layout.n_layers
    res: np.ndarray | None = None
    state: dict[str, Any] = {}
    wanted = len(cells) + (n_layers if residual else 0)

    def got(key: Any, value: torch.Tensor) -> None:
        state["got"][key] = value
        if len(state["got"]) == wanted:
            raise _Stop

    def neuron_hook(i: int, cell: Cell) -> Any:
        return lambda x: got(("cell", i), x[state["rows"], state["last"]].index_select(-1, cell.cols))

    def layer_hook(layer: int) -> Any:
        return lambda out_: got(("layer", layer), _hidden(out_)[state["rows"], state["last"]])

    hooks = [(layout.module(c.layer, c.site), layout.site(c.site).io, neuron_hook(i, c)) for i, c in enumerate(cells)]
    if residual:
        hooks += [(layout.layers[layer], "output", layer_hook(layer)) for layer in range(n_layers)]
    pad, decoder = pad_token_id(tokenizer), decoder_of(model)
    with module_hooks(hooks):
        for idx in length_sorted_batches(encoded, batch_size):
            batch = [encoded[i] for i in idx]
            ids, mask = pad_batch(batch, pad, "right")
            state.update(got={}, rows=torch.arange(len(batch), device=device),
                         last=torch.tensor([e.prompt_len - 1 for e in batch], device=device))
            try:
                decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            except _Stop:
                pass
            for i, c in enumerate(cells):
                out[idx, c.out] = state["got"][("cell", i)].double().cpu().numpy()
            if residual:
                layers = [state["got"][("layer", layer)].float().cpu().numpy() for layer in range(n_layers)]
                if res is None:
                    res = np.zeros((len(encoded), n_layers, layers[0].shape[-1]), dtype=np.float32)
                res[idx] = np.stack(layers, axis=1)
            if on_batch is not None:
                on_batch(len(idx))
    if not np.isfinite(out).all():
        raise NumericalError(f"non-finite activations of neuron set {neurons.name if neurons else ''!r} for "
                             f"{int((~np.isfinite(out).all(1)).sum())} prompt(s); try dtype float32.")
    if res is not None and not np.isfinite(res).all():
        raise NumericalError(f"non-finite residual stream for {int((~np.isfinite(res).all((1, 2))).sum())} "
                             "prompt(s); try dtype float32.")
    if residual and res is None:
        res = np.zeros((0, n_layers, 0), dtype=np.float32)
    return PromptFeatures(out, res)


__all__ = ["Cell", "PromptFeatures", "cells_of", "model_device", "prompt_features", "site_order"]
