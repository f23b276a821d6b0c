"""Linearised estimators (attribution patching): ``first_order`` with the exact Jacobian (one VJP per
output coordinate) and ``probe`` with k random probe vectors (k VJPs per scored position, or per batch with
``joint_positions``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn

from safeneurons.identify.importance.batches import _Batch, _Progress
from safeneurons.identify.importance.config import ESTIMATORS, Cell, ImportanceConfig
from safeneurons.identify.importance.rerun import _final_rep
from safeneurons.identify.importance.resume import _Resume
from safeneurons.identify.importance.scores import _empty_cell, _shard_indices
from safeneurons.models.hooks import site_hooks
from safeneurons.models.layout import ModelLayout
from safeneurons.stats.collect import decoder_of

log = logging.getLogger(__name__)


def _probe_matrix(kind: str, k: int, d: int, seed: int, prompt: int, slot: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """``(U [k, d], weight)`` with ``weight · Σ_i (v·u_i)² ≈ ‖v‖²`` (E over the seeded draw)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + prompt) * 7919 + slot)
    if kind == "gaussian":
        u = torch.randn(k, d, generator=g, dtype=torch.float64)
    elif kind == "rademacher":
        u = torch.randint(0, 2, (k, d), generator=g).to(torch.float64) * 2 - 1
    else:  # orthogonal: blocks of rows of random orthogonal matrices, scaled to E[u uᵀ] = I
        blocks, left = [], k
        while left > 0:
            q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar-distributed
            blocks.append(q.T[: min(left, d)] * math.sqrt(d))
            left -= d
        u = torch.cat(blocks)
    return u.to(device=device, dtype=dtype), 1.0 / k


@contextmanager
def _frozen_params(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad inside the block (no weight-gradient graph), restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def _vjps(h: torch.Tensor, inputs: list[torch.Tensor], g_out: torch.Tensor,
          state: dict[str, bool]) -> list[torch.Tensor | None]:
    """``[k, *input.shape]`` gradients for k stacked output cotangents ``g_out [k, *h.shape]``
    (one vmapped backward; one backward per cotangent where vmap is unsupported)."""
    if state.get("batched", True) and g_out.shape[0] > 1:
        try:
            return list(torch.autograd.grad(h, inputs, grad_outputs=g_out, retain_graph=True, allow_unused=True,
                                            is_grads_batched=True))
        except (RuntimeError, NotImplementedError) as exc:
            state["batched"] = False
            log.info("importance: batched VJPs unsupported here (%s); one backward per probe instead.",
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    outs = [torch.autograd.grad(h, inputs, grad_outputs=g, retain_graph=True, allow_unused=True) for g in g_out]
    return [None if outs[0][i] is None else torch.stack([o[i] for o in outs]) for i in range(len(inputs))]


def _delta_hook(layout: ModelLayout, cell: Cell, acts: dict[Cell, torch.Tensor],
                deltas: dict[Cell, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A site hook for ``cell`` that records the site's activation in ``acts[cell]`` and adds a zero tensor
    ``deltas[cell]`` (requiring grad) to it: the gradient with respect to that tensor is the gradient with
    respect to the activation."""
    lay = layout.site(cell[1])

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = x[..., lay.offset: lay.offset + lay.width]
        acts[cell] = a.detach()
        dlt = torch.zeros_like(a, requires_grad=True)
        deltas[cell] = dlt
        pad = (lay.offset, x.shape[-1] - lay.offset - lay.width)
        return x + torch.nn.functional.pad(dlt, pad) if pad != (0, 0) else x + dlt

    return fn


def _linearised(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch],
                n_prompts: int, todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume,
                progress: bool, meta: dict[str, Any], *, exact_jac: bool) -> None:
    """Linearised Δh for all neurons at once (attribution patching), see the package docstring.

    For prompt b, scored position s and probe u (d-vector): ``c_j = −Σ_{t ablated} a_{t,j} ∂(h_s·u)/∂a_{t,j}``
    ≈ ``Δh_s·u``; ``‖Δh_s‖² ≈ w Σ_i c_{j,i}²`` with w = 1 for the basis (``exact_jac``, method
    ``first_order``) and 1/k for k random probes (``probe``). One backward per probe gives every scored
    neuron of every layer."""
    decoder = decoder_of(model)
    sums = {c: _empty_cell(layout.site(c[1]).width, shard) for c in todo}
    n_vjp = 0
    vstate: dict[str, bool] = {}
    bar = _Progress(len(batches), f"importance {cfg.method} ({len(todo)} cells)", progress, unit="batch")
    try:
        for batch in batches:
            acts: dict[Cell, torch.Tensor] = {}
            deltas: dict[Cell, torch.Tensor] = {}
            hooks = [(cell[0], cell[1], _delta_hook(layout, cell, acts, deltas)) for cell in todo]
            with torch.enable_grad(), _frozen_params(model), site_hooks(layout, hooks):
                h = _final_rep(decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False))
            b, t, d = h.shape
            order = list(deltas)
            inputs = [deltas[c] for c in order]
            # attribution weights −a_{t,j} on the ablated positions, 0 elsewhere
            w_ab = {c: -(acts[c] * batch.ablate_m.unsqueeze(-1).to(acts[c].dtype)) for c in order}
            per_elem = sum(x.numel() for x in inputs) * h.element_size() * 3  # grads + products
            chunk = max(1, min(64, (256 << 20) // max(1, per_elem)))
            # slots: scored positions (one for "last"; the i-th response token for "response")
            pos_lists = [torch.nonzero(batch.score_w[r] > 0).squeeze(1).tolist() for r in range(b)]
            per_prompt = {c: torch.zeros((b, acts[c].shape[-1]), dtype=torch.float64, device=h.device)
                          for c in order}
            n_slots_max = max(len(p) for p in pos_lists)
            # each group of slots shares one set of VJPs: one slot at a time, or all of them (joint_positions:
            # independent probes at every position sum, in expectation, to Σ_t ‖Δh_t‖²)
            groups = [list(range(n_slots_max))] if cfg.joint_positions else [[s] for s in range(n_slots_max)]
            for group in groups:
                entries = [(r, slot) for slot in group for r in range(b) if slot < len(pos_lists[r])]
                rows = sorted({r for r, _ in entries})
                e_rows = torch.tensor([r for r, _ in entries], device=h.device)
                pos = torch.tensor([pos_lists[r][slot] for r, slot in entries], device=h.device)
                rows_t = torch.tensor(rows, device=h.device)
                if exact_jac:
                    k, weight = d, 1.0
                    probes = torch.eye(d, dtype=h.dtype, device=h.device).unsqueeze(1).expand(d, len(entries), d)
                else:
                    k, weight = cfg.n_probes, 1.0 / cfg.n_probes
                    probes = torch.stack([_probe_matrix(cfg.probe_kind, k, d, cfg.seed, batch.idx[r], slot,
                                                        h.device, h.dtype)[0] for r, slot in entries], 1)  # [k, E, d]
                est2 = {c: torch.zeros((b, acts[c].shape[-1]), dtype=torch.float64, device=h.device) for c in order}
                for s0 in range(0, k, chunk):
                    u = probes[s0:s0 + chunk]
                    g_out = torch.zeros((u.shape[0], b, t, d), dtype=h.dtype, device=h.device)
                    g_out[:, e_rows, pos] = u
                    grads = _vjps(h, inputs, g_out, vstate)
                    n_vjp += u.shape[0]
                    for c, g in zip(order, grads):
                        if g is not None:
                            proj = (w_ab[c].unsqueeze(0) * g).sum(2).to(torch.float64)  # [k', B, width]
                            est2[c] += (proj * proj).sum(0)
                    del grads, g_out
                for c in order:
                    e2 = est2[c][rows_t] * weight  # joint: the sum over the group's slots
                    val = e2 if cfg.norm == "l2_squared" else e2.sqrt()
                    n_slots = torch.tensor([len(pos_lists[r]) for r in rows], dtype=torch.float64, device=h.device)
                    per_prompt[c][rows_t] += val / n_slots.unsqueeze(1)
            for c in order:
                idx = _shard_indices(acts[c].shape[-1], shard)
                sums[c][idx] += per_prompt[c].sum(0).cpu().numpy()[idx]
            del h, acts, deltas, inputs, w_ab
            bar.update(1)
    finally:
        bar.close()
    meta["vjps"] = n_vjp
    meta["batched_vjps"] = vstate.get("batched", True)
    for c in todo:
        resume.save(c, sums[c] / n_prompts)


ESTIMATORS.add("first_order", partial(_linearised, exact_jac=True), reads=("norm",), exact=False,
               summary="linearised Δh (attribution patching), exact Jacobian: d VJPs per scored position")
ESTIMATORS.add("probe", partial(_linearised, exact_jac=False),
               reads=("norm", "n_probes", "probe_kind", "seed", "joint_positions"), exact=False,
               summary="linearised Δh sketched with k random probe vectors: k VJPs per scored position")
