"""Registry of identification methods working on activation statistics.

Each entry is a typed (config, method) pair: ``meta["config"]`` is the method's settings dataclass and the
method maps ``(stats, config, family) -> {set name: NeuronSet}``. A run config's ``identify.params`` is loaded
as that dataclass (:func:`params_type`), so a misspelt or mistyped setting fails when the config loads.
Methods that need the model itself (deactivation importance, SS-Neurons) live in their own modules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from safeneurons.errors import ConfigError, EmptySelectionError
from safeneurons.identify.safeneuron import (
    PAPER,
    SafeNeuronConfig,
    identify_safeneurons,
    mean_difference_topk,
)
from safeneurons.neurons import NeuronSet
from safeneurons.registry import Registry
from safeneurons.stats.collect import ActivationStats

Method = Callable[[ActivationStats, Any, str], dict[str, NeuronSet]]
METHODS: Registry[Method] = Registry("identification method")


@dataclass
class MeanDiffConfig:
    """The mean-difference baseline: a fixed count per layer by raw mean shift (no effect size, no z-score)."""

    k: int = field(default=100, metadata={"help": "neurons kept per layer (largest raw mean shift)"})
    unsafe_group: str = field(default="harmful", metadata={"help": "statistics group of harmful prompts"})
    safe_group: str = field(default="harmless", metadata={"help": "statistics group of benign prompts"})
    site: str = field(default="mlp", metadata={"help": "neuron site"})

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"identify.params.k = {self.k!r}: keep at least 1 neuron per layer.")


@METHODS.register("safeneuron", summary="ES ∪ SAS (SafeNeuron Eqs. 5-10): sets ES, SAS and FULL", paper=PAPER,
                  config=SafeNeuronConfig)
def _safeneuron(stats: ActivationStats, params: SafeNeuronConfig, family: str) -> dict[str, NeuronSet]:
    return identify_safeneurons(stats, params, family)


@METHODS.register("meandiff", summary="raw mean-difference top-k per layer (baseline)", config=MeanDiffConfig)
def _meandiff(stats: ActivationStats, params: MeanDiffConfig, family: str) -> dict[str, NeuronSet]:
    groups = SafeNeuronConfig(unsafe_group=params.unsafe_group, safe_group=params.safe_group, site=params.site)
    s = mean_difference_topk(stats, params.k, groups)
    return {s.name: s}


def params_type(method: str) -> type:
    """The settings dataclass of identification method ``method`` (ConfigError with suggestions if unknown)."""
    return METHODS.entry(method).meta["config"]


def method_params(method: str, params: Any = None) -> Any:
    """``params`` as ``method``'s settings: None gives its defaults, a mapping is checked key by key."""
    from safeneurons.config import settings_as

    return settings_as(params_type(method), params, "identify.params", f"method {method!r}")


def identify(stats: ActivationStats, method: str = "safeneuron", params: Any = None,
             family: str = "", allow_empty: bool = False) -> dict[str, NeuronSet]:
    """Run a registered method with its settings (an instance of :func:`params_type`, a mapping of them, or
    None for the defaults); an empty FULL/only set is an error unless ``allow_empty``."""
    sets = METHODS.get(method)(stats, method_params(method, params), family)
    main = sets.get("FULL") or next(iter(sets.values()))
    if not allow_empty and len(main) == 0:
        prov = main.provenance
        raise EmptySelectionError(
            f"method {method!r} selected no neurons (thresholds: tau_es={prov.get('tau_es')}, "
            f"tau_sas={prov.get('tau_sas')}; {prov.get('n_unsafe')} harmful vs {prov.get('n_safe')} benign samples). "
            "Lower the thresholds, add prompts, or check that the two prompt groups differ."
        )
    return sets
