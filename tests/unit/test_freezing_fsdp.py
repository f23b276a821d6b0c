"""Frozen neuron slices stay bit-identical under FSDP2 (``fully_shard``, 2 gloo processes on CPU).

FSDP2 replaces every parameter with a ``DTensor`` that stores a block of rows (``Shard(0)``) on each
rank. The freezer, attached after ``fully_shard``, maps the global neuron indices to the rows of each
rank's shard: a Q/K/V or gate/up row lives on one rank only, an O or down column touches every rank's
rows. Each rank trains on different data with AdamW weight decay for a few steps; the full parameters
(``full_tensor()``) must then equal the initial weights exactly on the held coordinates and differ on the
trained ones, in ``freeze`` and ``train_only`` mode. The Llama case uses an MLP width of 63, so the
gate/up rows split unevenly (32 on rank 0, 31 on rank 1). A freezer attached *before* ``fully_shard``
must refuse to continue instead of restoring tensors that no longer train (docs/scale-out.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gloo import gloo_group, run_ranks
from torch import nn

from safeneurons.models import model_layout
from safeneurons.models.layout import ModelLayout
from safeneurons.neurons import NeuronSet
from safeneurons.train.freezing import NeuronFreezer

try:
    from torch.distributed.fsdp import fully_shard
except ImportError:  # torch < 2.6
    fully_shard = None  # type: ignore[assignment]

STEPS = 3
WORLD = 2
CASES = (("qwen2", "freeze"), ("qwen2", "train_only"), ("llama", "freeze"), ("llama", "train_only"))
# Shard(0) on 2 ranks: q rows 0-15 | 16-31, k/v rows 0-7 | 8-15, gate/up rows 0-31 | 32-63 (Llama: 32-62);
# o and down columns apply to the rows of both ranks.
TRIPLES = [
    (0, "mlp", 3), (0, "mlp", 31), (0, "mlp", 32), (0, "mlp", 62),
    (0, "q", 2), (0, "q", 20), (0, "k", 1), (0, "k", 9), (0, "v", 15), (0, "o", 5), (0, "o", 30),
    (1, "mlp", 40), (1, "q", 31), (1, "v", 0), (1, "o", 17),
]  # fmt: skip


def _model(family: str) -> nn.Module:
    """The tiny random model of ``family``; Llama with an MLP width of 63 (uneven row shards)."""
    from tiny import CONFIGS, make_tiny_model
    from transformers import AutoModelForCausalLM

    if family != "llama":
        return make_tiny_model(family, seed=0)
    config = CONFIGS["llama"]()
    config.intermediate_size = 63
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _neurons(layout: ModelLayout) -> NeuronSet:
    return NeuronSet.from_triples(layout.shape(), TRIPLES)


def _shard(model: nn.Module, layout: ModelLayout, mesh: object) -> None:
    for layer in layout.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _check_grads_masked(fz: NeuronFreezer, rank: int) -> None:
    """The post-accumulate-grad hooks zeroed the held coordinates of the reduce-scattered gradients."""
    for name, t, dims, complement in fz.held_tensors():
        if t.grad is None:
            continue
        g = t.grad.full_tensor()  # a collective: every rank walks the same tensors in the same order
        if complement:
            g = g.clone()
            for d, idx in dims.items():
                g.index_fill_(d, idx, 0)
            held = [g]
        else:
            held = [g.index_select(d, idx) for d, idx in dims.items()]
        if any(torch.count_nonzero(x) for x in held):
            raise AssertionError(f"rank {rank}: the gradient of {name} is non-zero on held coordinates")


def _train(family: str, mode: str, rank: int, mesh: object) -> tuple[dict[str, torch.Tensor], dict]:
    from torch.distributed.tensor import DTensor

    model = _model(family)
    model.train()
    layout = model_layout(model)  # before fully_shard: the wrapped class has another name
    _shard(model, layout, mesh)
    fz = NeuronFreezer(model, _neurons(layout), mode=mode, layout=layout)  # type: ignore[arg-type]
    with fz:
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
        gen = torch.Generator().manual_seed(100 + rank)
        for _ in range(STEPS):
            ids = torch.randint(3, 300, (2, 12), generator=gen)
            model(input_ids=ids, labels=ids).loss.backward()
            _check_grads_masked(fz, rank)
            opt.step()
            fz.step_restore()
            opt.zero_grad()
        stats = {
            "local_max_restore_drift": fz.max_restore_drift,
            "drift_after_restore": fz.drift(across_ranks=True),
            "all_dtensor": all(isinstance(t, DTensor) for _, t, _, _ in fz.held_tensors()),
        }
    full = {n: p.full_tensor().detach().clone().contiguous() for n, p in model.named_parameters()}
    return full, stats


def _wrapping_after_attach_is_refused(mesh: object) -> dict[str, str]:
    """A freezer attached before ``fully_shard`` stops at the next step; a freezer built on the wrapped
    model without ``layout=`` names the fix."""
    from safeneurons.errors import ConfigError

    out: dict[str, str] = {}
    model = _model("qwen2")
    layout = model_layout(model)
    neurons = _neurons(layout)
    fz = NeuronFreezer(model, neurons).attach()
    try:
        _shard(model, layout, mesh)
        try:
            fz.step_restore()
        except ConfigError as err:
            out["attach_before"] = str(err)
    finally:
        fz.detach(restore=False)
    try:
        NeuronFreezer(model, neurons)
    except ConfigError as err:
        out["no_layout"] = str(err)
    return out


def _fsdp1_is_refused() -> dict[str, str]:
    """FSDP1 flattens the parameters: refused when attaching to a wrapped model, and at the next
    ``step_restore`` when the model was wrapped after attaching."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    from safeneurons.errors import ConfigError

    def wrap(model: nn.Module) -> None:
        for i, layer in enumerate(model.model.layers):
            model.model.layers[i] = FSDP(layer, use_orig_params=True, device_id=torch.device("cpu"))

    out: dict[str, str] = {}
    model = _model("qwen2")
    layout = model_layout(model)
    neurons = _neurons(layout)  # before wrapping: FSDP1 flattens the shapes the layout reads
    wrap(model)
    try:
        NeuronFreezer(model, neurons, layout=layout)
    except ConfigError as err:
        out["attach_after"] = str(err)
    model = _model("qwen2")
    layout = model_layout(model)
    fz = NeuronFreezer(model, _neurons(layout)).attach()
    try:
        wrap(model)
        fz.step_restore()
    except ConfigError as err:
        out["attach_before"] = str(err)
    finally:
        fz.detach(restore=False)
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from safetensors.torch import save_file
    from torch.distributed.device_mesh import init_device_mesh

    with gloo_group(rank, world, port):
        mesh = init_device_mesh("cpu", (world,))
        report: dict = {}
        for family, mode in CASES:
            full, report[f"{family}-{mode}"] = _train(family, mode, rank, mesh)
            if rank == 0:
                save_file(full, str(Path(out_dir) / f"{family}-{mode}.safetensors"))
        report["fsdp2_wrapped_after_attach"] = _wrapping_after_attach_is_refused(mesh)
        report["fsdp1"] = _fsdp1_is_refused()
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(report))


def _slices(model: nn.Module, layout: ModelLayout) -> dict[str, dict[int, torch.Tensor]]:
    """Parameter name -> {dim: global indices} of the neuron set (from the layout, not the freezer)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, dict[int, torch.Tensor]] = {}
    for sl in layout.neuron_slices(_neurons(layout)):
        dims = out.setdefault(names[id(sl.tensor)], {})
        prev = dims.get(sl.param.dim)
        dims[sl.param.dim] = sl.coords if prev is None else torch.cat([prev, sl.coords])
    return out


def test_chunk_range_matches_torch_chunk():
    """The rows the freezer assigns to a rank are the ones ``torch.chunk`` (DTensor ``Shard``) gives it."""
    from safeneurons.train.freezing import _chunk_range

    for size in (0, 1, 5, 16, 63, 64, 65):
        for parts in (1, 2, 3, 4, 8):
            chunks = torch.chunk(torch.arange(size), parts) if size else ()
            for index in range(parts):
                start, length = _chunk_range(size, parts, index)
                want = chunks[index].tolist() if index < len(chunks) else []
                assert list(range(start, start + length)) == want, (size, parts, index)


def test_frozen_slices_bit_identical_under_fsdp2(tmp_path):
    from safetensors.torch import load_file

    if fully_shard is None:
        pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) is not available in this torch build")
    run_ranks(_worker, WORLD, str(tmp_path))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for rep in reports:
        wrapped = rep["fsdp2_wrapped_after_attach"]
        assert "no longer the model's parameter" in wrapped.get("attach_before", ""), wrapped
        assert "layout=layout" in wrapped.get("no_layout", ""), wrapped
        assert "FSDP1" in rep["fsdp1"].get("attach_after", ""), rep["fsdp1"]
        assert "FSDP1" in rep["fsdp1"].get("attach_before", ""), rep["fsdp1"]
    for family, mode in CASES:
        case = f"{family}-{mode}"
        for rank, rep in enumerate(reports):
            stats = rep[case]
            assert stats["all_dtensor"], f"{case}: the freezer did not hold the DTensor parameters"
            # weight decay reached held coordinates on every rank's shard: the restore had work to do
            assert stats["local_max_restore_drift"] > 0, f"{case}: nothing to restore on rank {rank}"
            assert stats["drift_after_restore"] == 0.0, case
        final = load_file(str(tmp_path / f"{case}.safetensors"))
        model = _model(family)  # the same initial weights as the workers
        start = {n: p.detach() for n, p in model.named_parameters()}
        slices = _slices(model, model_layout(model))
        for name, dims in slices.items():
            t0, t = start[name], final[name]
            if mode == "freeze":
                for d, idx in dims.items():
                    assert torch.equal(t.index_select(d, idx), t0.index_select(d, idx)), f"{case}: {name}"
                assert not torch.equal(t, t0), f"{case}: {name} did not train at all"
            else:
                mixed = t.clone()  # the trained slices put back to their start: the rest must be the start
                for d, idx in dims.items():
                    mixed.index_copy_(d, idx, t0.index_select(d, idx))
                assert torch.equal(mixed, t0), f"{case}: {name} moved outside its target slices"
                trained = any(
                    not torch.equal(t.index_select(d, i), t0.index_select(d, i)) for d, i in dims.items()
                )
                assert trained, f"{case}: the target slices of {name} did not train"
        others = [n for n in start if n not in slices]
        changed = [n for n in others if not torch.equal(final[n], start[n])]
        if mode == "freeze":
            assert changed, f"{case}: no untouched parameter trained"
        else:
            assert not changed, f"{case}: parameters without target neurons trained: {changed}"
