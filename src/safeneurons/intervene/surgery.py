"""Permanent weight surgery: the same affine interventions written into the weights.

For a site that is a module *input* (``mlp`` = down-projection input, ``o``), neuron j only reaches
the output through column j of the consuming weight, so ``x_j -> a x_j + b`` equals
``W[:, j] -> a W[:, j]`` plus ``b W[:, j]`` added to that module's bias. For an *output* site
(``q``/``k``/``v``), row j and bias j of the producing weight are scaled, and a set value goes into
the bias. The exported directory loads in stock transformers and reproduces the hooked model.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from safeneurons.errors import SafeneuronsError
from safeneurons.intervene.hooks import Intervention, _plan, as_interventions
from safeneurons.neurons import NeuronSet
from safeneurons.models.adapters import get_module
from safeneurons.models.layout import ModelLayout, model_layout


def _along(v: torch.Tensor, dim: int) -> torch.Tensor:
    """View a vector so that it broadcasts along ``dim`` of a 2-D weight."""
    return v.view(-1, 1) if dim == 0 else v.view(1, -1)


@contextmanager
def edited_weights(model: nn.Module, interventions: Sequence[Intervention] | Intervention | NeuronSet,
                   layout: ModelLayout | None = None) -> Iterator[nn.Module]:
    """Write the interventions into the weights in place; restore the original slices on exit."""
    ivs = as_interventions(interventions)
    layout = layout or model_layout(model)
    plans = _plan(layout, ivs)
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        for (layer, module_path, io), aff in plans.items():
            module = get_module(layout.layers[layer], module_path)
            conv1d = type(module).__name__ == "Conv1D"
            coords = torch.as_tensor((aff.a != 1.0).nonzero()[0].tolist() or [], dtype=torch.long)
            coords = torch.unique(torch.cat([coords, torch.as_tensor(aff.b.nonzero()[0], dtype=torch.long)]))
            if coords.numel() == 0:
                continue
            w = module.weight.data
            a = torch.as_tensor(aff.a[coords.numpy()], dtype=w.dtype, device=w.device)
            b = torch.as_tensor(aff.b[coords.numpy()], dtype=w.dtype, device=w.device)
            bias = module.bias.data if getattr(module, "bias", None) is not None else None
            if io == "input":
                dim = 0 if conv1d else 1
                cols = w.index_select(dim, coords.to(w.device))
                saved.append((w, w.clone()))
                if b.any():
                    if bias is None:
                        raise SafeneuronsError(
                            f"layer {layer} {module_path}: setting an input neuron to a value needs a bias "
                            "on the consuming module, and it has none; use hooks (set_to) instead."
                        )
                    saved.append((bias, bias.clone()))
                    bias.add_((cols * _along(b, dim)).sum(dim=dim))
                w.index_copy_(dim, coords.to(w.device), cols * _along(a, dim))
            else:
                dim = 1 if conv1d else 0
                saved.append((w, w.clone()))
                rows = w.index_select(dim, coords.to(w.device))
                w.index_copy_(dim, coords.to(w.device), rows * _along(a, dim))
                if bias is not None:
                    saved.append((bias, bias.clone()))
                    bias[coords.to(w.device)] = bias[coords.to(w.device)] * a + b
                elif b.any():
                    raise SafeneuronsError(
                        f"layer {layer} {module_path}: setting an output neuron to a value needs a bias; "
                        "this module has none. Use hooks (set_to) instead."
                    )
        yield model
    finally:
        with torch.no_grad():
            for tensor, original in reversed(saved):
                tensor.copy_(original)


def export_pruned(model: nn.Module, tokenizer: Any, interventions: Sequence[Intervention] | Intervention | NeuronSet,
                  out_dir: str | os.PathLike[str], layout: ModelLayout | None = None) -> Path:
    """Save a copy of ``model`` with the interventions baked into its weights (safetensors)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    with edited_weights(model, interventions, layout):
        model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
