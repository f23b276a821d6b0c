"""Settings of masked SFT (``safeneurons.train.sft``): plain data, importable without torch, so a run config
can be typed and checked before any model work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from safeneurons.train.dpo_config import BaseTrainConfig, config_field


@dataclass
class MaskedSFTConfig(BaseTrainConfig):
    """Masked SFT settings (defaults: the "Who Bridges Safety" neuron-masked SFT; see the module
    docstring)."""

    TRAINER_CONFIG: ClassVar[tuple[str, str]] = ("trl", "SFTConfig")

    learning_rate: float = config_field(
        2e-5, "Peak learning rate (proxy: 'Who Bridges Safety' masked SFT, 2e-5)."
    )
    weight_decay: float = config_field(
        0.0, "Weight decay (proxy: 0). Non-target coordinates are restored either way."
    )
    lr_scheduler_type: str = config_field(
        "linear", "Learning-rate schedule (not stated; transformers' default)."
    )
    warmup_ratio: float = config_field(0.03, "Warm-up fraction (proxy: 0.03).")
    per_device_train_batch_size: int = config_field(1, "Examples per forward pass (proxy: 1).")
    gradient_accumulation_steps: int = config_field(
        16, "Micro-batches per optimizer step (proxy: 16, effective batch 16)."
    )
    chat_template: bool = config_field(
        True, "Format examples with the tokenizer's chat template (False: raw text)."
    )


__all__ = ["MaskedSFTConfig"]
