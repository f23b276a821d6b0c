"""SafeNeuron DPO on TRL's ``DPOTrainer``, the plain-DPO baseline, and iterative rounds.

SafeNeuron (arXiv 2602.12158) Eq. 11: ``min_{θ_r} L_DPO(θ_s, θ_r) s.t. θ_s = const`` with the standard
DPO loss (Eq. 12)

    L_DPO = −E log σ( β log π_θ(y⁺|x)/π_ref(y⁺|x) − β log π_θ(y⁻|x)/π_ref(y⁻|x) ).

θ_s (the safety neurons' parameters) is held exactly by :class:`~safeneurons.train.freezing.NeuronFreezer`
(gradient masks + post-step restore); by default the safety neurons are also zeroed in the policy's
forward pass while training (Algorithm 1 step 3), which forces the other parameters to build a
redundant safety pathway. ``frozen=None`` gives the "RLHF-Safety" baseline: the same DPO on the same data
with nothing frozen.

Iterative regime (Eq. 13, Table 2): ``θ_s^{(t+1)} = θ_s^{(t)} ∪ SN(model_t)``; each round re-identifies
on the current model, freezes the union and trains again from the current weights, with the current
model as the reference (:func:`iterate_rounds`).

The reference policy: TRL would otherwise reload the reference from ``config._name_or_path`` (wrong for a
model whose training forward is ablated, papers.md/peers.md "reference model trap"). Here it is either
precomputed from the starting model before training (``reference="precompute"``, no second model in
memory) or a deep copy (``"copy"``); ``ablate_in_reference`` decides whether the frozen neurons are zeroed
in it too.

Every run writes into ``output_dir``: ``train_log.json`` (loss, reward margins and ``frozen_drift`` at each
logging step, rewritten atomically), ``frozen.json`` (the neuron set), ``result.json``, and ``model/``
(safetensors + tokenizer).
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from safeneurons import runformat as rf
from safeneurons.errors import ConfigError, DataError
from safeneurons.intervene.hooks import ablate, fingerprint
from safeneurons.io import environment_info, read_json, sha256_text, write_json_atomic
from safeneurons.models.layout import model_layout
from safeneurons.neurons import NeuronSet
from safeneurons.train.dpo_config import (
    BaseTrainConfig,
    SafeNeuronDPOConfig,
    TrainResult,
    check_trainer_overrides,
)
from safeneurons.train.freezing import FreezeCallback, NeuronFreezer, restricted_trainable, unwrap_model
from safeneurons.train.preference_data import PreferencePair, to_trl_rows

logger = logging.getLogger("safeneurons.train")

MODEL_SUBDIR = rf.MODEL_SUBDIR


class TrainLogCallback(TrainerCallback):
    """Writes every trainer log record (loss, ``rewards/margins``, …) plus ``frozen_drift`` (max |Δθ| over
    the held coordinates, must be 0) and ``restore_drift`` (how far the last step had moved them before
    the restore) to ``path`` as JSON, atomically, on the main process."""

    def __init__(self, path: Path, freezer: NeuronFreezer | None = None, resume_step: int | None = None) -> None:
        """``resume_step``: training resumes from a checkpoint at this step; the records logged up to it are
        kept from ``path`` (those after it are logged again)."""
        self.path = Path(path)
        self.freezer = freezer
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            self.records = [r for r in read_json(self.path).get("records", []) if r.get("step", 0) <= resume_step]

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if not getattr(state, "is_world_process_zero", True):
            return
        rec: dict[str, Any] = {"step": int(state.global_step), "epoch": state.epoch}
        rec.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in (logs or {}).items()})
        if self.freezer is not None and self.freezer.attached:
            rec["frozen_drift"] = self.freezer.drift()
            rec["restore_drift"] = self.freezer.last_restore_drift
        self.records.append(rec)
        write_json_atomic(self.path, {"records": self.records})


def _default_lora_targets(model: nn.Module) -> list[str]:
    layout = model_layout(unwrap_model(model))
    return sorted({ps.module.rsplit(".", 1)[-1] for lay in layout.sites.values() for ps in lay.params})


def _wrap_lora(model: nn.Module, config: BaseTrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = list(config.lora_target_modules or _default_lora_targets(model))
    fan_in_fan_out = any(
        type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets
    )
    lcfg = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lcfg)


@contextmanager
def _restore_forward(model: nn.Module) -> Iterator[None]:
    """TRL patches ``model.forward`` with a fused-LM-head wrapper (an instance attribute); take it off
    afterwards so the model is a plain HF model again (and rounds do not stack wrappers)."""
    base = unwrap_model(model)
    had = "forward" in base.__dict__
    try:
        yield
    finally:
        if not had and "forward" in base.__dict__:
            del base.__dict__["forward"]


def _save_model(model: nn.Module, tokenizer: Any, path: Path) -> None:
    if getattr(model, "_safeneurons_active", None):
        raise RuntimeError(
            f"refusing to export a model with active interventions {model._safeneurons_active}."
        )
    # a fresh folder swapped in at the end: never writes into files that may be hard links into another run
    # (--reuse links trained models) and never leaves a half-written model under ``path``
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(str(partial), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(partial))
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)


MakeTrainer = Callable[[nn.Module, list[TrainerCallback], NeuronFreezer | None], Any]


def check_launch(trainer: Any, freezer: NeuronFreezer | None) -> None:
    """Refuse launch modes in which masked training would silently go wrong (docs/scale-out.md).

    * A multi-process launch that the trainer did not join: under ``torchrun``/``accelerate launch`` on
      a machine without a GPU, accelerate runs each rank alone unless told to use the CPU, so every rank
      would train its own copy and all would write the same output directory.
    * Neuron freezing under FSDP or DeepSpeed ZeRO-3 in a trainer: the trainer shards the parameters
      after the freezer is attached (FSDP1 and ZeRO-3 flatten them; FSDP2 replaces them with new DTensor
      parameters, and the freezer then raises at the first step). The freezer itself supports FSDP2 when
      attached after ``fully_shard`` in a plain PyTorch loop (tests/unit/test_freezing_fsdp.py);
      re-attaching it inside the trainer and saving the sharded model from ``run_masked_training`` are not
      implemented, and accelerate cannot run FSDP on CPU to test them."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    joined = int(trainer.args.world_size)
    if launched > 1 and joined != launched:
        raise ConfigError(
            f"the launcher started {launched} processes (WORLD_SIZE) but the trainer runs as {joined}: "
            "accelerate found no GPU and was not told to use the CPU. For DDP on CPU set "
            "ACCELERATE_USE_CPU=true (or trainer_overrides={'use_cpu': True}); see docs/scale-out.md."
        )
    if freezer is None:
        return
    zero3 = trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    if trainer.is_fsdp_enabled:
        plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
        version = getattr(plugin, "fsdp_version", None)
        mode = f"FSDP{version}" if version else "FSDP"
        raise ConfigError(
            f"neuron freezing under {mode} is not supported in the masked trainers: the trainer shards the "
            "parameters after the freezer is attached, so frozen slices would not stay fixed. Launch with "
            "DDP (configs/accelerate/ddp-gpu.yaml) or DeepSpeed ZeRO-1/2. The NeuronFreezer itself "
            "supports FSDP2 (fully_shard) in a plain PyTorch loop when attached after wrapping; see "
            "docs/scale-out.md."
        )
    if zero3:
        raise ConfigError(
            "neuron freezing under DeepSpeed ZeRO-3 is not supported: it partitions the parameters the "
            "freezer holds, so frozen slices would not stay fixed. Launch with DDP "
            "(configs/accelerate/ddp-gpu.yaml) or DeepSpeed ZeRO-1/2; see docs/scale-out.md."
        )
    if trainer.is_deepspeed_enabled:
        logger.warning(
            "neuron freezing under DeepSpeed ZeRO-%s is untested; run `python -m safeneurons.train.smoke` "
            "under the same launch config first (docs/scale-out.md).",
            trainer.accelerator.state.deepspeed_plugin.zero_stage,
        )


def run_masked_training(
    model: nn.Module,
    tokenizer: Any,
    neurons: NeuronSet | None,
    mode: str,
    config: BaseTrainConfig,
    output_dir: str | Path,
    make_trainer: MakeTrainer,
    kind: str,
    ablate_during_training: bool = False,
    data_key: str = "",
) -> TrainResult:
    """Shared driver of every masked run: restrict trainable layers, wrap LoRA, attach the freezer, build
    the trainer (``make_trainer(train_model, callbacks, freezer)``), train (with training-time ablation if
    asked), then detach everything, merge LoRA into ``model`` and save. ``model`` is updated in place.

    With ``config.save_steps`` the trainer checkpoints into ``output_dir/trainer`` and a rerun continues
    from the latest complete checkpoint, provided ``data_key`` (a fingerprint of the training data), the
    neurons, ``mode`` and the training settings are those the checkpoints were written with."""
    config.validate()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if neurons is not None:
        neurons.check_fits(model_layout(unwrap_model(model)).shape())
    resume = (_resume_checkpoint(out / rf.TRAINER_SUBDIR, _resume_key(config, neurons, mode, kind, data_key))
              if config.save_steps else None)
    t0 = time.perf_counter()
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    train_model = model
    freezer: NeuronFreezer | None = None
    drift: float | None = None
    summary: dict[str, Any] = {"held_params": 0, "max_restore_drift": None}
    succeeded = False
    try:
        with ExitStack() as stack:
            stack.enter_context(_restore_forward(model))
            if config.train_layers is not None or config.train_modules is not None:
                stack.enter_context(
                    restricted_trainable(
                        model,
                        config.train_layers,
                        config.train_modules,
                        include_non_layer=config.train_non_layer,
                    )
                )
            if config.lora:
                train_model = _wrap_lora(model, config)
            if neurons is not None:
                freezer = stack.enter_context(NeuronFreezer(train_model, neurons, mode))  # type: ignore[arg-type]
            log_cb = TrainLogCallback(out / rf.TRAIN_LOG, freezer, resume_step=resume[1] if resume else None)
            callbacks: list[TrainerCallback] = [log_cb]
            if freezer is not None:
                callbacks.insert(0, FreezeCallback(freezer))
            summary["trainable_params"] = (
                freezer.trainable_parameter_count()
                if freezer is not None
                else sum(p.numel() for p in train_model.parameters() if p.requires_grad)
            )
            trainer = make_trainer(train_model, callbacks, freezer)
            check_launch(trainer, freezer)
            is_main = bool(trainer.is_world_process_zero())
            ablation = (
                freezer.ablation() if (freezer is not None and ablate_during_training) else nullcontext()
            )
            with ablation:
                train_out = trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
            if freezer is not None:
                freezer.step_restore()
                drift = freezer.drift()
                summary.update(
                    held_params=freezer.held_parameter_count(), max_restore_drift=freezer.max_restore_drift
                )
            del trainer
        succeeded = True
    finally:
        if (
            train_model is not model
        ):  # LoRA: merge on success (exact on frozen slices: W + 0.0 == W), else drop
            unwrapped = train_model.merge_and_unload() if succeeded else train_model.unload()
            if unwrapped is not model:  # pragma: no cover - PEFT wraps in place
                raise RuntimeError(
                    "PEFT returned a new model object on unload; cannot update the model in place."
                )
        for p, flag in grad_flags:  # get_peft_model switched the base weights off
            p.requires_grad_(flag)
    model.eval()
    model_dir = None
    if config.save_model and is_main:
        model_dir = out / MODEL_SUBDIR
        _save_model(model, tokenizer, model_dir)
    if neurons is not None and is_main:
        neurons.save(out / (rf.FROZEN if mode == "freeze" else rf.TARGET))
    total = int(sum(p.numel() for p in model.parameters()))
    result = TrainResult(
        output_dir=str(out),
        model_dir=str(model_dir) if model_dir else None,
        kind=kind,
        global_step=int(train_out.global_step),
        train_loss=float(train_out.training_loss),
        log_history=log_cb.records,
        neurons=len(neurons) if neurons is not None else 0,
        held_params=int(summary["held_params"]),
        trainable_params=int(summary["trainable_params"]),
        total_params=total,
        trainable_fraction=summary["trainable_params"] / total if total else 0.0,
        frozen_drift=drift,
        max_restore_drift=summary["max_restore_drift"],
        seconds=round(time.perf_counter() - t0, 3),
        config=config.to_dict(),
    )
    if is_main:
        write_json_atomic(out / rf.TRAIN_RESULT, {**result.to_dict(), "environment": environment_info()})
    if not config.keep_checkpoints and is_main:  # saved: checkpoints, resume key and TRL's model card go
        shutil.rmtree(out / rf.TRAINER_SUBDIR, ignore_errors=True)
    if drift:
        raise RuntimeError(
            f"{kind}: held neuron coordinates drifted by {drift:g} (expected exactly 0); "
            "this is a bug in the freezer, please report it."
        )
    logger.info(
        "%s finished: %d steps, loss %.4f, frozen_drift=%s, %.1fs.",
        kind,
        result.global_step,
        result.train_loss or float("nan"),
        drift,
        result.seconds,
    )
    return result


RESUME_KEY_FILE = "resume_key.json"
_CHECKPOINT_FIELDS = ("save_steps", "keep_checkpoints", "save_model")


def _resume_key(config: BaseTrainConfig, neurons: NeuronSet | None, mode: str, kind: str, data_key: str) -> str:
    """What a mid-training checkpoint is valid for: the settings (less the checkpointing ones), the data,
    the held or trained neurons and the masking mode."""
    settings = {k: v for k, v in config.to_dict().items() if k not in _CHECKPOINT_FIELDS}
    return sha256_text(repr((sorted(settings.items()), fingerprint(neurons), mode, kind, data_key)))


def _resume_checkpoint(trainer_dir: Path, key: str) -> tuple[Path, int] | None:
    """The latest complete checkpoint under ``trainer_dir`` (``trainer_state.json`` is the last file
    transformers writes into one) and its step; None when there is none. Records ``key`` for a fresh run
    and refuses checkpoints written under another key."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    checkpoints = sorted(
        (int(p.name.rsplit("-", 1)[1]), p)
        for p in trainer_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()
    )
    complete = [(step, p) for step, p in checkpoints if (p / "trainer_state.json").is_file()]
    key_file = trainer_dir / RESUME_KEY_FILE
    if complete:
        written = read_json(key_file).get("key") if key_file.is_file() else None
        if written != key:
            raise ConfigError(
                f"{trainer_dir}: holds checkpoints of a training run with other settings, data or neurons "
                f"({complete[-1][1].name}); delete that folder to start over, or use another output_dir."
            )
        for step, p in checkpoints:  # interrupted while saving: transformers would pick it as the latest
            if step > complete[-1][0]:
                shutil.rmtree(p, ignore_errors=True)  # every rank may get here
        step, path = complete[-1]
        logger.info("resuming training from %s (step %d).", path, step)
        return path, step
    trainer_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(key_file, {"key": key})
    return None


def _disk_backed(dataset: Any, args: Any, directory: Path) -> Any:
    """``dataset`` saved to ``directory`` by rank 0 and loaded back on every rank.

    With ``precompute_ref_log_probs`` TRL (1.16) writes the reference log-probs on rank 0 into the
    dataset's cache directory and every rank reads them back from there. An in-memory dataset has no
    cache directory: each process would use its own temporary one and the other ranks fail with
    ``FileNotFoundError``. ``directory`` must be visible to all ranks (shared storage across nodes)."""
    from datasets import Dataset

    with args.main_process_first(local=False, desc="saving the preference data for the reference pass"):
        if args.process_index == 0:
            dataset.save_to_disk(str(directory))
        return Dataset.load_from_disk(str(directory))


def _loss_kwargs(config: SafeNeuronDPOConfig) -> dict[str, Any]:
    """TRL's ``loss_type``/``loss_weights``: the DPO loss alone, or with the RPO chosen-answer NLL term."""
    if config.sft_weight > 0:
        return {"loss_type": [config.loss_type, "sft"], "loss_weights": [1.0, config.sft_weight]}
    return {"loss_type": [config.loss_type]}


def train_safeneuron_dpo(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    frozen: NeuronSet | None,
    config: SafeNeuronDPOConfig | None = None,
    output_dir: str | Path = "safeneuron_dpo",
) -> TrainResult:
    """DPO with ``frozen`` held exactly (SafeNeuron) or, with ``frozen=None``, plain DPO (RLHF-Safety).

    ``model`` is trained in place (LoRA adapters, if enabled, are merged into it at the end) and left in
    eval mode with no hooks attached."""
    config = config or SafeNeuronDPOConfig()
    if frozen is not None and not frozen:
        raise ConfigError(
            "train_safeneuron_dpo: 'frozen' is an empty NeuronSet (did identification select "
            "nothing?); pass frozen=None for the plain-DPO baseline."
        )
    kind = "safeneuron_dpo" if frozen is not None else "dpo"
    return _dpo(model, tokenizer, pairs, frozen, config, output_dir, kind)


def _dpo(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    frozen: NeuronSet | None,
    config: SafeNeuronDPOConfig,
    output_dir: str | Path,
    kind: str,
) -> TrainResult:
    """TRL DPO with ``frozen`` held (none: plain DPO)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config.validate()
    if config.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "SafeNeuronDPOConfig.chat_template = True but the tokenizer has no chat template; set "
            "chat_template=False to train on HH-style 'Human:/Assistant:' text."
        )
    out = Path(output_dir)
    precompute = config.reference == "precompute"
    ablate_ref = frozen is not None and config.ablate_in_reference
    dataset = Dataset.from_list(to_trl_rows(list(pairs), config.chat_template))
    data_key = dataset._fingerprint  # content hash, taken before the reference-ablation tag below
    if precompute:
        # TRL caches precomputed reference log-probs under hash(dataset fingerprint, weights); hooks are not
        # part of that hash, so put the reference ablation into the fingerprint.
        tag = fingerprint(frozen) if ablate_ref else "none"
        dataset = dataset.map(
            None, new_fingerprint=sha256_text(f"{dataset._fingerprint}|ref-ablation:{tag}")[:16]
        )
    ref_model = None
    if config.reference == "copy":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    args = DPOConfig(
        **config.training_kwargs(str(out / rf.TRAINER_SUBDIR)),
        beta=config.beta,
        **_loss_kwargs(config),
        precompute_ref_log_probs=precompute,
        **config.trainer_overrides,
    )
    if precompute and args.world_size > 1:
        dataset = _disk_backed(dataset, args, out / rf.TRAINER_SUBDIR / "preference_data")

    def make_trainer(
        train_model: nn.Module, callbacks: list[TrainerCallback], freezer: NeuronFreezer | None
    ) -> Any:
        # with precompute, TRL computes the reference log-probs inside __init__: ablate there iff asked
        ref_ablation = (
            freezer.ablation() if (ablate_ref and precompute and freezer is not None) else nullcontext()
        )
        with ref_ablation:
            return DPOTrainer(
                model=train_model,
                ref_model=ref_model,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                callbacks=callbacks,
            )

    ref_ctx = (
        ablate(ref_model, frozen) if (ablate_ref and ref_model is not None and frozen) else nullcontext()
    )
    with ref_ctx:
        return run_masked_training(
            model,
            tokenizer,
            frozen,
            "freeze",
            config,
            out,
            make_trainer,
            kind=kind,
            ablate_during_training=config.ablate_frozen_during_training,
            data_key=data_key,
        )


def train_plain_dpo(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    config: SafeNeuronDPOConfig | None = None,
    output_dir: str | Path = "dpo",
) -> TrainResult:
    """The RLHF-Safety baseline: the same DPO, same data and settings, nothing frozen."""
    return train_safeneuron_dpo(model, tokenizer, pairs, None, config, output_dir)


# ----------------------------------------------------------------------------------------------
# iterative rounds
# ----------------------------------------------------------------------------------------------

IdentifyFn = Callable[[nn.Module], NeuronSet]
ROUND_MARKER = rf.ROUND_MARKER


@dataclass
class RoundResult:
    round: int
    directory: str
    identified: int
    frozen: int
    resumed: bool
    train: dict[str, Any]


def load_weights(model: nn.Module, model_dir: str | Path) -> None:
    """Load the safetensors weights saved by ``save_pretrained`` into ``model`` in place (tied weights,
    which are saved once, may be absent)."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise DataError(
            f"{model_dir}: no *.safetensors files; the round was not saved completely. Delete the "
            "round directory to retrain it."
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise DataError(f"{model_dir}: weights {result.unexpected_keys[:5]} do not belong to this model.")
    loaded = {model.state_dict()[k].data_ptr() for k in state}
    missing = [k for k in result.missing_keys if model.state_dict()[k].data_ptr() not in loaded]
    if missing:
        raise DataError(f"{model_dir}: weights {missing[:5]} are missing; the checkpoint is incomplete.")


def iterate_rounds(
    model: nn.Module,
    tokenizer: Any,
    identify_fn: IdentifyFn,
    pairs: Sequence[PreferencePair],
    rounds: int = 3,
    config: SafeNeuronDPOConfig | None = None,
    output_dir: str | Path = "safeneuron_rounds",
    first_identified: NeuronSet | None = None,
) -> list[RoundResult]:
    """SafeNeuron's iterative regime (Eq. 13): for t = 1..rounds, identify on the current model
    (``identify_fn(model) -> NeuronSet``), freeze the union with all earlier sets, train from the current
    weights. ``first_identified``: round 1's set when it is already known (identified on the starting
    weights), so ``identify_fn`` is not run again on them. Round t lives in ``output_dir/round_{t}/`` (``identified.json``, ``neurons.json`` = the union,
    ``model/``, then ``round.json`` written last as the completion marker). Finished rounds are skipped on a
    rerun and the model is loaded from the last finished one, so an interrupted run resumes."""
    if rounds < 1:
        raise ConfigError(f"iterate_rounds: rounds = {rounds}; expected >= 1 (the paper reports T1..T3).")
    config = replace(config or SafeNeuronDPOConfig(), save_model=True)
    out = Path(output_dir)
    results: list[RoundResult] = []
    cumulative: NeuronSet | None = None
    shape = model_layout(model).shape()
    done = 0
    for t in range(1, rounds + 1):
        rdir = out / rf.round_subdir(t)
        if not (rdir / ROUND_MARKER).is_file():
            break
        marker = read_json(rdir / ROUND_MARKER)
        cumulative = NeuronSet.load(rdir / rf.ROUND_NEURONS, shape)
        results.append(
            RoundResult(
                t, str(rdir), int(marker["identified"]), len(cumulative), True, dict(marker.get("train", {}))
            )
        )
        done = t
    if done:
        logger.info(
            "iterate_rounds: rounds 1..%d already finished in %s; resuming from round %d.",
            done,
            out,
            done + 1,
        )
        load_weights(model, out / rf.round_subdir(done) / MODEL_SUBDIR)
    for t in range(done + 1, rounds + 1):
        rdir = out / rf.round_subdir(t)
        model.eval()
        identified = first_identified if (t == 1 and first_identified is not None) else identify_fn(model)
        if not isinstance(identified, NeuronSet):
            raise ConfigError(
                f"iterate_rounds: identify_fn returned {type(identified).__name__}; it must return a "
                "NeuronSet."
            )
        identified.check_fits(shape, source=f"round {t} identification")
        identified, cumulative = save_round_sets(rdir, t, identified, cumulative)
        logger.info(
            "round %d: identified %d neurons, freezing %d (union).", t, len(identified), len(cumulative)
        )
        res = train_safeneuron_dpo(model, tokenizer, pairs, cumulative, config, rdir)
        summary = mark_round_done(rdir, t, identified, cumulative, res.to_dict())
        results.append(RoundResult(t, str(rdir), len(identified), len(cumulative), False, summary))
    return results


def save_round_sets(
    rdir: Path, t: int, identified: NeuronSet, earlier: NeuronSet | None
) -> tuple[NeuronSet, NeuronSet]:
    """Round ``t``'s identified set and the frozen union with ``earlier`` rounds' (Eq. 13), named and saved
    as ``rdir/identified.json`` and ``rdir/neurons.json``."""
    identified = identified.renamed(f"identified_T{t - 1}", round=t)
    identified.save(rdir / rf.ROUND_IDENTIFIED)
    cumulative = identified if earlier is None else (earlier | identified)
    cumulative = cumulative.renamed(f"frozen_round_{t}", round=t)
    cumulative.save(rdir / rf.ROUND_NEURONS)
    return identified, cumulative


def mark_round_done(
    rdir: Path, t: int, identified: NeuronSet, frozen: NeuronSet, result: dict[str, Any]
) -> dict[str, Any]:
    """Write round ``t``'s completion marker (last, so a rerun resumes after it) from its training result
    (``TrainResult.to_dict()``); returns the summary it holds."""
    summary = {k: v for k, v in result.items() if k not in ("log_history", "config")}
    write_json_atomic(rdir / ROUND_MARKER, rf.RoundMarker(t, len(identified), len(frozen), summary).to_dict())
    return summary


__all__ = [
    "RoundResult",
    "TrainLogCallback",
    "check_launch",
    "check_trainer_overrides",
    "iterate_rounds",
    "load_weights",
    "mark_round_done",
    "run_masked_training",
    "save_round_sets",
    "train_plain_dpo",
    "train_safeneuron_dpo",
]
