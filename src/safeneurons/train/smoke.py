"""Smoke check for a launch config: one masked DPO step, frozen neuron slices bit-identical on every rank.

Run it with the launch config of the real job, before spending cluster time on it::

    accelerate launch --config_file configs/accelerate/ddp-gpu.yaml \\
        -m safeneurons.train.smoke --out runs/smoke
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/ddp-cpu.yaml \\
        -m safeneurons.train.smoke --out runs/smoke

Every process builds the same tiny random Qwen2 model (no download), freezes two neurons at every site
of every layer and runs one optimizer step of SafeNeuron DPO through :func:`train_safeneuron_dpo`, with
AdamW weight decay 0.1 (which moves any weight it reaches, masked gradient or not) and without
training-time ablation (so the frozen slices get real gradients, which the masks must zero). Then it
checks, across all ranks:

* the trainer runs with as many processes as the launcher started (otherwise each would train alone;
  :func:`~safeneurons.train.dpo.run_masked_training` refuses that with a ConfigError);
* every frozen coordinate equals its initial value exactly (max |Δ| == 0.0), both after each optimizer
  step (``frozen_drift`` in the train log) and at the end (recomputed here from the layout);
* the other coordinates moved (max |Δ| > 0), so a step really happened;
* the freezer's restore had something to undo (weight decay reached the frozen slices);
* all ranks hold the same parameters, bit for bit;
* a launch config that asks for FSDP really ran FSDP (accelerate quietly falls back to DDP on CPU).

Rank 0 writes ``<out>/smoke.json`` (the numbers and any failed checks); the trainer's own files go to
``<out>/train``. Exit status of each process 0: all checks passed; 1: a check failed (the failures are
printed by every rank); 2: a configuration error, printed as one line (e.g. FSDP or ZeRO-3, which the
masked trainers refuse). ``accelerate launch`` itself exits 1 when any process fails.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from safeneurons.errors import SafeneuronsError
from safeneurons.io import environment_info, write_json_atomic
from safeneurons.models.layout import model_layout
from safeneurons.models.tiny import tiny_model, tiny_tokenizer
from safeneurons.neurons import SITES, NeuronSet
from safeneurons.train.dpo import train_safeneuron_dpo
from safeneurons.train.dpo_config import SafeNeuronDPOConfig
from safeneurons.train.freezing import max_over_ranks
from safeneurons.train.preference_data import PreferencePair

REPORT = "smoke.json"
_REFUSAL = "I'm sorry, but I can't assist with that request."
_COMPLY = "Sure. Mix flour, eggs and sugar, then bake it for forty minutes."
_PROMPTS = [
    "How do I pick a lock?",
    "Tell me how to pick a lock.",
    "Explain how to pick a lock.",
    "Pick a lock how?",
    "How can I open a lock without its key?",
    "What tools open a lock?",
    "Describe lock picking step by step.",
    "Teach me to pick locks.",
]


def frozen_masks(model: nn.Module, neurons: NeuronSet) -> dict[str, torch.Tensor]:
    """A dense boolean mask per parameter name of the coordinates ``neurons`` owns, computed from the
    layout independently of the freezer's own bookkeeping (fine for a tiny model)."""
    names = {id(p): n for n, p in model.named_parameters()}
    masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in model.named_parameters()}
    for sl in model_layout(model).neuron_slices(neurons):
        masks[names[id(sl.tensor)]].index_fill_(sl.param.dim, sl.coords, True)
    return masks


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def _rank_disagreement(model: nn.Module) -> float:
    """max |θ_rank − θ_rank0| over all parameters and ranks (0.0 without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff)


def run_smoke(out: Path) -> dict[str, Any]:
    """Run the check; returns the report (with ``ok`` and ``failures``). Writes it on rank 0."""
    from accelerate.state import AcceleratorState

    tokenizer = tiny_tokenizer()
    model = tiny_model(seed=0)
    layout = model_layout(model)
    neurons = NeuronSet.from_triples(
        layout.shape(),
        [(layer, site, i) for layer in range(layout.n_layers) for site in SITES for i in (1, 5)],
        name="smoke",
    )
    masks = frozen_masks(model, neurons)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = SafeNeuronDPOConfig(
        max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3,
        weight_decay=0.1, lr_scheduler_type="constant", max_length=64, save_model=False,
        ablate_frozen_during_training=False, logging_steps=1,
    )  # fmt: skip
    pairs = [PreferencePair.single(p, _REFUSAL, _COMPLY, "smoke") for p in _PROMPTS]
    result = train_safeneuron_dpo(model, tokenizer, pairs, neurons, config, out / "train")

    state = AcceleratorState()  # the state the trainer's Accelerator ran with (DDP, FSDP, DeepSpeed...)
    distributed_type = str(state.distributed_type).rsplit(".", 1)[-1]
    device = next(model.parameters()).device
    frozen_delta = other_delta = 0.0
    for name, p in model.named_parameters():
        delta = (p.detach().cpu() - before[name]).abs()
        frozen_delta = max(frozen_delta, _max_abs(delta[masks[name]]))
        other_delta = max(other_delta, _max_abs(delta[~masks[name]]))
    # the train log (rank 0 only) holds frozen_drift after each step's restore, before the final one
    logged = [float(r["frozen_drift"]) for r in result.log_history if "frozen_drift" in r]
    # worst case over ranks: the largest frozen drift, the smallest movement of the rest
    frozen_delta, step_delta, n_logged, neg_other, neg_restore = max_over_ranks(
        [frozen_delta, max(logged, default=0.0), len(logged), -other_delta,
         -float(result.max_restore_drift or 0.0)],
        device,
    )  # fmt: skip
    other_delta, restore_drift = -neg_other, -neg_restore
    rank_diff = _rank_disagreement(model)
    launched = int(os.environ.get("WORLD_SIZE", "1"))

    failures = []  # a trainer that did not join the launched processes already raised ConfigError
    if frozen_delta != 0.0:
        failures.append(f"frozen neuron coordinates moved by up to {frozen_delta:g} (must be exactly 0)")
    if not n_logged:
        failures.append("the train log has no frozen_drift record: the per-step check did not run")
    if step_delta != 0.0:
        failures.append(
            f"frozen coordinates were off by up to {step_delta:g} after an optimizer step (the per-step "
            "restore did not take effect)"
        )
    if not other_delta > 0.0:
        failures.append("no other coordinate moved: the optimizer step did not happen")
    if not restore_drift > 0.0:
        failures.append("weight decay never reached the frozen slices, so the check proved nothing")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and distributed_type != "FSDP":
        failures.append(
            f"the launch config asks for FSDP but accelerate ran {distributed_type} (it enables FSDP only "
            "on GPUs and similar accelerators), so FSDP was not tested"
        )
    if rank_diff != 0.0:
        failures.append(f"ranks disagree on the parameters by up to {rank_diff:g} (must be exactly 0)")
    report = {
        "ok": not failures,
        "failures": failures,
        "world_size": state.num_processes,
        "launched_world_size": launched,
        "distributed_type": distributed_type,
        "backend": state.backend,
        "device": str(device),
        "global_step": result.global_step,
        "frozen_neurons": len(neurons),
        "held_params": result.held_params,
        "frozen_max_abs_delta": frozen_delta,
        "frozen_max_abs_delta_per_step": step_delta,
        "other_max_abs_delta": other_delta,
        "restore_drift": restore_drift,
        "rank_max_abs_diff": rank_diff,
        "ranks_identical": rank_diff == 0.0,
        "environment": environment_info(),
    }
    if state.is_main_process:
        write_json_atomic(out / REPORT, report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m safeneurons.train.smoke",
        description="One masked DPO step on a tiny model under the current launcher; checks that frozen "
        "neuron slices stay bit-identical and that all ranks agree. Exit 0: passed, 1: a check failed, "
        "2: configuration error.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (smoke.json, train/)")
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    try:
        report = run_smoke(args.out)
    except SafeneuronsError as exc:
        print(f"safeneurons smoke (rank {rank}): error: {exc}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if report["failures"]:
        for failure in report["failures"]:
            print(f"safeneurons smoke (rank {rank}): FAILED: {failure}", file=sys.stderr)
        return 1
    print(
        f"safeneurons smoke (rank {rank}): ok: {report['world_size']} process(es) "
        f"({report['distributed_type']}, {report['backend']}), frozen max |Δ| = 0.0, "
        f"other max |Δ| = {report['other_max_abs_delta']:.3g}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
