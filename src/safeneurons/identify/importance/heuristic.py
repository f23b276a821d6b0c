"""The gradient-free ``heuristic`` estimator: ``‖a_{·,j}‖₂`` over the ablated positions times the norm of
the neuron's outgoing weights."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from safeneurons.identify.importance.batches import _Batch, _Progress
from safeneurons.identify.importance.config import ESTIMATORS, Cell, ImportanceConfig
from safeneurons.identify.importance.resume import _Resume
from safeneurons.identify.importance.scores import _empty_cell, _shard_indices
from safeneurons.models.adapters import get_module
from safeneurons.models.hooks import site_hooks
from safeneurons.models.layout import ModelLayout
from safeneurons.stats.collect import decoder_of


def _site_matrix(layout: ModelLayout, layer: int, site: str) -> torch.Tensor:
    """The weight matrix of the module that consumes an input site, as ``[d_out, width]``."""
    lay = layout.site(site)
    ps = lay.surgery
    w = getattr(get_module(layout.layers[layer], ps.module), ps.param).detach()
    return (w if ps.dim == 1 else w.T).to(torch.float64)


def _outgoing_norms(layout: ModelLayout, layer: int, site: str) -> torch.Tensor:
    """‖outgoing weight‖ per neuron (see the package docstring for q/k/v)."""
    if site in ("mlp", "o"):
        return _site_matrix(layout, layer, site).norm(dim=0)
    wo = _site_matrix(layout, layer, "o")  # [d, n_heads * head_dim]
    hd, nh, nkv = layout.head_dim, layout.n_heads, layout.n_kv_heads
    col = wo.norm(dim=0).view(nh, hd)  # per query head, per head coordinate
    group = nh // nkv
    if site == "v":  # v coordinate (g, e) feeds o columns (h, e) for the heads h of group g
        return (col.pow(2).view(nkv, group, hd).sum(1)).sqrt().reshape(-1)
    head = col.pow(2).sum(1).sqrt() / math.sqrt(hd)  # per query head
    if site == "q":
        return head.repeat_interleave(hd)
    return (head.pow(2).view(nkv, group).sum(1)).sqrt().repeat_interleave(hd)  # k


def _norm_hook(layout: ModelLayout, cell: Cell, ablate_m: torch.Tensor,
               acc: dict[Cell, torch.Tensor]) -> Callable[[torch.Tensor], None]:
    """An observer for ``cell``: ``acc[cell]`` = Σ_prompts ‖a_{·,j}‖₂ over the ablated tokens."""
    lay = layout.site(cell[1])

    def fn(x: torch.Tensor) -> None:
        a = x[..., lay.offset: lay.offset + lay.width].to(torch.float64)
        m = ablate_m.unsqueeze(-1).to(a.dtype)
        acc[cell] = ((a * a * m).sum(1)).sqrt().sum(0)

    return fn


@ESTIMATORS.register("heuristic", summary="gradient-free ‖activation‖ × ‖outgoing weights‖ per neuron",
                     reads=(), exact=False)
@torch.no_grad()
def _heuristic(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch],
               n_prompts: int, todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume,
               progress: bool, meta: dict[str, Any]) -> None:
    decoder = decoder_of(model)
    sums = {c: _empty_cell(layout.site(c[1]).width, shard) for c in todo}
    norms = {c: _outgoing_norms(layout, *c) for c in todo}
    bar = _Progress(len(batches), f"importance heuristic ({len(todo)} cells)", progress, unit="batch")
    try:
        for batch in batches:
            acc: dict[Cell, torch.Tensor] = {}
            hooks = [(cell[0], cell[1], _norm_hook(layout, cell, batch.ablate_m, acc)) for cell in todo]
            with site_hooks(layout, hooks):
                decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False)
            for c in todo:
                idx = _shard_indices(sums[c].size, shard)
                sums[c][idx] += (acc[c] * norms[c].to(acc[c].device)).cpu().numpy()[idx]
            bar.update(1)
    finally:
        bar.close()
    for c in todo:
        resume.save(c, sums[c] / n_prompts)
