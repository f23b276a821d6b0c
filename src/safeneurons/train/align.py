"""Masked alignment of the refusal signal across languages (an SS-Neuron expansion objective beyond the paper).

Refusal in chat models is read from one direction of the residual stream at the last prompt token
(Arditi et al., 2024, "Refusal in language models is mediated by a single direction"): per layer ℓ,
``r_ℓ = μ_ℓ(harmful) − μ_ℓ(benign)``, the difference of the mean residual (the decoder layer's output) at
the last templated prompt token. SS-Neurons explains the multilingual safety gap by non-English harmful
prompts not reaching the safety mechanism English prompts reach. This objective trains only the target
neurons (exact masking through :func:`~safeneurons.train.dpo.run_masked_training`, as masked SFT does) so
that each non-English harmful prompt carries at least the refusal signal of its parallel English row in the
original model, while anchor prompts (English harmful rows, benign prompts) keep their original signal::

    L = Σ_i w_i · mean_ℓ e_i,ℓ² / Σ_i w_i,   e_i,ℓ = (⟨h_θ,ℓ(x_i), r̂_ℓ⟩ − t_i,ℓ) / ‖r_ℓ‖

with ``t_i,ℓ = ⟨h_0,ℓ(x_i^en), r̂_ℓ⟩`` and ``e`` clipped at 0 from above for aligned rows (a prompt already
past its English row is left alone), ``t_i,ℓ = ⟨h_0,ℓ(x_i), r̂_ℓ⟩`` for anchors (``h_0``: the original
model). With ``benign_margin = m`` set, benign anchors become ceilings instead:
``t_i,ℓ = ⟨h_0,ℓ(x_i), r̂_ℓ⟩ − m·‖r_ℓ‖`` and ``e`` clipped at 0 from below (lower is fine), so training
pushes benign prompts m separations away from refusal rather than only holding them (held anchors did not
keep their held-out neighbours from drifting towards refusal, docs/results.md §5d–5e). Floors are the mirror:
harmful prompts with ``t_i,ℓ = ⟨h_0,ℓ(x_i), r̂_ℓ⟩ + f·‖r_ℓ‖`` (``floor_margin = f``, default 0) and ``e`` clipped
at 0 from above like aligned rows, so the ceilings cannot pull harmful prompts that resemble benign ones
towards compliance (lower counts, higher is fine; docs/results.md §5f–5g). No response text is
trained, so no refusal template is imposed and the model keeps its own style; the anchors are what stands
against over-refusal, which the SFT objective raised on every run (docs/results.md §5–5c).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from safeneurons import runformat as rf
from safeneurons.errors import ConfigError, DataError
from safeneurons.models.layout import model_layout
from safeneurons.neurons import NeuronSet
from safeneurons.stats.encode import encode, pad_batch, pad_token_id
from safeneurons.train.align_config import AlignConfig
from safeneurons.train.dpo import run_masked_training
from safeneurons.train.dpo_config import TrainResult
from safeneurons.train.freezing import unwrap_model

logger = logging.getLogger("safeneurons.train")


@dataclass(frozen=True)
class AlignRow:
    """One training prompt: its per-layer target projections, its weight, and whether it is aligned (its
    projections pushed up to the targets; a floor is an aligned row whose target is its own projection), a
    ceiling (kept at or below them) or an anchor (held at them)."""

    prompt: str
    target: tuple[float, ...]
    weight: float
    aligned: bool
    source: str = ""
    ceiling: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not self.ceiling:  # rows from before ceilings existed keep their fingerprint (``--reuse`` keys)
            del d["ceiling"]
        return d


@dataclass
class RefusalDirections:
    """Per layer: the unit refusal direction ``r̂_ℓ`` (rows of ``unit``) and the separation ``‖r_ℓ‖``."""

    layers: list[int]
    unit: torch.Tensor  # [len(layers), d_model], float32
    separation: torch.Tensor  # [len(layers)]

    def project(self, states: torch.Tensor) -> torch.Tensor:
        """``⟨h_ℓ, r̂_ℓ⟩`` for residuals ``states`` of shape [n, len(layers), d]."""
        return (states.float() * self.unit.to(states.device)).sum(-1)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "unit": self.unit.tolist(), "separation": self.separation.tolist()}


@dataclass
class AlignmentData:
    """Everything one alignment run trains on (the directions and the rows), fingerprinted by ``to_dict``."""

    directions: RefusalDirections
    rows: list[AlignRow]

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"directions": self.directions.to_dict(), "rows": [r.to_dict() for r in self.rows]}


def default_layers(n_layers: int) -> list[int]:
    return list(range(n_layers // 4, n_layers))


@contextmanager
def _capture(layers: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """The outputs (residual streams) of ``layers`` during the forward passes run inside the block."""
    seen: list[torch.Tensor | None] = [None] * len(layers)

    def hook(i: int) -> Any:
        def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
            seen[i] = out[0] if isinstance(out, tuple) else out
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def last_token_residuals(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         layers: Sequence[int]) -> torch.Tensor:
    """Residuals after each of ``layers`` at each row's last real token ([batch, len(layers), d]); rows are
    right-padded. Runs the model (not only its decoder) so data-parallel wrappers see the forward pass."""
    modules = model_layout(unwrap_model(model)).layers
    with _capture([modules[i] for i in layers]) as seen:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    last = attention_mask.sum(1) - 1
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return torch.stack([s[rows, last.to(s.device)] for s in seen if s is not None], dim=1)  # type: ignore[index]


@torch.no_grad()
def prompt_residuals(model: nn.Module, tokenizer: Any, prompts: Sequence[str], layers: Sequence[int],
                     chat_template: bool = True, batch_size: int = 8, max_length: int = 512) -> torch.Tensor:
    """:func:`last_token_residuals` of every prompt (float32, on the CPU, in the order given)."""
    if not prompts:
        raise DataError("prompt_residuals: no prompts given.")
    enc = encode(tokenizer, list(prompts), chat_template=chat_template, max_length=max_length)
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for i in range(0, len(enc), batch_size):
        ids, mask = pad_batch(enc[i : i + batch_size], pad_token_id(tokenizer))
        out.append(last_token_residuals(model, ids.to(device), mask.to(device), layers).float().cpu())
    return torch.cat(out)


def refusal_directions(harmful: torch.Tensor, benign: torch.Tensor, layers: Sequence[int]) -> RefusalDirections:
    """Difference-in-means directions from residuals of shape [n, len(layers), d]."""
    diff = harmful.float().mean(0) - benign.float().mean(0)
    sep = diff.norm(dim=-1)
    if bool((sep == 0).any()):
        raise DataError("refusal_directions: harmful and benign prompts have the same mean residual at some layer.")
    return RefusalDirections(list(layers), diff / sep.unsqueeze(-1), sep)


def alignment_data(model: nn.Module, tokenizer: Any, harmful: Sequence[str], benign: Sequence[str],
                   aligned: Sequence[tuple[str, str, str]], anchors: Sequence[tuple[str, str]],
                   config: AlignConfig | None = None,
                   benign_anchors: Sequence[tuple[str, str]] = (),
                   floors: Sequence[tuple[str, str]] = ()) -> AlignmentData:
    """Directions from ``harmful`` vs ``benign`` (English) prompts and the targets of the original ``model``.

    ``aligned``: (prompt, its English parallel, source) triples whose projections are pushed up to the
    parallel's; ``anchors``: (prompt, source) pairs held at their own projections; ``benign_anchors``: the
    same, or ceilings ``benign_margin`` separations lower when the config sets one (rows after ``anchors``);
    ``floors``: (harmful prompt, source) pairs kept at or above their own projections plus ``floor_margin``
    separations (the last rows, so data without floors fingerprints as before they existed)."""
    config = config or AlignConfig()
    layers = alignment_layers(model, config)
    if not aligned:
        raise DataError("alignment_data: no prompts to align.")

    def states(texts: Sequence[str]) -> torch.Tensor:
        return alignment_residuals(model, tokenizer, texts, layers, config)

    dirs = refusal_directions(states(harmful), states(benign), layers)
    goal = dirs.project(states([en for _, en, _ in aligned]))
    rows = [AlignRow(p, tuple(goal[i].tolist()), 1.0, True, src) for i, (p, _, src) in enumerate(aligned)]

    def held(prompts: Sequence[tuple[str, str]], shift: float | None, floor: bool = False) -> list[AlignRow]:
        """Rows at their own projections moved ``shift`` separations: held anchors (None), ceilings below
        (``floor`` false) or floors above."""
        if not prompts:
            return []
        target = dirs.project(states([p for p, _ in prompts]))
        if shift is not None:
            target = target + (shift if floor else -shift) * dirs.separation
        return [AlignRow(p, tuple(target[i].tolist()), config.anchor_weight, floor, src,
                         ceiling=shift is not None and not floor)
                for i, (p, src) in enumerate(prompts)]

    return AlignmentData(dirs, rows + held(anchors, None) + held(benign_anchors, config.benign_margin)
                         + held(floors, config.floor_margin, floor=True))


def alignment_layers(model: nn.Module, config: AlignConfig) -> list[int]:
    """The layers ``config`` matches on ``model`` (``config.layers``, or :func:`default_layers`), checked."""
    n_layers = model_layout(unwrap_model(model)).n_layers
    layers = list(config.layers) if config.layers is not None else default_layers(n_layers)
    if not layers or any(not 0 <= l < n_layers for l in layers):
        raise ConfigError(f"AlignConfig.layers = {config.layers}; give layers in [0, {n_layers}).")
    return layers


def alignment_residuals(model: nn.Module, tokenizer: Any, prompts: Sequence[str], layers: Sequence[int],
                        config: AlignConfig) -> torch.Tensor:
    """:func:`prompt_residuals` with ``config``'s prompt rendering (chat template, max length) and batch size:
    how the targets of :func:`alignment_data` are read, for any analysis that must read prompts the same way."""
    return prompt_residuals(model, tokenizer, prompts, layers, config.chat_template,
                            config.per_device_train_batch_size, config.max_length)


def alignment_loss(projection: torch.Tensor, target: torch.Tensor, separation: torch.Tensor,
                   weight: torch.Tensor, aligned: torch.Tensor, ceiling: torch.Tensor | None = None) -> torch.Tensor:
    """The module docstring's ``L`` for one batch (``projection``/``target``: [b, layers]; ``aligned`` and
    ``ceiling``: [b] booleans, neither set for a held anchor)."""
    err = (projection - target) / separation
    err = torch.where(aligned.unsqueeze(-1), err.clamp(max=0.0), err)
    if ceiling is not None:
        err = torch.where(ceiling.unsqueeze(-1), err.clamp(min=0.0), err)
    per_row = err.pow(2).mean(-1)
    return (weight * per_row).sum() / weight.sum().clamp(min=1e-12)


def masked_align(model: nn.Module, tokenizer: Any, data: AlignmentData, target: NeuronSet,
                 config: AlignConfig | None = None, output_dir: str | Path = "masked_align",
                 kind: str = "masked_align") -> TrainResult:
    """Train only ``target``'s parameters on :func:`alignment_loss` (``model`` updated in place)."""
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from safeneurons.train.freezing import NeuronFreezer

    config = config or AlignConfig()
    config.validate()
    if not target:
        raise ConfigError("masked_align: the target neuron set is empty; nothing would train.")
    if not data.rows:
        raise DataError("masked_align: no training rows.")
    dirs = data.directions
    enc = encode(tokenizer, [r.prompt for r in data.rows], chat_template=config.chat_template,
                 max_length=config.max_length)
    dataset = Dataset.from_list([{"input_ids": e.ids, "target": list(r.target), "weight": r.weight,
                                  "aligned": r.aligned, "ceiling": r.ceiling} for e, r in zip(enc, data.rows)])
    pad = pad_token_id(tokenizer)

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        from safeneurons.stats.encode import Encoded

        ids, mask = pad_batch([Encoded(b["input_ids"], len(b["input_ids"])) for b in batch], pad)
        return {"input_ids": ids, "attention_mask": mask,
                "target": torch.tensor([b["target"] for b in batch], dtype=torch.float32),
                "weight": torch.tensor([b["weight"] for b in batch], dtype=torch.float32),
                "aligned": torch.tensor([b["aligned"] for b in batch], dtype=torch.bool),
                "ceiling": torch.tensor([b["ceiling"] for b in batch], dtype=torch.bool)}

    class AlignTrainer(Trainer):
        def compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            h = last_token_residuals(model, inputs["input_ids"], inputs["attention_mask"], dirs.layers)
            proj = (h.float() * dirs.unit.to(h.device)).sum(-1)
            loss = alignment_loss(proj, inputs["target"].to(h.device), dirs.separation.to(h.device),
                                  inputs["weight"].to(h.device), inputs["aligned"].to(h.device),
                                  inputs["ceiling"].to(h.device))
            return (loss, {}) if return_outputs else loss

    kwargs = config.training_kwargs(str(Path(output_dir) / rf.TRAINER_SUBDIR))
    kwargs.pop("max_length")
    args = TrainingArguments(**kwargs, remove_unused_columns=False, **config.trainer_overrides)

    def make_trainer(train_model: nn.Module, callbacks: list[TrainerCallback], freezer: NeuronFreezer | None) -> Any:
        return AlignTrainer(model=train_model, args=args, train_dataset=dataset, data_collator=collate,
                            processing_class=tokenizer, callbacks=callbacks)

    result = run_masked_training(model, tokenizer, target, "train_only", config, output_dir, make_trainer, kind=kind,
                                 data_key=dataset._fingerprint)
    logger.info("%s: %d of %d parameters trainable (%.3f%%).", kind, result.trainable_params, result.total_params,
                100 * result.trainable_fraction)
    return result


__all__ = ["AlignConfig", "AlignRow", "AlignmentData", "RefusalDirections", "alignment_data", "alignment_layers",
           "alignment_loss", "alignment_residuals", "masked_align", "prompt_residuals", "refusal_directions"]
