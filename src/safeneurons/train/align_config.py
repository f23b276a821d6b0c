"""Settings of masked refusal-signal alignment (``safeneurons.train.align``): plain data, importable without
torch, so a run config can be typed and checked before any model work."""

from __future__ import annotations

from dataclasses import dataclass

from safeneurons.errors import ConfigError
from safeneurons.train.dpo_config import BaseTrainConfig, config_field


@dataclass
class AlignConfig(BaseTrainConfig):
    """Masked refusal-signal alignment (no published setting; these defaults are this project's)."""

    learning_rate: float = config_field(1e-4, "Peak learning rate (the 0.5B/1.5B expansion SFT runs used 1e-4).")
    weight_decay: float = config_field(0.0, "Weight decay. Non-target coordinates are restored either way.")
    lr_scheduler_type: str = config_field("linear", "Learning-rate schedule.")
    per_device_train_batch_size: int = config_field(4, "Prompts per forward pass.")
    gradient_accumulation_steps: int = config_field(4, "Micro-batches per optimizer step (effective batch 16).")
    layers: list[int] | None = config_field(
        None, "Layers whose refusal direction is matched (None: every layer from a quarter of the depth on; the "
              "direction forms in the middle layers, Arditi et al. 2024).")
    anchor_weight: float = config_field(1.0, "Weight of each anchor prompt relative to an aligned one.")
    benign_margin: float | None = config_field(
        None, "None: benign prompts are held at their original projections like the other anchors. A number m: "
              "they are ceilings at m separations below their original projections (only going above counts), "
              "to push benign prompts away from refusal while the aligned rows move up.")
    floor_margin: float = config_field(
        0.0, "Floors (harmful prompts whose projections may only rise) sit this many separations above their "
             "original projections (0: held from below at the original).")
    chat_template: bool = config_field(True, "Render prompts with the tokenizer's chat template.")

    def validate(self) -> None:
        super().validate()
        if self.anchor_weight < 0:
            raise ConfigError(f"AlignConfig.anchor_weight = {self.anchor_weight!r}; expected >= 0.")
        if self.benign_margin is not None and self.benign_margin < 0:
            raise ConfigError(f"AlignConfig.benign_margin = {self.benign_margin!r}; expected >= 0 or null.")
        if self.floor_margin < 0:
            raise ConfigError(f"AlignConfig.floor_margin = {self.floor_margin!r}; expected >= 0.")


__all__ = ["AlignConfig"]
