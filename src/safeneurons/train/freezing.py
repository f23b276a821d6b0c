"""Exact neuron freezing for training: gradient masks by index plus a post-step restore.

SafeNeuron (arXiv 2602.12158, Eqs. 11-12, Algorithm 1 step 3) trains
``min_{θ_r} L_DPO(θ_s, θ_r)  s.t.  θ_s = const``: the parameters θ_s of the safety neurons stay fixed,
everything else trains. SS-Neuron expansion (arXiv 2602.01283, §B.6) is the mirror image,
``θ_{t+1} = θ_t − η (M ⊙ ∇_θ L)``: only the target neurons' parameters train. Both are a
:class:`NeuronFreezer`, in ``mode="freeze"`` and ``mode="train_only"``.

The parameters of neuron ``j`` of a site are the slices named by the layout
(:class:`safeneurons.models.adapters.ParamSlice`): gate/up row ``j`` and down column ``j`` for an MLP
neuron (Phi-3's fused ``gate_up_proj`` at two offsets), the Q/K/V row ``j`` and its bias entry, or the O
column ``j`` (GPT-2 ``Conv1D`` swaps rows and columns). For each affected tensor the freezer keeps one
sorted index list per dimension; it never builds a dense ``ones_like`` mask.

Two mechanisms, because either alone is not exact:

1. **Gradient hooks** (``Tensor.register_hook``) zero the held coordinates of every gradient as autograd
   produces it, i.e. before gradient accumulation into ``.grad``, before the DDP all-reduce (the reducer
   hooks fire after accumulation) and before gradient clipping, so clipping norms ignore frozen entries.
2. **Snapshot and restore.** Masked gradients do not stop AdamW's decoupled weight decay
   ``θ ← θ − η λ θ`` (nor Adam-with-L2 momentum) from moving "frozen" weights (papers.md A.5, models.md
   pitfall 3). The freezer snapshots the held coordinates when attached and writes them back after every
   optimizer step (:meth:`NeuronFreezer.step_restore`, called by :class:`FreezeCallback` in HF/TRL
   trainers), so they stay **bit-identical**. Held slices are snapshotted in
   ``promote_types(dtype, float32)``, which holds fp16/bf16/fp32 values exactly; in ``train_only`` mode the
   held part is most of each touched tensor, so that snapshot is a full clone in the tensor's own dtype.

``train_only`` sets ``requires_grad=False`` on every parameter that owns no target coordinate (so the
optimizer allocates no state for it) and masks the gradient of the touched tensors to the target slices.

**LoRA** (PEFT, ``lora.Linear``): the base weights are already frozen; what must not move is the *merged*
delta ``ΔW = s·B·A`` on the frozen slices. An output-side neuron ``j`` (a row of gate/up/Q/K/V) has
``ΔW[j, :] = s·B[j, :]·A``, an input-side neuron (a column of down/O) has ``ΔW[:, j] = s·B·A[:, j]``.
In ``freeze`` mode the freezer zeroes ``B`` rows / ``A`` columns of the frozen neurons when it attaches and
holds them at zero (gradient mask + restore), so the merged delta on the frozen slices is exactly zero for
the whole run; in ``train_only`` mode it does the same to the complement. DoRA and other PEFT tuners are
refused.

**Sharded parameters.** DDP keeps whole parameters and is tested (2 gloo ranks stay bit-identical,
directly and under ``accelerate launch``); ZeRO-1/2 is untested (docs/scale-out.md). FSDP2
(``fully_shard``) replaces every parameter by a new ``DTensor`` holding this rank's rows, so the freezer
must be attached *after* ``fully_shard``: it then works on each rank's local shard (``to_local()``), with
the global neuron indices mapped to the rows this rank stores (computed from the device mesh and the
``Shard`` placements with ``torch.chunk`` semantics, checked against the local shape). A row slice
(Q/K/V, gate/up) may lie on another rank and be empty here; a column slice (O, down) applies to every
local row. The gradient mask is then a post-accumulate-grad hook, which FSDP2 calls once the
reduce-scattered gradient shard is in ``.grad`` (before clipping and the step). Drift is measured per rank
(``drift(across_ranks=True)`` all-reduces the maximum). Tested with 2 gloo ranks on CPU
(tests/unit/test_freezing_fsdp.py). Flattened parameters (FSDP1, DeepSpeed ZeRO-3) are refused, and a
freezer whose parameters were replaced or flattened after it was attached raises instead of restoring
tensors that no longer train. The masked trainers wrap the model after attaching the freezer, so they
still refuse FSDP and ZeRO-3 at launch (:func:`safeneurons.train.dpo.check_launch`).

Optional training-time ablation (Algorithm 1 step 3, "h[:, :, S] ← 0"): :meth:`NeuronFreezer.ablation`
zeroes the frozen neurons in the forward pass for the duration of a ``with`` block (training), through
:func:`safeneurons.intervene.ablate`; it is never left on the model for evaluation or export.

>>> with NeuronFreezer(model, safety_neurons) as fz:                 # doctest: +SKIP
...     for batch in data:
...         loss = model(**batch).loss; loss.backward()
...         opt.step(); fz.step_restore(); opt.zero_grad()

Under FSDP2, resolve the layout before wrapping (``fully_shard`` renames the model class) and attach after:

>>> layout = model_layout(model)                                     # doctest: +SKIP
>>> for layer in layout.layers:
...     fully_shard(layer, mesh=mesh)
>>> fully_shard(model, mesh=mesh)
>>> with NeuronFreezer(model, safety_neurons, layout=layout) as fz:
...     ...                                                          # the same loop as above
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from transformers import TrainerCallback

from safeneurons.errors import ArchitectureError, ConfigError
from safeneurons.intervene.hooks import ablate
from safeneurons.models.adapters import ParamSlice
from safeneurons.models.layout import ModelLayout, model_layout
from safeneurons.neurons import SITES, NeuronSet

logger = logging.getLogger("safeneurons.train")

Mode = Literal["freeze", "train_only"]
MODES: tuple[str, ...] = ("freeze", "train_only")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model under a PEFT wrapper (or ``model`` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "lora_B")


def _check_supported_wrapper(module: nn.Module, where: str) -> None:
    if hasattr(module, "base_layer") and not _is_lora(module):
        raise ConfigError(
            f"{where}: {type(module).__name__} is a PEFT adapter other than LoRA; neuron freezing supports "
            "plain "
            "weights and LoRA only. Use a LoraConfig or full fine-tuning."
        )
    mags = getattr(module, "lora_magnitude_vector", None)
    if mags is not None and len(mags) > 0:
        raise ConfigError(
            f"{where}: DoRA (use_dora=True) rescales whole weight columns, so frozen neuron slices cannot be "
            "kept "
            "exact. Set use_dora=False."
        )


# ----------------------------------------------------------------------------------------------
# FSDP2: DTensor parameters and the rows of this rank
# ----------------------------------------------------------------------------------------------


def _distributed_on() -> bool:
    """FSDP and DTensors need an initialized process group; without one, skip importing their modules."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _dtensor_types() -> tuple[type, type] | None:
    """``(DTensor, Shard)`` of this torch build, or None without DTensor or an initialized process group."""
    if not _distributed_on():
        return None
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch < 2.5
        try:
            from torch.distributed._tensor import DTensor, Shard
        except ImportError:
            return None
    return DTensor, Shard


def _is_dtensor(t: object) -> bool:
    types = _dtensor_types()
    return types is not None and isinstance(t, types[0])


def _fsdp2_module_type() -> type | None:
    """The class every ``fully_shard``-ed module becomes an instance of, or None without FSDP2."""
    if not _distributed_on():
        return None
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6
        try:
            from torch.distributed._composable.fsdp import FSDPModule
        except ImportError:
            return None
    return FSDPModule  # type: ignore[no-any-return]


def _uses_fsdp1(model: nn.Module) -> bool:
    """Whether ``model`` is or contains an FSDP1 ``FullyShardedDataParallel`` wrapper."""
    if not _distributed_on():
        return False
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def _fsdp2_managed(model: nn.Module) -> set[int]:
    """ids of the parameters FSDP2 manages in ``model``, whether sharded right now or not."""
    cls = _fsdp2_module_type()
    if cls is None:
        return set()
    return {id(p) for m in model.modules() if isinstance(m, cls) for p in m.parameters()}


def _chunk_range(size: int, parts: int, index: int) -> tuple[int, int]:
    """``(start, length)`` of chunk ``index`` when ``size`` entries are split into ``parts`` the way
    ``torch.chunk`` (hence DTensor's ``Shard`` and FSDP2) splits them: chunks of ``ceil(size / parts)``,
    so the last ones may be shorter or empty."""
    step = -(-size // parts)
    start = min(index * step, size)
    return start, min(start + step, size) - start


def _shard_ranges(name: str, t: torch.Tensor, shard_type: type) -> dict[int, tuple[int, int]]:
    """``{dim: (start, length)}``: the global coordinates of DTensor ``t`` that this rank stores.

    Computed from the device mesh and the placements, then checked against the local tensor's shape,
    so a sharding the freezer does not understand is refused rather than indexed wrongly."""
    mesh = t.device_mesh  # type: ignore[attr-defined]
    placements = tuple(t.placements)  # type: ignore[attr-defined]
    coord = mesh.get_coordinate()
    if coord is None:
        raise ConfigError(f"{name}: this rank is not in the parameter's device mesh {mesh}.")
    ranges: dict[int, tuple[int, int]] = {}
    for mesh_dim, placement in enumerate(placements):
        if placement.is_replicate():
            continue
        dim = getattr(placement, "dim", None)
        if isinstance(dim, int):
            dim %= t.ndim
        if type(placement) is not shard_type or dim is None or dim in ranges:
            raise ConfigError(
                f"{name} is placed as {placements}; neuron freezing supports DTensor parameters that are "
                "replicated or split by Shard(d), at most once per dimension (FSDP2, HSDP), "
                f"not {placement}."
            )
        ranges[dim] = _chunk_range(int(t.shape[dim]), int(mesh.size(mesh_dim)), int(coord[mesh_dim]))
    with torch.no_grad():
        local_shape = tuple(t.to_local().shape)  # type: ignore[attr-defined]
    expected = tuple(ranges[d][1] if d in ranges else int(n) for d, n in enumerate(t.shape))
    if local_shape != expected:
        raise ConfigError(
            f"{name}: this rank stores a shard of shape {local_shape}, but splitting {tuple(t.shape)} as "
            f"{placements} the way torch.chunk does gives {expected}; the freezer cannot tell which "
            "coordinates this rank holds."
        )
    return ranges


def _localize(dims: dict[int, torch.Tensor], ranges: dict[int, tuple[int, int]]) -> dict[int, torch.Tensor]:
    """Global index lists to indices into the local shard: on a sharded dimension keep the indices in
    this rank's range, shifted to it (possibly none); on the others keep them all."""
    out: dict[int, torch.Tensor] = {}
    for d, idx in dims.items():
        if d in ranges:
            start, length = ranges[d]
            idx = idx[(idx >= start) & (idx < start + length)] - start
        out[d] = idx
    return out


def max_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """The element-wise maximum of ``values`` over the default process group (``values`` without one);
    a collective: every rank must call it."""
    if not _distributed_on() or torch.distributed.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]


def _resolve_layout(model: nn.Module) -> ModelLayout:
    """:func:`model_layout`, with the fix named when ``fully_shard`` renamed the model's class."""
    try:
        return model_layout(model)
    except ArchitectureError as err:
        fsdp2 = _fsdp2_module_type()
        if fsdp2 is not None and isinstance(model, fsdp2):
            raise ConfigError(
                f"{type(model).__name__}: FSDP2's fully_shard renamed the model class, so its layout cannot "
                "be resolved; call safeneurons.models.model_layout(model) before fully_shard and pass it "
                "as NeuronFreezer(..., layout=layout)."
            ) from err
        raise


@dataclass
class _Held:
    """The held coordinates of one tensor: ``dims`` (per-dimension index lists) or their complement.

    ``dims`` are global indices. ``local_dims`` index what this rank stores: the same lists for a whole
    tensor; for an FSDP2 ``DTensor`` the indices inside this rank's shard, shifted to it. Every value
    and gradient operation works on the local tensor (:meth:`local`)."""

    name: str
    owner: nn.Module  # ``getattr(owner, attr)`` is the parameter while the model has not replaced it
    attr: str
    tensor: torch.Tensor
    dims: dict[int, torch.Tensor] = field(default_factory=dict)  # dim -> sorted unique int64 indices
    complement: bool = False  # True: hold everything except ``dims`` (train_only); False: hold ``dims``
    zero_first: bool = False  # LoRA factors: set the held part to zero when attaching
    sharded: bool = False  # an FSDP2 DTensor: operate on ``to_local()``
    shape: tuple[int, ...] = ()  # global shape when planned
    local_dims: dict[int, torch.Tensor] = field(default_factory=dict)
    snapshot: list[torch.Tensor] = field(default_factory=list)
    handle: Any = None

    def add(self, dim: int, idx: torch.Tensor) -> None:
        prev = self.dims.get(dim)
        self.dims[dim] = idx if prev is None else torch.cat([prev, idx])

    def finalize(self, shard_type: type | None) -> None:
        self.dims = {d: torch.unique(i.to(torch.long)) for d, i in sorted(self.dims.items())}
        self.shape = tuple(int(n) for n in self.tensor.shape)
        for d, i in self.dims.items():
            if d >= len(self.shape):
                raise ConfigError(
                    f"{self.name} has shape {self.shape}, which has no dimension {d}: the parameter looks "
                    "flattened (FSDP1 flat parameters or DeepSpeed ZeRO-3). Neuron freezing needs whole "
                    "parameters or FSDP2 (fully_shard) DTensor shards."
                )
            n = self.shape[d]
            if i.numel() and (int(i[0]) < 0 or int(i[-1]) >= n):
                raise ConfigError(
                    f"{self.name}: neuron index {int(i[-1])} is outside dimension {d} of size {n}."
                )
        if self.sharded and shard_type is not None:
            self.local_dims = _localize(self.dims, _shard_ranges(self.name, self.tensor, shard_type))
        else:
            self.local_dims = dict(self.dims)

    def slice_count(self) -> int:
        """Entries lying in at least one of the slices (inclusion-exclusion over dimensions), over the
        whole (global) tensor."""
        outside = 1
        for d, size in enumerate(self.tensor.shape):
            outside *= size - (int(self.dims[d].numel()) if d in self.dims else 0)
        return self.tensor.numel() - outside

    def held_count(self) -> int:
        n = self.slice_count()
        return self.tensor.numel() - n if self.complement else n

    def local(self) -> torch.Tensor:
        """What this rank stores: the local shard of a DTensor (a view of FSDP2's storage, so in-place
        writes reach the parameter), else the tensor itself. Call under ``no_grad``."""
        return self.tensor.to_local() if self.sharded else self.tensor  # type: ignore[attr-defined]

    def _idx(self, dim: int, device: torch.device) -> torch.Tensor:
        idx = self.local_dims[dim]
        if idx.device != device:
            idx = self.local_dims[dim] = idx.to(device)
        return idx

    # gradient ----------------------------------------------------------------------------
    def mask_grad(self, g: torch.Tensor) -> torch.Tensor:
        """Tensor hook of a whole parameter: a copy of ``g`` with the held coordinates zeroed."""
        if self.complement:
            out = torch.zeros_like(g)
            for d in self.local_dims:
                idx = self._idx(d, g.device)
                out.index_copy_(d, idx, g.index_select(d, idx))
            return out
        for d in self.local_dims:
            g = g.index_fill(d, self._idx(d, g.device), 0)
        return g

    @torch.no_grad()
    def mask_sharded_grad(self, param: torch.Tensor) -> None:
        """Post-accumulate-grad hook of an FSDP2 parameter. FSDP2 calls it once the reduce-scattered
        gradient shard is in ``param.grad`` (the sharded parameter is not in the autograd graph, so a
        tensor hook would never fire), i.e. before clipping and the optimizer step."""
        if param.grad is not None:
            self.zero_held_(param.grad.to_local())  # type: ignore[attr-defined]

    @torch.no_grad()
    def zero_held_(self, t: torch.Tensor) -> None:
        """Zero the held coordinates of ``t`` (a local tensor: values or gradient) in place."""
        if self.complement:
            keep = [(d, self._idx(d, t.device)) for d in self.local_dims]
            vals = [t.index_select(d, idx) for d, idx in keep]
            t.zero_()
            for (d, idx), v in zip(keep, vals):
                t.index_copy_(d, idx, v)
        else:
            for d in self.local_dims:
                t.index_fill_(d, self._idx(d, t.device), 0)

    # values ------------------------------------------------------------------------------
    @torch.no_grad()
    def zero_held(self) -> None:
        self.zero_held_(self.local())

    @torch.no_grad()
    def take_snapshot(self) -> None:
        t = self.local().detach()
        if self.complement:
            self.snapshot = [t.clone()]
        else:
            dtype = torch.promote_types(t.dtype, torch.float32)
            self.snapshot = [
                t.index_select(d, self._idx(d, t.device)).to(dtype).clone() for d in self.local_dims
            ]

    @torch.no_grad()
    def drift(self) -> float:
        """max |θ − θ_snapshot| over the held coordinates this rank stores (0.0 when bit-identical)."""
        t = self.local().detach()
        if self.complement:
            diff = (t.float() - self.snapshot[0].to(t.device).float()).abs()
            for d in self.local_dims:
                diff.index_fill_(d, self._idx(d, t.device), 0)
            return float(diff.max()) if diff.numel() else 0.0
        worst = 0.0
        for d, snap in zip(self.local_dims, self.snapshot):
            cur = t.index_select(d, self._idx(d, t.device))
            if cur.numel():
                worst = max(worst, float((cur.to(snap.dtype) - snap.to(t.device)).abs().max()))
        return worst

    @torch.no_grad()
    def restore(self) -> None:
        t = self.local()
        if self.complement:
            keep = [(d, self._idx(d, t.device)) for d in self.local_dims]
            vals = [t.index_select(d, idx) for d, idx in keep]
            t.copy_(self.snapshot[0].to(t.device))
            for (d, idx), v in zip(keep, vals):
                t.index_copy_(d, idx, v)
        else:
            for d, snap in zip(self.local_dims, self.snapshot):
                t.index_copy_(d, self._idx(d, t.device), snap.to(device=t.device, dtype=t.dtype))


class NeuronFreezer:
    """Hold the parameters of a :class:`NeuronSet` fixed (``freeze``) or train only them (``train_only``).

    ``attach()``/``detach()`` or use as a context manager. After every optimizer step call
    :meth:`step_restore` (plain PyTorch) or pass :meth:`callback` to a HF/TRL trainer. Works on plain HF
    models, on PEFT LoRA models (see the module docstring for what "frozen" means under LoRA), under DDP,
    and on FSDP2 (``fully_shard``) models when attached after wrapping: each rank then masks and restores
    the part of the held coordinates stored in its own shard.

    Args:
        model: a HF causal LM or a PEFT model wrapping one (already ``fully_shard``-ed under FSDP2).
        neurons: the set to freeze (``freeze``) or to train (``train_only``).
        mode: ``"freeze"`` (SafeNeuron: the set is fixed, everything else trains) or ``"train_only"``
            (SN-Tune / SS-Neuron expansion: only the set trains).
        layout: the model's layout, if already resolved; required for a ``fully_shard``-ed root, whose
            renamed class ``model_layout`` does not know (resolve it before wrapping).
    """

    def __init__(
        self, model: nn.Module, neurons: NeuronSet, mode: Mode = "freeze", layout: ModelLayout | None = None
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"NeuronFreezer mode {mode!r} is unknown; use one of {', '.join(MODES)}.")
        self.model = model
        self.base = unwrap_model(model)
        if _uses_fsdp1(self.model):
            raise ConfigError(
                "the model is wrapped by FSDP1 (FullyShardedDataParallel), whose parameters are flat 1-D "
                "shards without neuron rows or columns; neuron freezing needs whole parameters or FSDP2 "
                "(torch.distributed.fsdp.fully_shard) DTensor shards. Use DDP or FSDP2."
            )
        self.layout = layout or _resolve_layout(self.base)
        self.neurons = neurons
        self.mode: Mode = mode
        neurons.check_fits(self.layout.shape())
        self._held: list[_Held] = []
        self._free_ids: set[int] = set()  # train_only: LoRA partner factors that train unmasked
        self._grad_flags: list[tuple[torch.Tensor, bool]] = []
        self._attached = False
        self.steps_restored = 0
        self.last_restore_drift = 0.0
        self.max_restore_drift = 0.0
        self.has_lora = False
        self._plan()

    # planning ------------------------------------------------------------------------------
    def _plan(self) -> None:
        names = {id(p): n for n, p in self.model.named_parameters(remove_duplicate=False)}
        by_id: dict[int, _Held] = {}
        complement = self.mode == "train_only"

        def held_for(owner: nn.Module, attr: str, zero_first: bool) -> _Held:
            t = getattr(owner, attr)
            h = by_id.get(id(t))
            if h is None:
                h = by_id[id(t)] = _Held(
                    names.get(id(t), f"<tensor {tuple(t.shape)}>"),
                    owner,
                    attr,
                    t,
                    complement=complement,
                    zero_first=zero_first,
                )
            return h

        for sl in self.layout.neuron_slices(self.neurons):
            mod, ps = sl.module, sl.param
            _check_supported_wrapper(mod, f"layer {sl.layer} {ps.module}")
            if _is_lora(mod):
                self.has_lora = True
                self._plan_lora(mod, ps, sl.coords, held_for)
                owner = mod.base_layer
            else:
                owner = mod
            held_for(owner, ps.param, False).add(ps.dim, sl.coords)
        types = _dtensor_types()
        fsdp2_managed = _fsdp2_managed(self.model)
        for h in by_id.values():
            if hasattr(h.tensor, "ds_id"):
                raise ConfigError(
                    f"{h.name} is partitioned by DeepSpeed ZeRO-3; neuron freezing needs whole parameters "
                    "or FSDP2 (fully_shard) DTensor shards. Use DDP, DeepSpeed ZeRO-1/2, FSDP2 in a plain "
                    "loop, or a single process."
                )
            h.sharded = types is not None and isinstance(h.tensor, types[0])
            if id(h.tensor) in fsdp2_managed and not h.sharded:
                raise ConfigError(
                    f"{h.name} is managed by FSDP2 but unsharded right now (inside forward/backward, or "
                    "after a forward of the root module without backward); attach the NeuronFreezer while "
                    "the parameters are sharded, e.g. after calling model.reshard()."
                )
            h.finalize(types[1] if types is not None else None)
        self._held = list(by_id.values())

    def _plan_lora(self, mod: nn.Module, ps: ParamSlice, coords: torch.Tensor, held_for: Any) -> None:
        conv1d = type(mod.base_layer).__name__ == "Conv1D"
        out_dim = 1 if conv1d else 0
        output_side = ps.param == "bias" or ps.dim == out_dim
        for adapter in mod.lora_A:
            a, b = mod.lora_A[adapter], mod.lora_B[adapter]
            if output_side:
                held_for(b, "weight", True).add(0, coords)
                if getattr(b, "bias", None) is not None:
                    held_for(b, "bias", True).add(0, coords)
                self._free_ids.add(id(a.weight))
            else:
                held_for(a, "weight", True).add(1, coords)
                self._free_ids.add(id(b.weight))
                if getattr(b, "bias", None) is not None:
                    self._free_ids.add(id(b.bias))

    # lifecycle -----------------------------------------------------------------------------
    def attach(self) -> NeuronFreezer:
        if self._attached:
            raise RuntimeError("NeuronFreezer is already attached; detach it first.")
        held_ids = {id(h.tensor) for h in self._held}
        try:
            if self.mode == "train_only":
                for p in self.model.parameters():
                    if id(p) not in held_ids and id(p) not in self._free_ids and p.requires_grad:
                        self._grad_flags.append((p, True))
                        p.requires_grad_(False)
            for h in self._held:
                if h.zero_first:
                    h.zero_held()
                h.take_snapshot()
                if h.tensor.requires_grad:
                    h.handle = (
                        h.tensor.register_post_accumulate_grad_hook(h.mask_sharded_grad)
                        if h.sharded
                        else h.tensor.register_hook(h.mask_grad)
                    )
        except BaseException:
            self._release()
            raise
        self._attached = True
        logger.info(
            "NeuronFreezer(%s): %d neurons, %d tensors, %d held params, %d trainable of %d (%.4f%%).",
            self.mode,
            len(self.neurons),
            len(self._held),
            self.held_parameter_count(),
            self.trainable_parameter_count(),
            self.total_parameter_count(),
            100 * self.trainable_fraction(),
        )
        return self

    def _release(self) -> None:
        for h in self._held:
            if h.handle is not None:
                h.handle.remove()
                h.handle = None
            h.snapshot = []
        for p, flag in self._grad_flags:
            p.requires_grad_(flag)
        self._grad_flags = []

    def detach(self, restore: bool = True) -> None:
        """Remove the gradient hooks and give back ``requires_grad`` flags; with ``restore`` (default)
        first write the held coordinates back once more, so they are exact whatever ran before."""
        if not self._attached:
            return
        try:
            if restore:
                self.step_restore()
        finally:
            self._release()
            self._attached = False

    def __enter__(self) -> NeuronFreezer:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return self._attached

    # per step ------------------------------------------------------------------------------
    def _require_attached(self, what: str) -> None:
        if not self._attached:
            raise RuntimeError(
                f"NeuronFreezer.{what}() needs an attached freezer; call attach() or use `with`."
            )

    def _check_live(self, what: str) -> None:
        """Refuse to go on when the held tensors are no longer the model's parameters: a wrapper applied
        after attaching (FSDP2's ``fully_shard`` replaces them; FSDP1 and ZeRO-3 flatten them) would
        leave the live frozen slices training while the freezer restores the old tensors and reports 0."""
        for h in self._held:
            live = getattr(h.owner, h.attr, None)
            if live is h.tensor:
                if tuple(live.shape) != h.shape:
                    raise ConfigError(
                        f"NeuronFreezer.{what}(): {h.name} changed shape from {h.shape} to "
                        f"{tuple(live.shape)} after the freezer was attached (FSDP1 flat parameters or "
                        "DeepSpeed ZeRO-3), so its frozen slices are not protected. Use DDP, or FSDP2 with "
                        "the freezer attached after fully_shard (docs/scale-out.md)."
                    )
                continue
            if h.sharded and live is not None and not _is_dtensor(live):
                continue  # FSDP2 between forward and backward: the module shows the unsharded parameter
            raise ConfigError(
                f"NeuronFreezer.{what}(): {h.name} is no longer the model's parameter; it was replaced after "
                "the freezer was attached (FSDP2's fully_shard does that), so the live frozen slices are not "
                "protected. Attach the NeuronFreezer after fully_shard (docs/scale-out.md)."
            )

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the held coordinates of ``.grad`` (already done by the hooks; a cheap guard before a step)."""
        self._require_attached("mask_grads")
        self._check_live("mask_grads")
        for h in self._held:
            g = h.tensor.grad
            if g is not None:
                h.zero_held_(g.to_local() if h.sharded else g)  # type: ignore[attr-defined]

    @torch.no_grad()
    def step_restore(self) -> float:
        """Write the snapshot back into the held coordinates; returns how far the step had moved them
        (max |Δ| before the restore; > 0 shows weight decay or momentum at work). Under FSDP2 every rank
        restores its own shard and reports its own drift."""
        self._require_attached("step_restore")
        self._check_live("step_restore")
        worst = 0.0
        for h in self._held:
            worst = max(worst, h.drift())
            h.restore()
        self.steps_restored += 1
        self.last_restore_drift = worst
        self.max_restore_drift = max(self.max_restore_drift, worst)
        return worst

    def drift(self, across_ranks: bool = False) -> float:
        """max |θ − θ_0| over every held coordinate right now (must be 0.0 after :meth:`step_restore`).

        Under FSDP2 a rank sees only its own shard; ``across_ranks=True`` all-reduces the maximum over the
        default process group, a collective that every rank must call."""
        self._require_attached("drift")
        self._check_live("drift")
        worst = max((h.drift() for h in self._held), default=0.0)
        if not across_ranks:
            return worst
        with torch.no_grad():
            device = self._held[0].local().device if self._held else torch.device("cpu")
        return max_over_ranks([worst], device)[0]

    # training-time ablation ----------------------------------------------------------------
    @contextmanager
    def ablation(self) -> Iterator[None]:
        """Zero the frozen neurons in the forward pass inside the block (SafeNeuron Algorithm 1, step 3).

        Use it around ``trainer.train()`` only: the hooks are removed on exit, so evaluation and export
        see the full model."""
        if self.mode != "freeze":
            raise ConfigError(
                "ablate_frozen_during_training needs mode='freeze': in train_only mode the ablated neurons "
                "would "
                "be the ones being trained, and their gradients would be zero."
            )
        with ablate(self.base, self.neurons, self.layout):
            yield

    # reporting -----------------------------------------------------------------------------
    def total_parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    def held_parameter_count(self) -> int:
        """Coordinates the freezer keeps fixed among the tensors it touches."""
        return int(sum(h.held_count() for h in self._held))

    def trainable_parameter_count(self) -> int:
        """Coordinates an optimizer can change: trainable tensors minus held coordinates (in
        ``train_only`` mode only the target slices and the unmasked LoRA partner factors count)."""
        held = {id(h.tensor): h for h in self._held}
        n = 0
        for p in self.model.parameters():
            if not p.requires_grad:
                continue
            h = held.get(id(p))
            if h is not None:
                n += p.numel() - h.held_count()
            elif self.mode == "freeze" or id(p) in self._free_ids:
                n += p.numel()
        return int(n)

    def trainable_fraction(self) -> float:
        total = self.total_parameter_count()
        return self.trainable_parameter_count() / total if total else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "neurons": len(self.neurons),
            "neuron_set": self.neurons.name,
            "counts_per_site": self.neurons.counts_per_site(),
            "tensors": len(self._held),
            "lora": self.has_lora,
            "held_params": self.held_parameter_count(),
            "trainable_params": self.trainable_parameter_count(),
            "total_params": self.total_parameter_count(),
            "trainable_fraction": self.trainable_fraction(),
            "steps_restored": self.steps_restored,
            "max_restore_drift": self.max_restore_drift,
        }

    def held_tensors(self) -> list[tuple[str, torch.Tensor, dict[int, torch.Tensor], bool]]:
        """``(name, tensor, {dim: indices}, complement)`` for every tensor the freezer touches. Indices are
        global; under FSDP2 ``tensor`` is the DTensor parameter."""
        return [
            (h.name, h.tensor, {d: i.clone() for d, i in h.dims.items()}, h.complement) for h in self._held
        ]

    def callback(self) -> FreezeCallback:
        return FreezeCallback(self)


class FreezeCallback(TrainerCallback):
    """HF/TRL trainer hook-up of a :class:`NeuronFreezer`.

    ``transformers.Trainer`` (5.x) runs, once per optimizer step (i.e. after all gradient-accumulation
    micro-batches): ``clip_grad_norm_`` → ``on_pre_optimizer_step`` → ``optimizer.step()`` →
    ``on_optimizer_step`` → ``lr_scheduler.step()``. The tensor hooks already masked every micro-batch
    gradient before accumulation and clipping; ``on_pre_optimizer_step`` re-zeroes the held ``.grad``
    entries as a guard, and ``on_optimizer_step`` restores the held coordinates, undoing weight decay."""

    def __init__(self, freezer: NeuronFreezer) -> None:
        self.freezer = freezer

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.freezer.mask_grads()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.freezer.step_restore()


# ----------------------------------------------------------------------------------------------
# restricting training to some layers / modules (memory)
# ----------------------------------------------------------------------------------------------


class TrainableScope:
    """What :func:`restricted_trainable` switched off; :meth:`restore` (or leaving the ``with`` block)
    switches it back on."""

    def __init__(self, switched_off: list[tuple[str, torch.Tensor]], kept: list[str]) -> None:
        self._off = switched_off
        self.trainable_names = kept

    @property
    def frozen_names(self) -> list[str]:
        return [n for n, _ in self._off]

    def restore(self) -> None:
        for _, p in self._off:
            p.requires_grad_(True)
        self._off = []

    def __enter__(self) -> TrainableScope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def _module_patterns(layout: ModelLayout, modules: Iterable[str]) -> list[str]:
    out: list[str] = []
    for m in modules:
        if m in SITES and m in layout.sites:
            out.extend(sorted({ps.module for ps in layout.sites[m].params}))
        else:
            out.append(m)
    return out


def restricted_trainable(
    model: nn.Module,
    layers: Sequence[int] | None = None,
    modules: Sequence[str] | None = None,
    include_non_layer: bool = False,
    layout: ModelLayout | None = None,
) -> TrainableScope:
    """Switch ``requires_grad`` off for every parameter outside the chosen layers/modules (never on).

    This lets a 1.5B model train on 24 GiB CPU RAM: AdamW keeps two fp32 moments per trainable
    parameter, so training 4-8 layers instead of 28 cuts optimizer memory proportionally (models.md,
    "Fine-tuning memory").

    Args:
        layers: decoder-layer indices to train (default: all layers).
        modules: parts of a layer to train: site names (``mlp``, ``q``, ``k``, ``v``, ``o``; expanded to
            the modules owning those neurons, e.g. ``q`` → ``self_attn.q_proj``, or the fused QKV module)
            or module-path prefixes relative to the layer (``self_attn``, ``mlp.down_proj``,
            ``input_layernorm``). Default: the whole layer.
        include_non_layer: also keep embeddings, final norm and LM head trainable.
    """
    base = unwrap_model(model)
    layout = layout or model_layout(base)
    n = layout.n_layers
    chosen = list(range(n)) if layers is None else [int(x) for x in layers]
    bad = [x for x in chosen if not 0 <= x < n]
    if bad:
        raise ConfigError(f"train_layers: layers {bad} are out of range for a {n}-layer model (0..{n - 1}).")
    patterns = None if modules is None else _module_patterns(layout, modules)

    def matches(rel: str) -> bool:
        return patterns is None or any(rel == pat or rel.startswith(pat + ".") for pat in patterns)

    if patterns is not None:
        rel_names = [r for r, _ in layout.layers[chosen[0] if chosen else 0].named_parameters()]
        for pat in patterns:
            if not any(r == pat or r.startswith(pat + ".") for r in rel_names):
                mods = sorted({r.rsplit(".", 1)[0] for r in rel_names})
                raise ConfigError(
                    f"train_modules: {pat!r} matches no parameter of a decoder layer; "
                    f"modules are {', '.join(mods)} (or a site name: {', '.join(SITES)})."
                )
    keep: set[int] = set()
    in_layers: set[int] = set()
    for i, layer in enumerate(layout.layers):
        for rel, p in layer.named_parameters():
            in_layers.add(id(p))
            if i in chosen and matches(rel):
                keep.add(id(p))
    off: list[tuple[str, torch.Tensor]] = []
    kept: list[str] = []
    for name, p in model.named_parameters():
        outside_layers = id(p) not in in_layers
        if id(p) in keep or (outside_layers and include_non_layer):
            if p.requires_grad:
                kept.append(name)
            continue
        if p.requires_grad:
            p.requires_grad_(False)
            off.append((name, p))
    logger.info("restricted_trainable: %d tensors stay trainable, %d switched off.", len(kept), len(off))
    return TrainableScope(off, kept)


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


__all__ = [
    "MODES",
    "FreezeCallback",
    "NeuronFreezer",
    "TrainableScope",
    "parameter_count",
    "restricted_trainable",
    "unwrap_model",
]
