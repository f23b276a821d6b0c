"""Identification methods, in one registry (``safeneurons ls methods``)."""

from safeneurons.identify.registry import METHODS, identify
from safeneurons.identify.safeneuron import (
    SafeNeuronConfig,
    SafeNeuronScores,
    identify_safeneurons,
    mean_difference_topk,
    safeneuron_scores,
    thresholds_for,
)

__all__ = ["METHODS", "SafeNeuronConfig", "SafeNeuronScores", "identify", "identify_safeneurons",
           "mean_difference_topk", "safeneuron_scores", "thresholds_for"]
