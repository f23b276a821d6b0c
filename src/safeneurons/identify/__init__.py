"""Identification methods, in one registry (``safeneurons ls methods``)."""

from safeneurons.identify.importance import (
    ImportanceConfig,
    ImportanceScores,
    compare_estimators,
    deactivation_importance,
    merge_importance,
)
from safeneurons.identify.multilingual import (
    build_language_sets,
    count_asr_correlation,
    jaccard_matrix,
    ms_set,
    ss_set,
    top_p_per_layer,
)
from safeneurons.identify.registry import METHODS, identify
from safeneurons.identify.safeneuron import (
    SafeNeuronConfig,
    SafeNeuronScores,
    identify_safeneurons,
    mean_difference_topk,
    safeneuron_scores,
    thresholds_for,
)

__all__ = ["ImportanceConfig", "ImportanceScores", "build_language_sets", "compare_estimators",
           "count_asr_correlation", "deactivation_importance", "jaccard_matrix", "merge_importance", "ms_set", "ss_set",
           "top_p_per_layer", "METHODS", "SafeNeuronConfig", "SafeNeuronScores", "identify", "identify_safeneurons",
           "mean_difference_topk", "safeneuron_scores", "thresholds_for"]
