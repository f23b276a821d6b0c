"""Training with neuron-level masks: SafeNeuron DPO, plain DPO, SN-Tune and SS-Neuron expansion."""

from safeneurons.train.dpo import iterate_rounds, train_plain_dpo, train_safeneuron_dpo
from safeneurons.train.dpo_config import BaseTrainConfig, SafeNeuronDPOConfig, TrainResult
from safeneurons.train.freezing import FreezeCallback, NeuronFreezer, restricted_trainable
from safeneurons.train.preference_data import (
    PreferencePair,
    helpfulness_pairs,
    hh_rlhf_pairs,
    load_pairs,
    mix,
    onpolicy_safety_pairs,
    save_pairs,
)
from safeneurons.train.sft import MaskedSFTConfig, masked_sft, sn_tune

__all__ = ["BaseTrainConfig", "FreezeCallback", "MaskedSFTConfig", "NeuronFreezer", "PreferencePair",
           "SafeNeuronDPOConfig", "TrainResult", "helpfulness_pairs", "hh_rlhf_pairs", "iterate_rounds", "load_pairs",
           "masked_sft", "mix", "onpolicy_safety_pairs", "restricted_trainable", "save_pairs", "sn_tune",
           "train_plain_dpo", "train_safeneuron_dpo"]
