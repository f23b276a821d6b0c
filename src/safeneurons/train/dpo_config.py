"""Configuration and result records of the training runs (SafeNeuron DPO, plain DPO, masked SFT).

Defaults follow SafeNeuron Appendix B.3 (β = 0.1, learning rate 5e-6, weight decay 0.05, cosine
schedule, 3 epochs); what the paper does not state (batch size, maximum length, warm-up, precision) is
marked "not stated" in the help text. Every field carries its help in ``metadata["help"]`` so a CLI or
YAML schema can be generated from the dataclass without repeating it. Configs are plain data: no I/O,
randomness or device probing happens when one is built.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from safeneurons.errors import ConfigError

REFERENCE_MODES: tuple[str, ...] = ("precompute", "copy")


def config_field(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def check_trainer_overrides(trl_cls: type, overrides: Mapping[str, Any], cfg_name: str) -> None:
    """Refuse ``trainer_overrides`` keys that are not fields of the TRL config class (names changed across
    TRL versions, e.g. ``warmup_ratio`` became a float ``warmup_steps`` in transformers 5)."""
    import difflib
    from importlib.metadata import version

    names = {f.name for f in dataclasses.fields(trl_cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        close = {k: difflib.get_close_matches(k, names, n=2) for k in unknown}
        hints = "; ".join(f"{k}: did you mean {' or '.join(v)}?" for k, v in close.items() if v)
        raise ConfigError(
            f"{cfg_name}.trainer_overrides: {unknown} are not fields of {trl_cls.__name__} "
            f"(TRL {version('trl')}){'; ' + hints if hints else ''}; check the spelling against its documentation."
        )


def _checkpointing_kwarg(enabled: bool) -> dict[str, bool]:
    """transformers 5 renamed ``gradient_checkpointing`` to ``activation_checkpointing``."""
    import dataclasses as dc

    from transformers import TrainingArguments

    names = {f.name for f in dc.fields(TrainingArguments)}
    key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {key: enabled}


@dataclass
class BaseTrainConfig:
    """Settings shared by the DPO and SFT runs (mapped onto ``transformers.TrainingArguments``). Checked when
    built (:meth:`validate`), so a run config holding one fails at load, before any model work."""

    #: the TRL/transformers config class that ``trainer_overrides`` are passed to, as (module, name)
    TRAINER_CONFIG: ClassVar[tuple[str, str]] = ("transformers", "TrainingArguments")

    learning_rate: float = config_field(5e-6, "Peak learning rate (SafeNeuron B.3: 5e-6).")
    weight_decay: float = config_field(
        0.05,
        "AdamW decoupled weight decay (SafeNeuron B.3: 0.05). Frozen neuron slices "
        "are restored after every step, so decay cannot move them.",
    )
    lr_scheduler_type: str = config_field("cosine", "Learning-rate schedule (SafeNeuron B.3: cosine).")
    warmup_ratio: float = config_field(
        0.0, "Fraction of steps used for linear warm-up (not stated in the paper)."
    )
    num_train_epochs: float = config_field(3.0, "Passes over the data (SafeNeuron B.3: 3).")
    max_steps: int = config_field(-1, "Stop after this many optimizer steps (-1: run num_train_epochs).")
    per_device_train_batch_size: int = config_field(
        2, "Pairs/examples per forward pass (not stated in the paper)."
    )
    gradient_accumulation_steps: int = config_field(
        4, "Micro-batches per optimizer step (not stated in the paper)."
    )
    max_length: int = config_field(
        512, "Maximum tokens of prompt + response; longer sequences are truncated."
    )
    max_grad_norm: float = config_field(1.0, "Gradient clipping norm (0 disables clipping).")
    optim: str = config_field(
        "adamw_torch", "transformers optimizer name (AdamW assumed; the paper does not name it)."
    )
    seed: int = config_field(0, "Seed for data order and initialisation.")
    logging_steps: int = config_field(
        1, "Log loss, rewards and frozen_drift every this many optimizer steps."
    )
    bf16: bool = config_field(
        False, "bf16 autocast. Keep False on CPU: no native bf16, about 5x slower (models.md)."
    )
    gradient_checkpointing: bool = config_field(False, "Recompute activations in backward to save memory.")
    train_layers: list[int] | None = config_field(
        None, "Train only these decoder layers (None: all). Needed to fit a 1.5B model on 24 GiB CPU RAM."
    )
    train_modules: list[str] | None = config_field(
        None,
        "Train only these parts of each layer: site names (mlp, q, k, v, "
        "o) or module prefixes (self_attn, mlp.down_proj). None: all.",
    )
    train_non_layer: bool = config_field(
        False,
        "With train_layers/train_modules set, also train embeddings, final norm and LM head (they are large: "
        "an untied 151k-token LM head alone is 0.23B parameters for Qwen2.5-1.5B). Without a restriction "
        "everything trains, as in the paper.",
    )
    lora: bool = config_field(
        False,
        "Train LoRA adapters instead of full weights (the paper trains full weights). "
        "Frozen neurons then mean: the merged LoRA delta on their slices stays exactly 0.",
    )
    lora_r: int = config_field(16, "LoRA rank.")
    lora_alpha: int = config_field(32, "LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = config_field(0.0, "LoRA dropout.")
    lora_target_modules: list[str] | None = config_field(
        None,
        "Module names for LoRA (None: every projection that owns "
        "neurons: gate/up/down and q/k/v/o, or the fused ones).",
    )
    save_model: bool = config_field(
        True, "Save the trained model (safetensors) and tokenizer to <output_dir>/model."
    )
    save_steps: int = config_field(
        0,
        "Write a resumable checkpoint (weights, optimizer, scheduler and RNG state) to "
        "<output_dir>/trainer/checkpoint-<step> every this many optimizer steps; a rerun into the same "
        "output_dir with the same settings, data and neurons continues from the latest one. 0: none. The "
        "optimizer state is stored by transformers in torch's format (not safetensors).",
    )
    keep_checkpoints: bool = config_field(
        False,
        "Keep <output_dir>/trainer (mid-training checkpoints, resume key) after a finished run "
        "(False: delete it once the model is saved).",
    )
    trainer_overrides: dict[str, Any] = config_field(
        {},
        "Extra TRL config fields passed through verbatim "
        "(e.g. {'warmup_steps': 10}); unknown names are refused.",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        where = type(self).__name__
        for name in ("learning_rate", "weight_decay", "warmup_ratio", "num_train_epochs", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where}.{name} = {value!r}; expected a finite number.")
        if self.trainer_overrides:
            import importlib

            module, cls_name = self.TRAINER_CONFIG
            check_trainer_overrides(getattr(importlib.import_module(module), cls_name), self.trainer_overrides,
                                    where)
        checks = [
            ("learning_rate", self.learning_rate > 0, "a positive number"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("num_train_epochs", self.num_train_epochs > 0 or self.max_steps > 0, "> 0 (or set max_steps)"),
            ("per_device_train_batch_size", self.per_device_train_batch_size >= 1, ">= 1"),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps >= 1, ">= 1"),
            ("max_length", self.max_length >= 8, ">= 8 tokens"),
            ("warmup_ratio", 0.0 <= self.warmup_ratio < 1.0, "in [0, 1)"),
            ("logging_steps", self.logging_steps >= 1, ">= 1"),
            ("lora_r", self.lora_r >= 1, ">= 1"),
            ("max_grad_norm", self.max_grad_norm >= 0, ">= 0 (0: no clipping)"),
            ("save_steps", self.save_steps >= 0, ">= 0 (0: no checkpoints)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{where}.{name} = {getattr(self, name)!r}; expected {expected}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BaseTrainConfig:
        """Typed like every config (``safeneurons.config.from_dict``): unknown keys suggest a name, and numbers
        given as text (YAML 1.1 reads ``5e-6`` as text) become numbers."""
        from safeneurons.config import from_dict

        return from_dict(cls, d, source=cls.__name__)

    def training_kwargs(self, output_dir: str) -> dict[str, Any]:
        """The ``TrainingArguments`` fields common to every run."""
        return dict(
            output_dir=output_dir,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            lr_scheduler_type=self.lr_scheduler_type,
            warmup_steps=float(self.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            max_grad_norm=self.max_grad_norm,
            optim=self.optim,
            seed=self.seed,
            data_seed=self.seed,
            logging_steps=self.logging_steps,
            bf16=self.bf16,
            fp16=False,
            **_checkpointing_kwarg(self.gradient_checkpointing),
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            save_total_limit=2 if self.save_steps else None,
            report_to="none",
            disable_tqdm=True,
            max_length=self.max_length,
        )


@dataclass
class SafeNeuronDPOConfig(BaseTrainConfig):
    """SafeNeuron "safety neuron redundancy construction" (Eqs. 11-13, Algorithm 1) on TRL's DPOTrainer.

    With ``frozen=None`` the same config runs the plain-DPO "RLHF-Safety" baseline."""

    TRAINER_CONFIG: ClassVar[tuple[str, str]] = ("trl", "DPOConfig")

    beta: float = config_field(0.1, "DPO β: strength of the KL tie to the reference (SafeNeuron B.3: 0.1).")
    loss_type: str = config_field(
        "sigmoid", "TRL DPO loss type ('sigmoid' is the standard DPO loss of Eq. 12)."
    )
    sft_weight: float = config_field(
        0.0,
        "Weight of a negative log-likelihood term on the chosen answers added to the DPO loss (RPO, Pang et "
        "al. 2024, 'Iterative Reasoning Preference Optimization'; TRL loss type 'sft'). With on-policy chosen "
        "answers it keeps the policy near its own outputs, so DPO cannot lower both answers' likelihood. "
        "0 = the paper's loss (Eq. 12).",
    )
    ablate_frozen_during_training: bool = config_field(
        True,
        "Zero the frozen neurons in the policy's forward pass while "
        "training (Algorithm 1 step 3); removed for evaluation/export.",
    )
    ablate_in_reference: bool = config_field(
        False, "Also zero them in the reference model (the paper does not say)."
    )
    reference: str = config_field(
        "precompute",
        "How the frozen reference policy is computed: 'precompute' (reference "
        "log-probs of the starting model computed once before training; no second "
        "model in memory) or 'copy' (a deep copy of the starting model).",
        choices=REFERENCE_MODES,
    )
    chat_template: bool = config_field(
        True, "Feed pairs as chat messages (the tokenizer's chat template); False: raw text."
    )

    def validate(self) -> None:
        super().validate()
        if not self.beta > 0 or self.beta == float("inf"):
            raise ConfigError(
                f"SafeNeuronDPOConfig.beta = {self.beta!r}; expected a positive number (paper: 0.1)."
            )
        if not 0 <= self.sft_weight < float("inf") or (self.sft_weight > 0 and self.loss_type == "sft"):
            raise ConfigError(
                f"SafeNeuronDPOConfig.sft_weight = {self.sft_weight!r}; expected >= 0, and 0 when loss_type "
                "is already 'sft'."
            )
        if self.reference not in REFERENCE_MODES:
            raise ConfigError(
                f"SafeNeuronDPOConfig.reference = {self.reference!r}; use one of "
                f"{', '.join(REFERENCE_MODES)}."
            )
        if self.lora and self.reference == "copy":
            raise ConfigError(
                "SafeNeuronDPOConfig.reference = 'copy' with lora=True: with LoRA the reference is the "
                "base model itself; set reference='precompute'."
            )


@dataclass
class TrainResult:
    """What a training run produced. ``frozen_drift`` is max |Δθ| over the held coordinates at the end
    (must be 0.0); ``max_restore_drift`` is the largest move the post-step restore undid (> 0 when weight
    decay or momentum pushed the frozen slices)."""

    output_dir: str
    model_dir: str | None
    kind: str
    global_step: int
    train_loss: float | None
    log_history: list[dict[str, Any]]
    neurons: int
    held_params: int
    trainable_params: int
    total_params: int
    trainable_fraction: float
    frozen_drift: float | None
    max_restore_drift: float | None
    seconds: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["REFERENCE_MODES", "BaseTrainConfig", "SafeNeuronDPOConfig", "TrainResult", "check_trainer_overrides",
           "config_field"]
