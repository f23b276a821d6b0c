"""Masked SFT: supervised fine-tuning of a neuron set's parameters only, on TRL's ``SFTTrainer``.

SS-Neuron expansion (arXiv 2602.01283, papers.md B.6) updates only the target neurons,
``θ_{t+1} = θ_t − η (M_mask ⊙ ∇_θ L(D_parallel))``, with the cross-entropy of the safe response given the
(multilingual) harmful query; the reported updated share is ≈0.5-0.6 % of the parameters. SN-Tune
(Zhao et al., ICLR 2025; SafeNeuron's baseline) is the same recipe on (harmful prompt, refusal) pairs with
the safety neurons as the target. Both run :func:`masked_sft`, which uses
:class:`~safeneurons.train.freezing.NeuronFreezer` in ``train_only`` mode: every other parameter gets
``requires_grad=False`` (no optimizer state), the touched tensors' gradients are masked to the target
slices, and the non-target part of the touched tensors is restored after every step (exact even with
weight decay). The loss covers the response tokens only (TRL prompt-completion format).

Hyper-parameter defaults follow the closest published neuron-masked SFT ("Who Bridges Safety", papers.md
B.6 [FOLLOW-UP]): 3 epochs, learning rate 2e-5, effective batch 16, warm-up 3 %, weight decay 0, maximum
length 512; the SS-Neurons paper itself does not state them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback

from safeneurons import runformat as rf
from safeneurons.errors import ConfigError, DataError
from safeneurons.neurons import NeuronSet
from safeneurons.train.dpo import run_masked_training
from safeneurons.train.dpo_config import TrainResult
from safeneurons.train.freezing import NeuronFreezer
from safeneurons.train.sft_config import MaskedSFTConfig

logger = logging.getLogger("safeneurons.train")

Example = tuple[str, str] | Sequence[Mapping[str, str]]
DEFAULT_REFUSAL = "I'm sorry, but I can't assist with that."
# One plain refusal per MultiJail language (written for this project), the safe responses of the parallel
# SS-Neuron expansion data when the model's own refusals are not used.
REFUSALS: dict[str, str] = {
    "en": "I'm sorry, but I can't help with that request because it could cause harm.",
    "zh": "抱歉，我无法协助处理这个请求，因为它可能造成伤害。",
    "it": "Mi dispiace, ma non posso aiutarti con questa richiesta perché potrebbe causare danni.",
    "vi": "Xin lỗi, tôi không thể hỗ trợ yêu cầu này vì nó có thể gây hại.",
    "ar": "عذرًا، لا أستطيع المساعدة في هذا الطلب لأنه قد يسبب ضررًا.",
    "ko": "죄송하지만 이 요청은 해를 끼칠 수 있어서 도와드릴 수 없습니다.",
    "th": "ขออภัย แต่ฉันไม่สามารถช่วยเหลือคำขอนี้ได้ เพราะอาจก่อให้เกิดอันตราย",
    "bn": "দুঃখিত, কিন্তু আমি এই অনুরোধে সাহায্য করতে পারব না, কারণ এটি ক্ষতির কারণ হতে পারে।",
    "sw": "Samahani, siwezi kusaidia na ombi hili kwa sababu linaweza kusababisha madhara.",
    "jv": "Nyuwun pangapunten, kula mboten saged mbiyantu panyuwunan punika amargi saged nuwuhaken bebaya.",
}


def _rows(examples: Sequence[Example], chat_template: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, ex in enumerate(examples):
        if isinstance(ex, tuple) and len(ex) == 2 and all(isinstance(x, str) for x in ex):
            prompt_msgs = [{"role": "user", "content": ex[0]}]
            response = ex[1]
        elif isinstance(ex, Sequence) and ex and all(isinstance(m, Mapping) for m in ex):
            msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in ex]
            if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
                raise DataError(
                    f"example {i}: a chat example must end with an assistant message after at least one "
                    f"user message (got roles {[m['role'] for m in msgs]})."
                )
            prompt_msgs, response = msgs[:-1], msgs[-1]["content"]
        else:
            raise DataError(
                f"example {i}: expected a (prompt, response) tuple of strings or a list of chat messages, "
                f"got {type(ex).__name__}."
            )
        if not response.strip():
            raise DataError(f"example {i}: the response is empty.")
        if chat_template:
            rows.append({"prompt": prompt_msgs, "completion": [{"role": "assistant", "content": response}]})
        else:
            from safeneurons.train.preference_data import render_transcript

            rows.append({"prompt": render_transcript(prompt_msgs), "completion": " " + response.strip()})
    if not rows:
        raise DataError("masked_sft: no training examples given.")
    return rows


def masked_sft(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    target: NeuronSet,
    config: MaskedSFTConfig | None = None,
    output_dir: str | Path = "masked_sft",
    kind: str = "masked_sft",
) -> TrainResult:
    """SFT that updates only ``target``'s parameters (loss on the response tokens only).

    ``examples`` are ``(prompt, response)`` tuples or chat-message lists ending with the assistant answer.
    Returns a :class:`TrainResult` whose ``trainable_fraction`` is the share of the model's parameters
    that could change (SS-Neurons reports 0.51-0.57 %). ``model`` is updated in place."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = config or MaskedSFTConfig()
    config.validate()
    if not target:
        raise ConfigError("masked_sft: the target neuron set is empty; nothing would train.")
    if config.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "MaskedSFTConfig.chat_template = True but the tokenizer has no chat template; set "
            "chat_template=False."
        )
    dataset = Dataset.from_list(_rows(examples, config.chat_template))
    out = Path(output_dir)
    args = SFTConfig(
        **config.training_kwargs(str(out / rf.TRAINER_SUBDIR)),
        completion_only_loss=True,
        packing=False,
        **config.trainer_overrides,
    )

    def make_trainer(
        train_model: nn.Module, callbacks: list[TrainerCallback], freezer: NeuronFreezer | None
    ) -> Any:
        return SFTTrainer(
            model=train_model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
        )

    result = run_masked_training(model, tokenizer, target, "train_only", config, out, make_trainer, kind=kind,
                                 data_key=dataset._fingerprint)
    logger.info(
        "%s: %d of %d parameters trainable (%.3f%%).",
        kind,
        result.trainable_params,
        result.total_params,
        100 * result.trainable_fraction,
    )
    return result


def sn_tune(
    model: nn.Module,
    tokenizer: Any,
    harmful_prompts: Sequence[str],
    safety_neurons: NeuronSet,
    refusals: str | Sequence[str] = DEFAULT_REFUSAL,
    config: MaskedSFTConfig | None = None,
    output_dir: str | Path = "sn_tune",
) -> TrainResult:
    """SN-Tune baseline: SFT on (harmful prompt, refusal) with only the safety neurons trainable."""
    prompts = list(harmful_prompts)
    if isinstance(refusals, str):
        answers = [refusals] * len(prompts)
    else:
        answers = list(refusals)
        if len(answers) != len(prompts):
            raise DataError(
                f"sn_tune: {len(answers)} refusals for {len(prompts)} prompts; give one per prompt or a "
                "single string."
            )
    return masked_sft(
        model, tokenizer, list(zip(prompts, answers)), safety_neurons, config, output_dir, kind="sn_tune"
    )


__all__ = ["DEFAULT_REFUSAL", "REFUSALS", "MaskedSFTConfig", "masked_sft", "sn_tune"]
