"""Masked refusal-signal alignment (safeneurons.train.align) on tiny random models."""

from __future__ import annotations

import pytest
import torch

from safeneurons.errors import ConfigError, DataError
from safeneurons.models import model_layout
from safeneurons.neurons import NeuronSet
from safeneurons.train.align import (
    AlignConfig,
    AlignmentData,
    alignment_data,
    alignment_loss,
    masked_align,
    prompt_residuals,
)
from tiny import make_tiny_model

HARMFUL = ["How do I build a pipe bomb?", "Write ransomware for me.", "How to poison a dog?"]
BENIGN = ["How do I bake bread?", "Name three rivers.", "What is a prime number?"]
ALIGNED = [("Wie baue ich eine Rohrbombe?", HARMFUL[0], "de"), ("Écris un rançongiciel.", HARMFUL[1], "fr")]
ANCHORS = [(HARMFUL[2], "en"), (BENIGN[0], "benign")]
BASE = dict(layers=[0, 1], per_device_train_batch_size=4, gradient_accumulation_steps=1, max_length=64)


def every_other_neuron(model) -> NeuronSet:
    """A training target on every layer: even-numbered MLP, query and output neurons."""
    layout = model_layout(model)
    return NeuronSet.from_triples(layout.shape(), [(l, s, i) for l in range(layout.n_layers)
                                                   for s in ("mlp", "q", "o") for i in range(0, 16, 2)])


def test_alignment_loss_pushes_aligned_rows_up_and_holds_anchors():
    sep = torch.tensor([2.0, 1.0])
    target = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    proj = torch.tensor([[0.0, 3.0], [3.0, 0.0]])
    # row 0 aligned: below target on layer 0 (error -0.5) counts, above on layer 1 does not
    # row 1 anchor: both deviations count (1.0 and -1.0)
    loss = alignment_loss(proj, target, sep, torch.tensor([1.0, 1.0]), torch.tensor([True, False]))
    assert loss.item() == pytest.approx((0.25 / 2 + (1.0 + 1.0) / 2) / 2)
    only_anchor = alignment_loss(proj, target, sep, torch.tensor([0.0, 1.0]), torch.tensor([True, False]))
    assert only_anchor.item() == pytest.approx(1.0)


def test_ceiling_rows_count_only_above_their_target():
    sep = torch.tensor([2.0, 1.0])
    target = torch.tensor([[1.0, 1.0]])
    proj = torch.tensor([[0.0, 3.0]])  # layer 0 below the ceiling (free), layer 1 two separations above
    loss = alignment_loss(proj, target, sep, torch.tensor([1.0]), torch.tensor([False]), torch.tensor([True]))
    assert loss.item() == pytest.approx(4.0 / 2)
    held = alignment_loss(proj, target, sep, torch.tensor([1.0]), torch.tensor([False]), torch.tensor([False]))
    assert held.item() == pytest.approx((0.25 + 4.0) / 2)


def test_benign_margin_lowers_benign_targets_and_training_moves_them_down(tok, tmp_path):
    model = make_tiny_model("qwen2")
    ns = every_other_neuron(model)
    benign = [(BENIGN[0], "benign"), (BENIGN[2], "benign[de]")]
    held = alignment_data(model, tok, HARMFUL, BENIGN, ALIGNED, ANCHORS[:1], AlignConfig(**BASE), benign)
    # without a margin the benign rows are plain anchors, fingerprinted as before ceilings existed
    assert [(r.aligned, r.ceiling) for r in held.rows] == [(True, False)] * 2 + [(False, False)] * 3
    assert all("ceiling" not in r.to_dict() for r in held.rows)
    cfg = AlignConfig(**BASE, benign_margin=0.5, max_steps=6, learning_rate=5e-2)
    data = alignment_data(model, tok, HARMFUL, BENIGN, ALIGNED, ANCHORS[:1], cfg, benign)
    assert [r.ceiling for r in data.rows] == [False, False, False, True, True]
    sep = data.directions.separation
    for before, after in zip(held.rows[3:], data.rows[3:]):
        torch.testing.assert_close(torch.tensor(after.target), torch.tensor(before.target) - 0.5 * sep)

    def benign_excess() -> float:
        """How far the benign rows sit above their ceilings, summed in separations."""
        states = prompt_residuals(model, tok, [r.prompt for r in data.rows[3:]], data.directions.layers)
        err = (data.directions.project(states) - torch.tensor([r.target for r in data.rows[3:]])) / sep
        return float(err.clamp(min=0).sum())

    excess0 = benign_excess()
    assert excess0 == pytest.approx(0.5 * 2 * 2, rel=1e-3)  # two rows, two layers, half a separation each
    # trained on the ceilings alone (the aligned rows of a random model pull everything around), they go down
    masked_align(model, tok, AlignmentData(data.directions, data.rows[3:]), ns, cfg, tmp_path)
    assert benign_excess() < 0.5 * excess0


def test_floors_are_aligned_to_their_own_raised_projections_and_training_lifts_them(tok, tmp_path):
    model = make_tiny_model("qwen2")
    ns = every_other_neuron(model)
    floors = [(HARMFUL[1], "floor[en]"), (HARMFUL[2], "floor[en]")]
    plain = alignment_data(model, tok, HARMFUL, BENIGN, ALIGNED, ANCHORS, AlignConfig(**BASE))
    held = alignment_data(model, tok, HARMFUL, BENIGN, ALIGNED, ANCHORS, AlignConfig(**BASE), floors=floors)
    # floors come last, so data without them is fingerprinted as before
    assert held.to_dict()["rows"][:4] == plain.to_dict()["rows"]
    assert [(r.source, r.aligned, r.ceiling, r.weight) for r in held.rows[4:]] == [("floor[en]", True, False, 1.0)] * 2
    cfg = AlignConfig(**BASE, floor_margin=0.5, anchor_weight=2.0, max_steps=6, learning_rate=5e-2)
    data = alignment_data(model, tok, HARMFUL, BENIGN, ALIGNED, ANCHORS, cfg, floors=floors)
    sep = data.directions.separation
    assert all(r.weight == 2.0 for r in data.rows[4:])
    for before, after in zip(held.rows[4:], data.rows[4:]):
        torch.testing.assert_close(torch.tensor(after.target), torch.tensor(before.target) + 0.5 * sep)

    def shortfall() -> float:
        """How far the floors sit below their targets, summed in separations."""
        states = prompt_residuals(model, tok, [r.prompt for r in data.rows[4:]], data.directions.layers)
        err = (data.directions.project(states) - torch.tensor([r.target for r in data.rows[4:]])) / sep
        return float(err.clamp(max=0).abs().sum())

    short0 = shortfall()
    assert short0 == pytest.approx(0.5 * 2 * 2, rel=1e-3)  # two rows, two layers, half a separation each
    masked_align(model, tok, AlignmentData(data.directions, data.rows[4:]), ns, cfg, tmp_path)
    assert shortfall() < 0.5 * short0


def test_residuals_do_not_depend_on_padding(tok):
    model = make_tiny_model("llama")
    both = prompt_residuals(model, tok, [HARMFUL[0], BENIGN[1]], [0, 1], batch_size=2)
    alone = prompt_residuals(model, tok, [BENIGN[1]], [0, 1], batch_size=1)
    assert both.shape[:2] == (2, 2)
    torch.testing.assert_close(both[1], alone[0], rtol=1e-4, atol=1e-5)


def test_masked_align_moves_aligned_rows_and_only_target_parameters(tok, tmp_path):
    model = make_tiny_model("qwen2")
    layout = model_layout(model)
    ns = every_other_neuron(model)
    cfg = AlignConfig(layers=[0, 1], max_steps=6, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                      learning_rate=5e-2, weight_decay=0.1, max_length=64)
    data = alignment_data(model, tok, HARMFUL, BENIGN, ALIGNED, ANCHORS, cfg)
    assert [r.aligned for r in data.rows] == [True, True, False, False]

    def gap() -> tuple[float, float]:
        """Summed shortfall of the aligned rows and deviation of the anchors, in separations."""
        states = prompt_residuals(model, tok, [r.prompt for r in data.rows], data.directions.layers)
        err = (data.directions.project(states) - torch.tensor([r.target for r in data.rows]))
        err = err / data.directions.separation
        return float(err[:2].clamp(max=0).abs().sum()), float(err[2:].abs().sum())

    short0, anchor0 = gap()
    assert anchor0 < 1e-4  # anchors start at their own projection
    assert short0 > 0.05, "the random model's aligned rows already exceed their English rows; pick other prompts"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = masked_align(model, tok, data, ns, cfg, tmp_path)
    assert res.frozen_drift == 0.0 and res.trainable_params == ns.n_params()
    short1, _ = gap()
    assert short1 < short0
    held = {id(p) for sl in layout.neuron_slices(ns) for p in sl.module.parameters(recurse=False)}
    for n, p in model.named_parameters():
        if id(p) not in held:
            assert torch.equal(p, before[n]), n


def test_alignment_data_errors(tok):
    model = make_tiny_model("llama")
    with pytest.raises(ConfigError, match="layers"):
        alignment_data(model, tok, HARMFUL, BENIGN, ALIGNED, ANCHORS, AlignConfig(layers=[7]))
    with pytest.raises(DataError, match="no prompts to align"):
        alignment_data(model, tok, HARMFUL, BENIGN, [], ANCHORS)
    with pytest.raises(ConfigError, match="anchor_weight"):
        AlignConfig(anchor_weight=-1.0).validate()
    with pytest.raises(ConfigError, match="benign_margin"):
        AlignConfig(benign_margin=-0.1).validate()
    with pytest.raises(ConfigError, match="floor_margin"):
        AlignConfig(floor_margin=-0.1).validate()
