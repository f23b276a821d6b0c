"""Exact estimators: batched single-neuron ablations (``exact``, with the prefix cache), the one-forward-
per-neuron reference (``naive``), and ``refine`` (exact re-scoring of a cheap estimator's shortlist)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from safeneurons.identify.importance.batches import _Batch, _Progress
from safeneurons.identify.importance.config import ESTIMATORS, Cell, ImportanceConfig
from safeneurons.identify.importance.rerun import (
    _capture,
    _check_cache_path,
    _final_norm,
    _final_rep,
    _run_from,
)
from safeneurons.identify.importance.resume import _Resume
from safeneurons.identify.importance.scores import _empty_cell, _shard_indices, top_indices, top_k_count
from safeneurons.models.hooks import site_hooks
from safeneurons.models.layout import ModelLayout
from safeneurons.stats.collect import decoder_of

log = logging.getLogger(__name__)


def _distances(h_abl: torch.Tensor, h0: torch.Tensor, score_w: torch.Tensor, reps: int, norm: str) -> torch.Tensor:
    """Δ per row: rows are prompt-major (row = b·reps + r); float64 ``[B·reps]``."""
    cols = torch.nonzero(score_w.sum(0) > 0).squeeze(1)
    base = h0[:, cols].repeat_interleave(reps, 0)
    diff = (h_abl[:, cols] - base).to(torch.float64)
    d2 = (diff * diff).sum(-1)  # [rows, ncols]
    per_tok = d2 if norm == "l2_squared" else d2.sqrt()
    w = score_w[:, cols].repeat_interleave(reps, 0)
    return (per_tok * w).sum(-1)


class _RowMask:
    """Zeroes coordinate ``cols[i]`` of row ``rows[i]`` (at every position, or where ``keep`` is 0)."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None
        self.cols: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None  # [n, T] multiplier (0 where ablated), None = all positions

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return x
        x = x.clone()
        if self.keep is None:
            x[self.rows, :, self.cols] = 0
        else:
            x[self.rows, :, self.cols] = x[self.rows, :, self.cols] * self.keep.to(x.dtype)
        return x


@ESTIMATORS.register("exact", summary="batched single-neuron ablations, re-running layers l..L from a prefix cache",
                     reads=("norm", "ablate_positions", "max_rows", "prefix_cache"), exact=True)
@torch.no_grad()
def _exact(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch], n_prompts: int,
           todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume, progress: bool,
           meta: dict[str, Any], subset: Mapping[Cell, np.ndarray] | None = None) -> None:
    """Batched single-neuron ablations (package docstring); ``subset`` limits each cell's neurons."""
    decoder = decoder_of(model)
    layers = layout.layers

    def neurons_of(cell: Cell) -> np.ndarray:
        idx = _shard_indices(layout.site(cell[1]).width, shard)
        return idx if subset is None else np.intersect1d(idx, subset[cell])

    norm = _final_norm(decoder) if cfg.prefix_cache else None
    use_cache = norm is not None
    if cfg.prefix_cache and norm is None:
        log.info("importance: %s has no recognised final norm; using full forwards (slower, same result).",
                 type(decoder).__name__)
    total = sum(neurons_of(c).size for c in todo) * len(batches)
    bar = _Progress(total, f"importance exact ({len(todo)} cells)", progress)
    checked = False
    try:
        for layer, site in todo:
            lay = layout.site(site)
            neurons = neurons_of((layer, site))
            sums = _empty_cell(lay.width, shard)
            if neurons.size == 0:
                resume.save((layer, site), sums)
                continue
            mask = _RowMask()
            with site_hooks(layout, [(layer, site, mask)]):
                for batch in batches:
                    b = batch.ids.shape[0]
                    reps_max = max(1, cfg.max_rows // b)
                    if use_cache:
                        mask.rows = None
                        cap = _capture(decoder, layers, batch, layer)
                        if not checked:
                            use_cache = _check_cache_path(layers, norm, cap, layer)  # type: ignore[arg-type]
                            checked = True
                        h0 = cap.baseline
                    if not use_cache:
                        mask.rows = None
                        h0 = _final_rep(decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False))
                    for s in range(0, neurons.size, reps_max):
                        chunk = torch.as_tensor(neurons[s:s + reps_max], device=batch.ids.device)
                        reps = int(chunk.numel())
                        mask.rows = torch.arange(b * reps, device=chunk.device)
                        mask.cols = chunk.repeat(b) + lay.offset
                        mask.keep = None if cfg.ablate_positions == "all" else \
                            (~batch.ablate_m).repeat_interleave(reps, 0)
                        if use_cache:
                            h = _run_from(layers, norm, cap, layer, reps)  # type: ignore[arg-type]
                        else:
                            h = _final_rep(decoder(input_ids=batch.ids.repeat_interleave(reps, 0),
                                                   attention_mask=batch.mask.repeat_interleave(reps, 0),
                                                   use_cache=False))
                        mask.rows = None
                        d = _distances(h, h0, batch.score_w, reps, cfg.norm).view(b, reps).sum(0)
                        sums[neurons[s:s + reps]] += d.cpu().numpy()
                        bar.update(reps * 1)
            resume.save((layer, site), sums / n_prompts)
    finally:
        bar.close()
    meta["prefix_cache_used"] = use_cache


def _zero_one(layout: ModelLayout, layer: int, site: str, j: int,
              keep: torch.Tensor | None) -> AbstractContextManager[None]:
    """Zero neuron ``j``: at every position (as :func:`~safeneurons.intervene.hooks.ablate` does: the
    activation times a 0/1 vector), else where ``keep`` is 0."""
    col = layout.site(site).offset + j

    def zero_all(x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
        a[col] = 0
        return x * a

    def zero_kept(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, col] = x[:, :, col] * keep.to(x.dtype)
        return x

    return site_hooks(layout, [(layer, site, zero_all if keep is None else zero_kept)])


@ESTIMATORS.register("naive", summary="one full forward per (neuron, prompt batch); the reference exact must equal",
                     reads=("norm", "ablate_positions"), exact=True)
@torch.no_grad()
def _naive(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch], n_prompts: int,
           todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume, progress: bool,
           meta: dict[str, Any]) -> None:
    decoder = decoder_of(model)
    base = [_final_rep(decoder(input_ids=b.ids, attention_mask=b.mask, use_cache=False)) for b in batches]
    total = sum(_shard_indices(layout.site(s).width, shard).size for _, s in todo) * len(batches)
    bar = _Progress(total, f"importance naive ({len(todo)} cells)", progress)
    try:
        for layer, site in todo:
            width = layout.site(site).width
            sums = _empty_cell(width, shard)
            for j in _shard_indices(width, shard):
                for batch, h0 in zip(batches, base):
                    keep = None if cfg.ablate_positions == "all" else ~batch.ablate_m
                    with _zero_one(layout, layer, site, int(j), keep):
                        h = _final_rep(decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False))
                    sums[j] += float(_distances(h, h0, batch.score_w, 1, cfg.norm).sum())
                    bar.update(1)
            resume.save((layer, site), sums / n_prompts)
    finally:
        bar.close()


def _refine(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch], n_prompts: int,
            cells: list[Cell], coarse: dict[Cell, np.ndarray], resume_path: str | Path | None, key: str,
            progress: bool, meta: dict[str, Any], restart_stale: bool = False) -> dict[Cell, np.ndarray]:
    """Exact scores for each cell's shortlist (see ``refine`` in the package docstring)."""
    t = time.perf_counter()
    cand = {c: top_indices(v, top_k_count(v.size, cfg.refine)) for c, v in coarse.items()}
    sub = _Resume(Path(resume_path) / "refine" if resume_path is not None else None, key + ":refine", cfg, restart_stale)
    todo = [c for c in cells if c not in sub.done]
    sub_meta: dict[str, Any] = {}
    if todo:
        _exact(model, layout, cfg, batches, n_prompts, todo, None, sub, progress, sub_meta, subset=cand)
    out = {}
    for c in cells:
        v, idx = coarse[c].copy(), cand[c]
        if idx.size:
            exact = sub.done[c][idx]
            v = np.minimum(v, np.nextafter(exact.min(), -np.inf))
            v[idx] = exact
        out[c] = v
    meta["refine"] = {"fraction": cfg.refine, "candidates": int(sum(x.size for x in cand.values())),
                      "seconds": time.perf_counter() - t, "prefix_cache_used": sub_meta.get("prefix_cache_used")}
    return out
