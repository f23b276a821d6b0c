"""Architecture adapters: for each model family, a small table saying where the neurons live.

A *site* is one kind of neuron (``mlp``, ``q``, ``k``, ``v``, ``o``). For each site an adapter names
the module to hook (relative to a decoder layer), whether the neurons are that module's input or
output, and which parameter slices belong to one neuron (for freezing and weight surgery):

* ``mlp``: the input of the down projection, ``act(gate(x)) * up(x)`` for gated MLPs
  (SafeNeuron Eq. 3) or ``act(fc1(x))`` for plain ones; neuron j owns gate/up row j (and bias) and
  down column j.
* ``q``/``k``/``v``: the outputs of the Q/K/V projections (row j of W_q and its bias; with grouped
  query attention K/V have ``num_key_value_heads * head_dim`` neurons); ``o``: the input of the
  output projection (column j of W_o).

Fused modules (Phi-3 ``gate_up_proj``/``qkv_proj``, GPT-2 ``c_attn``) are handled with offsets;
GPT-2's ``Conv1D`` stores weights as [in, out], so the neuron axis flips. Widths are read from the
module shapes and the config, never hard-coded. Add a family with :func:`register_adapter`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from safeneurons.errors import ArchitectureError
from safeneurons.registry import Registry

IO = Literal["input", "output"]


@dataclass(frozen=True)
class ParamSlice:
    """Neuron j owns index ``offset + j`` along ``dim`` of ``module.param``."""

    module: str
    param: str
    dim: int
    offset: int = 0


@dataclass(frozen=True)
class SiteLayout:
    """Where a site's neurons are in every layer: ``io`` of ``module`` at ``[offset, offset+width)``."""

    site: str
    module: str
    io: IO
    offset: int
    width: int
    params: tuple[ParamSlice, ...]
    # Parameters whose neuron coordinate *produces* the activation (zeroed by weight surgery when
    # the activation is an output) or *consumes* it (when it is an input). One of them suffices.
    surgery: ParamSlice


@dataclass(frozen=True)
class GatedMLP:
    gate: str = "mlp.gate_proj"
    up: str = "mlp.up_proj"
    down: str = "mlp.down_proj"


@dataclass(frozen=True)
class FusedGatedMLP:
    """``gate_up`` holds the gate rows first, then the up rows (Phi-3 ``chunk(2)``)."""

    gate_up: str = "mlp.gate_up_proj"
    down: str = "mlp.down_proj"


@dataclass(frozen=True)
class PlainMLP:
    fc_in: str = "mlp.c_fc"
    fc_out: str = "mlp.c_proj"
    conv1d: bool = True


@dataclass(frozen=True)
class SplitAttention:
    q: str = "self_attn.q_proj"
    k: str = "self_attn.k_proj"
    v: str = "self_attn.v_proj"
    o: str = "self_attn.o_proj"


@dataclass(frozen=True)
class FusedAttention:
    """``qkv`` output is [q | k | v]; ``conv1d`` for GPT-2 style [in, out] weights."""

    qkv: str = "self_attn.qkv_proj"
    o: str = "self_attn.o_proj"
    conv1d: bool = False


@dataclass(frozen=True)
class ArchitectureAdapter:
    """One family's table: where the decoder layers are and how MLP and attention are laid out."""

    family: str
    layers: str
    mlp: GatedMLP | FusedGatedMLP | PlainMLP
    attention: SplitAttention | FusedAttention
    notes: str = ""
    classes: tuple[str, ...] = field(default=())


ARCHITECTURES: Registry[ArchitectureAdapter] = Registry("architecture")

_LLAMA_LIKE = dict(layers="model.layers", mlp=GatedMLP(), attention=SplitAttention())
_BUILTIN = [
    ArchitectureAdapter("llama", **_LLAMA_LIKE, classes=("LlamaForCausalLM",)),
    ArchitectureAdapter("mistral", **_LLAMA_LIKE, classes=("MistralForCausalLM",)),
    ArchitectureAdapter("qwen2", **_LLAMA_LIKE, classes=("Qwen2ForCausalLM",),
                        notes="Q/K/V projections carry biases; they are frozen and pruned with their rows."),
    ArchitectureAdapter("qwen3", **_LLAMA_LIKE, classes=("Qwen3ForCausalLM",),
                        notes="q/k neurons are q_proj/k_proj outputs before the per-head q_norm/k_norm."),
    ArchitectureAdapter("gemma", **_LLAMA_LIKE, classes=("GemmaForCausalLM",)),
    ArchitectureAdapter("gemma2", **_LLAMA_LIKE, classes=("Gemma2ForCausalLM",), notes="GeGLU (gelu-tanh) MLP."),
    ArchitectureAdapter("gemma3", **_LLAMA_LIKE, classes=("Gemma3ForCausalLM",),
                        notes="text backbone; q/k neurons are taken before q_norm/k_norm."),
    ArchitectureAdapter("phi3", layers="model.layers", mlp=FusedGatedMLP(), attention=FusedAttention(),
                        classes=("Phi3ForCausalLM",), notes="fused gate_up_proj and qkv_proj."),
    ArchitectureAdapter("gpt2", layers="transformer.h", mlp=PlainMLP(),
                        attention=FusedAttention(qkv="attn.c_attn", o="attn.c_proj", conv1d=True),
                        classes=("GPT2LMHeadModel",), notes="non-gated GELU MLP; Conv1D weights are [in, out]."),
]
for _a in _BUILTIN:
    for _cls in _a.classes:
        ARCHITECTURES.add(_cls, _a, summary=f"{_a.family} adapter")


def register_adapter(class_name: str, adapter: ArchitectureAdapter) -> None:
    """Teach safeneurons a new architecture (refuses to replace a built-in one)."""
    ARCHITECTURES.add(class_name, adapter, summary=f"{adapter.family} adapter (user)")


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    cls = type(model).__name__
    if cls in ARCHITECTURES:
        return ARCHITECTURES.get(cls)
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or "the model"
    raise ArchitectureError(
        f"Unknown architecture {cls!r} ({source}). Supported: {', '.join(ARCHITECTURES.names())}. "
        "Add one with safeneurons.models.register_adapter(class_name, ArchitectureAdapter(...)) naming the "
        "decoder-layer list and the MLP/attention module paths (docs/adapters.md)."
    )


def _get(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        if not hasattr(mod, part):
            children = [n for n, _ in mod.named_children()]
            raise ArchitectureError(
                f"module path {path!r}: {type(mod).__name__} has no child {part!r} (children: {children}). "
                "The adapter does not match this model."
            )
        mod = getattr(mod, part)
    return mod


def _out_features(m: nn.Module, conv1d: bool) -> int:
    return int(m.weight.shape[1] if conv1d else m.weight.shape[0])


def _in_features(m: nn.Module, conv1d: bool) -> int:
    return int(m.weight.shape[0] if conv1d else m.weight.shape[1])


def _rows(module: str, has_bias: bool, conv1d: bool, offset: int = 0) -> list[ParamSlice]:
    """The output-neuron slices of a linear layer: weight row (column for Conv1D) and bias entry."""
    out = [ParamSlice(module, "weight", 1 if conv1d else 0, offset)]
    if has_bias:
        out.append(ParamSlice(module, "bias", 0, offset))
    return out


def _col(module: str, conv1d: bool) -> ParamSlice:
    """The input-neuron slice of a linear layer: weight column (row for Conv1D)."""
    return ParamSlice(module, "weight", 0 if conv1d else 1, 0)


def _has_bias(m: nn.Module) -> bool:
    return getattr(m, "bias", None) is not None


def site_layouts(model: nn.Module, layer0: nn.Module, adapter: ArchitectureAdapter) -> dict[str, SiteLayout]:
    """Resolve an adapter against a concrete model (widths from shapes, heads from the config)."""
    cfg = model.config
    out: dict[str, SiteLayout] = {}
    mlp = adapter.mlp
    if isinstance(mlp, GatedMLP):
        down = _get(layer0, mlp.down)
        width = _in_features(down, False)
        params = (
            *_rows(mlp.gate, _has_bias(_get(layer0, mlp.gate)), False),
            *_rows(mlp.up, _has_bias(_get(layer0, mlp.up)), False),
            _col(mlp.down, False),
        )
        out["mlp"] = SiteLayout("mlp", mlp.down, "input", 0, width, params, _col(mlp.down, False))
    elif isinstance(mlp, FusedGatedMLP):
        down = _get(layer0, mlp.down)
        width = _in_features(down, False)
        gu_bias = _has_bias(_get(layer0, mlp.gate_up))
        params = (*_rows(mlp.gate_up, gu_bias, False, 0), *_rows(mlp.gate_up, gu_bias, False, width),
                  _col(mlp.down, False))
        out["mlp"] = SiteLayout("mlp", mlp.down, "input", 0, width, params, _col(mlp.down, False))
    else:
        fc_out = _get(layer0, mlp.fc_out)
        width = _in_features(fc_out, mlp.conv1d)
        params = (*_rows(mlp.fc_in, _has_bias(_get(layer0, mlp.fc_in)), mlp.conv1d), _col(mlp.fc_out, mlp.conv1d))
        out["mlp"] = SiteLayout("mlp", mlp.fc_out, "input", 0, width, params, _col(mlp.fc_out, mlp.conv1d))

    att = adapter.attention
    n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    if isinstance(att, SplitAttention):
        for site, path in (("q", att.q), ("k", att.k), ("v", att.v)):
            m = _get(layer0, path)
            rows = tuple(_rows(path, _has_bias(m), False))
            out[site] = SiteLayout(site, path, "output", 0, _out_features(m, False), rows, rows[0])
        o = _get(layer0, att.o)
        out["o"] = SiteLayout("o", att.o, "input", 0, _in_features(o, False), (_col(att.o, False),), _col(att.o, False))
    else:
        qkv = _get(layer0, att.qkv)
        total = _out_features(qkv, att.conv1d)
        head_dim = int(getattr(cfg, "head_dim", None) or total // (n_heads + 2 * n_kv))
        q_w, kv_w = n_heads * head_dim, n_kv * head_dim
        if q_w + 2 * kv_w != total:
            raise ArchitectureError(
                f"{att.qkv} has {total} outputs but heads say {q_w} + 2x{kv_w}; the adapter does not match."
            )
        for site, off, w in (("q", 0, q_w), ("k", q_w, kv_w), ("v", q_w + kv_w, kv_w)):
            rows = tuple(_rows(att.qkv, _has_bias(qkv), att.conv1d, off))
            out[site] = SiteLayout(site, att.qkv, "output", off, w, rows, rows[0])
        o = _get(layer0, att.o)
        out["o"] = SiteLayout("o", att.o, "input", 0, _in_features(o, att.conv1d),
                              (_col(att.o, att.conv1d),), _col(att.o, att.conv1d))
    return out


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted module path, with an error that lists the children where it fails."""
    return _get(root, path)


def param_numel_per_neuron(layer0: nn.Module, layout: SiteLayout) -> int:
    n = 0
    for ps in layout.params:
        t: torch.Tensor = getattr(_get(layer0, ps.module), ps.param)
        n += t.numel() // t.shape[ps.dim]
    return n
