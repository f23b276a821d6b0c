"""Scaling a trained update, θ₀ + s·(θ₁ − θ₀), with exact restoration."""

import copy

import pytest
import torch

from safeneurons.errors import ConfigError
from safeneurons.train.interpolate import changed_parameters, scaled_update
from tiny import make_tiny_model


def _tuned_pair():
    base = make_tiny_model("llama")
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        p = tuned.model.layers[0].self_attn.q_proj.weight
        p[:2] += torch.randn_like(p[:2])
    return base, tuned


def test_changed_parameters_lists_only_what_moved():
    base, tuned = _tuned_pair()
    delta = changed_parameters(tuned, base)
    assert list(delta) == ["model.layers.0.self_attn.q_proj.weight"]
    d = delta["model.layers.0.self_attn.q_proj.weight"]
    assert d[2:].abs().max() == 0 and d[:2].abs().min() > 0


@pytest.mark.parametrize("scale", [0.0, 0.5, -1.0, 2.0])
def test_scaled_update_interpolates_and_restores_exactly(scale):
    base, tuned = _tuned_pair()
    name = "model.layers.0.self_attn.q_proj.weight"
    w0, w1 = dict(base.named_parameters())[name].detach().clone(), dict(tuned.named_parameters())[name].detach().clone()
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    with scaled_update(tuned, base, scale) as m:
        assert m is tuned
        torch.testing.assert_close(dict(m.named_parameters())[name], w0 + scale * (w1 - w0))
        if scale == 0.0:  # exactly the base model
            assert all(torch.equal(v, base.state_dict()[k]) for k, v in m.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())


def test_scaled_update_restores_after_an_error_and_checks_its_input():
    base, tuned = _tuned_pair()
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    with pytest.raises(RuntimeError, match="boom"):
        with scaled_update(tuned, base, 0.25):
            raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    with pytest.raises(ConfigError, match="finite"):
        with scaled_update(tuned, base, float("nan")):
            pass
    with pytest.raises(ConfigError, match="not in the base model"):
        changed_parameters(tuned, make_tiny_model("llama", layers=1))
