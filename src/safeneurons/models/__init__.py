"""Model loading (local dir, offline registry, hub) and architecture adapters."""

from safeneurons.models.adapters import ARCHITECTURES, ArchitectureAdapter, adapter_for, register_adapter
from safeneurons.models.layout import ModelLayout, model_layout
from safeneurons.models.loading import LoadedModel, load_model, weights_checksum
from safeneurons.models.offline import OFFLINE_MODELS, list_models, pull

__all__ = ["ARCHITECTURES", "ArchitectureAdapter", "LoadedModel", "ModelLayout", "OFFLINE_MODELS", "adapter_for",
           "list_models", "load_model", "model_layout", "pull", "register_adapter", "weights_checksum"]
