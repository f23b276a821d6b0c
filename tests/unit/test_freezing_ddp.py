"""Frozen neuron slices stay bit-identical under DistributedDataParallel (2 gloo processes on CPU).

Tensor gradient hooks run before gradient accumulation, hence before DDP's all-reduce (whose hooks fire
after accumulation), so the reduced gradient is already zero on the frozen slices; the post-step restore
then undoes AdamW weight decay. Each rank trains on different data; the test checks the ranks agree and
the frozen slices equal the initial weights exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from gloo import gloo_group, run_ranks

from safeneurons.models import model_layout
from safeneurons.neurons import SITES, NeuronSet
from safeneurons.train.freezing import NeuronFreezer

STEPS = 3


def _neurons(layout):
    return NeuronSet.from_triples(
        layout.shape(), [(layer, s, i) for layer in range(layout.n_layers) for s in SITES for i in (1, 5)]
    )


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel as DDP

    with gloo_group(rank, world, port):
        from tiny import make_tiny_model

        model = make_tiny_model("qwen2", seed=0)
        model.train()
        fz = NeuronFreezer(model, _neurons(model_layout(model)))
        with fz:
            ddp = DDP(model)
            opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2, weight_decay=0.1)
            gen = torch.Generator().manual_seed(100 + rank)
            for _ in range(STEPS):
                ids = torch.randint(3, 300, (2, 12), generator=gen)
                ddp(input_ids=ids, labels=ids).loss.backward()
                for name, t, dims, _ in fz.held_tensors():  # all-reduced grads are zero on frozen slices
                    for d, idx in dims.items():
                        if torch.count_nonzero(t.grad.index_select(d, idx)):
                            raise AssertionError(
                                f"rank {rank}: reduced gradient of {name} is non-zero on frozen slices"
                            )
                opt.step()
                fz.step_restore()
                opt.zero_grad()
            if fz.max_restore_drift <= 0:
                raise AssertionError(
                    "weight decay did not move the frozen slices; the test would prove nothing"
                )
        save_file(
            {n: p.detach().clone().contiguous() for n, p in model.named_parameters()},
            str(Path(out_dir) / f"rank{rank}.safetensors"),
        )


def test_frozen_slices_bit_identical_under_ddp(tmp_path):
    from safetensors.torch import load_file
    from tiny import make_tiny_model

    run_ranks(_worker, 2, str(tmp_path))
    r0, r1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2))
    assert r0.keys() == r1.keys()
    for n in r0:
        assert torch.equal(r0[n], r1[n]), f"ranks disagree on {n}"
    model = make_tiny_model("qwen2", seed=0)  # the same initial weights as the workers
    layout = model_layout(model)
    names = {id(p): n for n, p in model.named_parameters()}
    for sl in layout.neuron_slices(_neurons(layout)):
        t0, dim, i = sl.tensor, sl.param.dim, sl.coords
        name = names[id(t0)]
        assert torch.equal(r0[name].index_select(dim, i), t0.detach().index_select(dim, i)), name
        assert not torch.equal(r0[name], t0.detach()), f"{name} did not train at all"
