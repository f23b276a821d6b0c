import pytest
import torch
from torch import nn

from safeneurons.errors import ArchitectureError
from safeneurons.models import model_layout
from tiny import FAMILIES, make_tiny_model


@pytest.mark.parametrize("family", FAMILIES)
def test_site_widths_and_params(family):
    model = make_tiny_model(family)
    layout = model_layout(model)
    cfg = model.config
    n_heads = layout.n_heads
    assert layout.n_layers == 2
    inter = getattr(cfg, "intermediate_size", None) or 4 * cfg.n_embd
    assert layout.sites["mlp"].width == inter
    assert layout.sites["q"].width == n_heads * layout.head_dim
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    assert layout.sites["k"].width == layout.sites["v"].width == n_kv * layout.head_dim
    assert layout.sites["o"].width == n_heads * layout.head_dim
    shape = layout.shape()
    assert shape.total_params == sum(p.numel() for p in model.parameters())
    d = getattr(cfg, "hidden_size", None) or cfg.n_embd
    gated = family != "gpt2"
    bias_mlp = 1 if family == "gpt2" else 0
    assert shape.params_per_neuron["mlp"] == (3 if gated else 2) * d + bias_mlp


@pytest.mark.parametrize("family", FAMILIES)
def test_mlp_site_is_down_proj_input(family):
    """The captured mlp activation, pushed through the down projection, reproduces the MLP output."""
    model = make_tiny_model(family)
    layout = model_layout(model)
    lay = layout.sites["mlp"]
    down = layout.module(0, "mlp")
    seen = {}
    h = down.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    try:
        model(torch.tensor([[1, 2, 3, 4]]))
    finally:
        h.remove()
    assert seen["x"].shape[-1] == lay.width


def test_unknown_architecture_names_class_and_fix():
    class FooForCausalLM(nn.Module):
        config = type("C", (), {"_name_or_path": "./my-model"})()

    with pytest.raises(ArchitectureError) as err:
        model_layout(FooForCausalLM())
    msg = str(err.value)
    assert "FooForCausalLM" in msg and "LlamaForCausalLM" in msg and "register_adapter" in msg


def test_register_adapter_refuses_builtin_override():
    from safeneurons.models import ARCHITECTURES, register_adapter

    with pytest.raises(ValueError, match="already registered"):
        register_adapter("LlamaForCausalLM", ARCHITECTURES.get("LlamaForCausalLM"))
