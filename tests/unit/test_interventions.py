import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from safeneurons.intervene import Intervention, ablate, active_interventions, edited_weights, export_pruned, intervene, scale, set_to
from safeneurons.models import model_layout
from safeneurons.neurons import SITES, NeuronSet
from tiny import FAMILIES, hooks_left, make_tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def capture(model, layout, layer, site):
    lay = layout.sites[site]
    mod = layout.module(layer, site)
    box = {}
    if lay.io == "input":
        h = mod.register_forward_pre_hook(lambda m, a: box.__setitem__("x", a[0].detach().clone()))
    else:
        h = mod.register_forward_hook(lambda m, a, o: box.__setitem__("x", o.detach().clone()))
    return box, h


def _one_set(layout, site, layer=1, idx=(0, 3)):
    return NeuronSet.from_triples(layout.shape(), [(layer, site, i) for i in idx], name=f"{site}")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", SITES)
def test_zero_changes_only_targeted_coordinates(family, site):
    model = make_tiny_model(family)
    layout = model_layout(model)
    ns = _one_set(layout, site)
    lay = layout.sites[site]
    box, h = capture(model, layout, 1, site)
    try:
        with torch.no_grad():
            model(IDS)
            before = box["x"][..., lay.offset:lay.offset + lay.width]
            full_before = box["x"]
            # register the capture AFTER the intervention so it sees the edited tensor
            h.remove()
            with ablate(model, ns):
                box2, h2 = capture(model, layout, 1, site)
                try:
                    model(IDS)
                finally:
                    h2.remove()
    finally:
        h.remove()
    after = box2["x"][..., lay.offset:lay.offset + lay.width]
    idx = torch.tensor([0, 3])
    assert torch.all(after[..., idx] == 0)
    keep = torch.ones(lay.width, dtype=torch.bool)
    keep[idx] = False
    # upstream of the hook nothing changed in layer 1, so untargeted coordinates are identical
    assert torch.equal(after[..., keep], before[..., keep])
    outside = torch.ones(full_before.shape[-1], dtype=torch.bool)
    outside[lay.offset:lay.offset + lay.width] = False
    assert torch.equal(box2["x"][..., outside], full_before[..., outside])


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_surgery_equals_hooks_and_export_loads_in_stock_transformers(family, tmp_path):
    model = make_tiny_model(family)
    layout = model_layout(model)
    shape = layout.shape()
    ns = NeuronSet.from_triples(shape, [(0, "mlp", 1), (1, "mlp", 5), (1, "q", 2), (0, "k", 1), (1, "v", 3),
                                        (0, "o", 4), (0, "o", 6)], name="mix")
    sc = NeuronSet.from_triples(shape, [(1, "mlp", 2), (0, "q", 1)], name="sc")
    ivs = [Intervention(ns, "zero"), Intervention(sc, "scale", alpha=2.5)]
    with torch.no_grad():
        base = model(IDS).logits
        with intervene(model, ivs):
            hooked = model(IDS).logits
        with edited_weights(model, ivs):
            surg = model(IDS).logits
        assert torch.equal(model(IDS).logits, base)  # weights restored exactly
    assert not torch.allclose(hooked, base)
    torch.testing.assert_close(surg, hooked, rtol=1e-5, atol=1e-5)
    out = export_pruned(model, tiny_tokenizer(), ivs, tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, hooked, rtol=1e-5, atol=1e-5)
    assert not hooks_left(reloaded)


def test_scale_one_and_empty_set_are_exact_noops():
    model = make_tiny_model("llama")
    layout = model_layout(model)
    ns = _one_set(layout, "mlp")
    with torch.no_grad():
        base = model(IDS).logits
        with scale(model, ns, 1.0):
            assert torch.equal(model(IDS).logits, base)
        with ablate(model, NeuronSet.empty(layout.shape())):
            assert torch.equal(model(IDS).logits, base)


def test_set_to_value_and_composition():
    model = make_tiny_model("qwen2")
    layout = model_layout(model)
    ns = _one_set(layout, "mlp", idx=(2,))
    box, h = capture(model, layout, 1, "mlp")
    h.remove()
    with set_to(model, ns, {(1, "mlp"): np.array([0.75])}):
        box, h = capture(model, layout, 1, "mlp")
        try:
            with torch.no_grad():
                model(IDS)
        finally:
            h.remove()
    assert torch.allclose(box["x"][..., 2], torch.tensor(0.75))
    # set then scale: (0*x + v) * alpha
    with intervene(model, [Intervention(ns, "set", value=2.0), Intervention(ns, "scale", alpha=3.0)]):
        box, h = capture(model, layout, 1, "mlp")
        try:
            with torch.no_grad():
                model(IDS)
        finally:
            h.remove()
    assert torch.allclose(box["x"][..., 2], torch.tensor(6.0))


def test_hooks_removed_after_exception_and_nesting_listed():
    model = make_tiny_model("llama")
    layout = model_layout(model)
    a, b = _one_set(layout, "mlp"), _one_set(layout, "q")
    with pytest.raises(RuntimeError):
        with ablate(model, a):
            with scale(model, b, 2.0):
                assert len(active_interventions(model)) == 2
                raise RuntimeError("boom")
    assert hooks_left(model) == [] and active_interventions(model) == []


def test_bad_set_registers_nothing():
    from safeneurons.errors import NeuronSetMismatchError
    from safeneurons.neurons import ModelShape

    model = make_tiny_model("llama")
    wrong = NeuronSet.from_triples(ModelShape(5, {"mlp": 64}), [(4, "mlp", 0)], name="other")
    with pytest.raises(NeuronSetMismatchError, match="5-layer model"):
        with ablate(model, wrong):
            pass
    assert hooks_left(model) == []


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # separate projections / a fused Conv1D (offsets)
def test_site_hooks_observe_replace_and_always_remove(family):
    """The shared primitive under interventions, statistics and importance (safeneurons.models.hooks): a hook
    returning None only observes, one returning a tensor replaces the activation, and every hook is gone after
    the block, an exception or a site that does not resolve (nothing is registered then)."""
    from safeneurons.errors import ArchitectureError
    from safeneurons.models.hooks import site_hooks

    model = make_tiny_model(family)
    layout = model_layout(model)
    seen = {}
    with torch.no_grad():
        base = model(IDS).logits
        with site_hooks(layout, [(1, s, lambda x, s=s: seen.__setitem__(s, x.shape)) for s in SITES]):
            assert torch.equal(model(IDS).logits, base)
        assert set(seen) == set(SITES) and hooks_left(model) == []
        ns = _one_set(layout, "v")
        col = layout.sites["v"].offset + np.asarray([0, 3])

        def zero(x):
            x = x.clone()
            x[..., col] *= 0  # as ablate does (x * 0 keeps the sign of zero)
            return x

        with site_hooks(layout, [(1, "v", zero)]):
            replaced = model(IDS).logits
        with ablate(model, ns):
            assert torch.equal(model(IDS).logits, replaced)
        assert not torch.equal(replaced, base)
        with pytest.raises(RuntimeError, match="boom"), site_hooks(layout, [(0, "q", zero), (1, "mlp", zero)]):
            raise RuntimeError("boom")
        with pytest.raises(ArchitectureError), site_hooks(layout, [(0, "q", zero), (0, "nope", zero)]):
            pass
    assert hooks_left(model) == []
