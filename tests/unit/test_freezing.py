"""NeuronFreezer: exact freezing (bit-identical under AdamW weight decay), train_only, LoRA, restricted
training, training-time ablation. Plain PyTorch loops on tiny random models (fast)."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, hooks_left, make_tiny_model

from safeneurons.errors import ConfigError, NeuronSetMismatchError
from safeneurons.intervene import active_interventions
from safeneurons.models import model_layout
from safeneurons.models.adapters import get_module
from safeneurons.neurons import SITES, ModelShape, NeuronSet
from safeneurons.train.freezing import NeuronFreezer, restricted_trainable

IDS = torch.tensor([[5, 17, 42, 99, 7, 3, 250, 11], [8, 9, 10, 11, 12, 13, 14, 15]])


@pytest.fixture(autouse=True)
def _one_thread():
    """2 shared cores: multi-threaded tiny matmuls thrash (1 s vs 4 ms per step)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _every_site_set(layout, idx=(1, 5), name="frozen"):
    return NeuronSet.from_triples(
        layout.shape(),
        [(layer, s, i) for layer in range(layout.n_layers) for s in SITES for i in idx],
        name=name,
    )


def expected_held(layout, ns):
    """Independent of the freezer: {id(tensor): (tensor, dim, indices)} from the layout's ParamSlices."""
    out: dict[int, tuple[torch.Tensor, int, set[int]]] = {}
    for (layer, site), idx in ns.groups().items():
        for ps in layout.sites[site].params:
            t = getattr(get_module(layout.layers[layer], ps.module), ps.param)
            entry = out.setdefault(id(t), (t, ps.dim, set()))
            assert entry[1] == ps.dim
            entry[2].update(int(i) + ps.offset for i in idx)
    return out


def train_steps(model, freezer=None, steps=3, lr=1e-2, wd=0.1, restore=True):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=wd)
    for _ in range(steps):
        model(IDS, labels=IDS).loss.backward()
        opt.step()
        if freezer is not None and restore:
            freezer.step_restore()
        opt.zero_grad()
    model.eval()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def row_equal(a, b, dim, j):
    return torch.equal(a.select(dim, j), b.select(dim, j))


def names_of(model):
    return {id(p): n for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_every_site_is_bit_identical_after_adamw_weight_decay(family):
    model = make_tiny_model(family)
    layout = model_layout(model)
    ns = _every_site_set(layout)
    before = snapshot(model)
    with NeuronFreezer(model, ns) as fz:
        train_steps(model, fz)
        assert fz.max_restore_drift > 0  # weight decay really did push the frozen slices each step
        assert fz.drift() == 0.0
    names = names_of(model)
    held = expected_held(layout, ns)
    for tid, (t, dim, idx) in held.items():
        t0 = before[names[tid]]
        for j in range(t.shape[dim]):
            same = row_equal(t, t0, dim, j)
            assert same == (j in idx), (
                f"{family} {names[tid]} dim {dim} index {j}: frozen={j in idx}, same={same}"
            )
    # every other tensor moved too
    for n, p in model.named_parameters():
        if id(p) not in held:
            assert not torch.equal(p, before[n]), n


def test_gradient_masks_alone_do_not_survive_weight_decay():
    """The AdamW trap (papers.md A.5): zero gradients, yet decoupled decay moves the frozen rows."""
    model = make_tiny_model("llama")
    ns = _every_site_set(model_layout(model))
    with NeuronFreezer(model, ns) as fz:
        model.train()
        model(IDS, labels=IDS).loss.backward()
        for name, t, dims, _ in fz.held_tensors():
            if t.grad is not None:
                for d, idx in dims.items():
                    assert torch.count_nonzero(t.grad.index_select(d, idx)) == 0, name
        torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1).step()
        assert fz.drift() > 0
        fz.step_restore()
        assert fz.drift() == 0.0


@pytest.mark.parametrize("site", SITES)
def test_mask_follows_the_neuron_set(site):
    """Changing the set changes exactly which slices stay fixed."""
    for triples in ([(0, site, 1), (1, site, 3)], [(0, site, 2), (0, site, 6), (1, site, 0)]):
        model = make_tiny_model("qwen2")
        layout = model_layout(model)
        ns = NeuronSet.from_triples(layout.shape(), triples)
        before = snapshot(model)
        with NeuronFreezer(model, ns) as fz:
            train_steps(model, fz, steps=2)
        names = names_of(model)
        for lay_params in layout.sites[site].params:
            for layer in range(layout.n_layers):
                t = getattr(get_module(layout.layers[layer], lay_params.module), lay_params.param)
                t0 = before[names[id(t)]]
                want = {i + lay_params.offset for (lyr, _, i) in triples if lyr == layer}
                fixed = {j for j in range(t.shape[lay_params.dim]) if row_equal(t, t0, lay_params.dim, j)}
                assert fixed == want, (site, layer, lay_params)


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gpt2"])
def test_train_only_changes_only_the_target_slices(family):
    model = make_tiny_model(family)
    layout = model_layout(model)
    ns = NeuronSet.from_triples(layout.shape(), [(1, "mlp", 3), (1, "q", 2), (0, "v", 1), (0, "o", 4)])
    before = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with NeuronFreezer(model, ns, mode="train_only") as fz:
        assert fz.trainable_parameter_count() == ns.n_params()
        assert fz.trainable_fraction() == pytest.approx(ns.fraction_of_parameters())
        train_steps(model, fz)
        assert fz.drift() == 0.0
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    names = names_of(model)
    held = expected_held(layout, ns)
    for n, p in model.named_parameters():
        if id(p) not in held:
            assert torch.equal(p, before[n]), f"{n} changed but owns no target neuron"
    for tid, (t, dim, idx) in held.items():
        t0 = before[names[tid]]
        for j in range(t.shape[dim]):
            assert row_equal(t, t0, dim, j) == (j not in idx), (names[tid], j)


def test_bf16_params_restore_exactly_from_fp32_snapshot():
    model = make_tiny_model("llama").to(torch.bfloat16)
    ns = _every_site_set(model_layout(model))
    before = snapshot(model)
    with NeuronFreezer(model, ns) as fz:
        train_steps(model, fz, steps=2)
        for _, t, dims, _ in fz.held_tensors():
            assert t.dtype == torch.bfloat16
    names = names_of(model)
    for tid, (t, dim, idx) in expected_held(model_layout(model), ns).items():
        i = torch.tensor(sorted(idx))
        assert torch.equal(t.index_select(dim, i), before[names[tid]].index_select(dim, i))


def test_detach_removes_hooks_and_counts():
    model = make_tiny_model("llama")
    layout = model_layout(model)
    ns = _every_site_set(layout, idx=(0,))
    fz = NeuronFreezer(model, ns)
    total = sum(p.numel() for p in model.parameters())
    assert fz.total_parameter_count() == total
    assert fz.held_parameter_count() == ns.n_params()
    assert fz.trainable_parameter_count() == total - ns.n_params()
    fz.attach()
    assert any(p._backward_hooks for p in model.parameters())
    with pytest.raises(RuntimeError, match="already attached"):
        fz.attach()
    fz.detach()
    assert not any(p._backward_hooks for p in model.parameters())
    with pytest.raises(RuntimeError, match="attach"):
        fz.step_restore()


def test_bad_inputs_raise_named_errors():
    model = make_tiny_model("llama")
    ns = _every_site_set(model_layout(model))
    with pytest.raises(ConfigError, match="mode 'freez'"):
        NeuronFreezer(model, ns, mode="freez")  # type: ignore[arg-type]
    other = NeuronSet.from_triples(ModelShape(3, {"mlp": 64}), [(2, "mlp", 1)])
    with pytest.raises(NeuronSetMismatchError, match="3-layer"):
        NeuronFreezer(model, other)


def test_training_time_ablation_is_scoped_to_the_block():
    model = make_tiny_model("llama")
    layout = model_layout(model)
    ns = NeuronSet.from_triples(layout.shape(), [(0, "mlp", 3), (0, "mlp", 9)])
    seen = []
    h = layout.module(0, "mlp").register_forward_hook(
        lambda m, a, o: seen.append(a[0][..., [3, 9]].abs().max())
    )
    try:
        with NeuronFreezer(model, ns) as fz:
            with torch.no_grad():
                base = model(IDS).logits
            with fz.ablation():
                assert active_interventions(model)
                with torch.no_grad():
                    ablated = model(IDS).logits
            with torch.no_grad():
                after = model(IDS).logits
    finally:
        h.remove()
    assert seen[0] > 0 and seen[1] == 0 and seen[2] > 0
    assert not torch.equal(base, ablated) and torch.equal(base, after)
    assert hooks_left(model) == [] and active_interventions(model) == []
    with (
        pytest.raises(ConfigError, match="train_only"),
        NeuronFreezer(model, ns, mode="train_only").ablation(),
    ):
        pass


def _lora(model, family):
    from peft import LoraConfig, get_peft_model

    targets = {
        "gpt2": ["c_attn", "c_proj", "c_fc"],
        "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    }.get(family, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(
        model,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, fan_in_fan_out=family == "gpt2"
        ),
    )


def _deltas(base_layout, ns):
    """{(layer, module path): (delta weight, dim, held indices)} for the weight slices of ``ns``."""
    out = {}
    for (layer, site), idx in ns.groups().items():
        for ps in base_layout.sites[site].params:
            if ps.param != "weight":
                continue
            mod = get_module(base_layout.layers[layer], ps.module)
            key = (layer, ps.module)
            prev = out.get(key, (None, ps.dim, set()))
            out[key] = (mod.get_delta_weight("default"), ps.dim, prev[2] | {int(i) + ps.offset for i in idx})
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gpt2"])
def test_lora_merged_delta_is_exactly_zero_on_frozen_slices(family):
    model = make_tiny_model(family)
    pm = _lora(model, family)
    base = pm.get_base_model()
    layout = model_layout(base)
    ns = _every_site_set(layout)
    base_before = {n: p.detach().clone() for n, p in base.named_parameters() if "lora_" not in n}
    with NeuronFreezer(pm, ns) as fz:
        assert fz.has_lora
        train_steps(pm, fz)
        deltas = _deltas(layout, ns)
    for (layer, path), (delta, dim, idx) in deltas.items():
        for j in range(delta.shape[dim]):
            row = delta.select(dim, j)
            if j in idx:
                assert torch.count_nonzero(row) == 0, (family, layer, path, j)
        assert torch.count_nonzero(delta) > 0, (family, layer, path)  # the adapter did learn elsewhere
    for n, p in base.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n
    merged = pm.merge_and_unload()
    merged_params = dict(merged.named_parameters())
    for t, dim, idx in expected_held(model_layout(merged), ns).values():
        name = next(n for n, p in merged_params.items() if p is t)
        i = torch.tensor(sorted(idx))
        key = (
            name
            if name in base_before
            else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert torch.equal(t.index_select(dim, i), base_before[key].index_select(dim, i)), name


def test_lora_train_only_delta_lives_on_target_slices():
    model = make_tiny_model("llama")
    pm = _lora(model, "llama")
    layout = model_layout(pm.get_base_model())
    ns = NeuronSet.from_triples(layout.shape(), [(0, "q", 2), (0, "q", 7), (1, "o", 3)])
    with NeuronFreezer(pm, ns, mode="train_only") as fz:
        train_steps(pm, fz)
    q = get_module(layout.layers[0], "self_attn.q_proj").get_delta_weight("default")
    assert set(torch.nonzero(q.abs().sum(1)).flatten().tolist()) == {2, 7}
    o = get_module(layout.layers[1], "self_attn.o_proj").get_delta_weight("default")
    assert set(torch.nonzero(o.abs().sum(0)).flatten().tolist()) == {3}
    k = get_module(layout.layers[0], "self_attn.k_proj").get_delta_weight("default")
    assert torch.count_nonzero(k) == 0


def test_restricted_trainable_layers_and_modules():
    model = make_tiny_model("llama")
    with restricted_trainable(model, layers=[1], modules=["mlp", "q"]) as scope:
        train = {n for n, p in model.named_parameters() if p.requires_grad}
        assert train == {
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.1.self_attn.q_proj.weight",
        }
        assert set(scope.trainable_names) == train
    assert all(p.requires_grad for p in model.parameters())
    with restricted_trainable(model, layers=[0], include_non_layer=True):
        train = {n for n, p in model.named_parameters() if p.requires_grad}
        assert "model.embed_tokens.weight" in train and "model.norm.weight" in train
        assert not any(n.startswith("model.layers.1.") for n in train)
    with pytest.raises(ConfigError, match="train_layers.*out of range"):
        restricted_trainable(model, layers=[5])
    with pytest.raises(ConfigError, match="train_modules: 'mlp.gate'"):
        restricted_trainable(model, modules=["mlp.gate"])
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_with_restricted_layers_counts_only_trainable():
    model = make_tiny_model("qwen2")
    layout = model_layout(model)
    ns = _every_site_set(layout, idx=(0,))
    with restricted_trainable(model, layers=[1]):
        fz = NeuronFreezer(model, ns)
        layer1 = sum(p.numel() for p in layout.layers[1].parameters())
        assert fz.trainable_parameter_count() == layer1 - ns.restrict(layers=[1]).n_params()
        before = snapshot(model)
        with fz:
            train_steps(model, fz)
        names = names_of(model)
        for tid, (t, dim, idx) in expected_held(layout, ns).items():
            i = torch.tensor(sorted(idx))
            assert torch.equal(t.index_select(dim, i), before[names[tid]].index_select(dim, i))
