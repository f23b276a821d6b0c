"""Neuron interventions: hook context managers and weight surgery."""

from safeneurons.intervene.hooks import (
    Intervention,
    ablate,
    active_interventions,
    as_interventions,
    fingerprint,
    intervene,
    scale,
    set_to,
)
from safeneurons.intervene.surgery import edited_weights, export_pruned

__all__ = ["Intervention", "ablate", "active_interventions", "as_interventions", "edited_weights", "fingerprint", "export_pruned", "intervene",
           "scale", "set_to"]
