"""Registry of identification methods working on activation statistics.

Each entry maps ``(stats, params, family) -> {set name: NeuronSet}``. Methods that need the model
itself (deactivation importance, SS-Neurons) live in their own modules and register there."""

from __future__ import annotations

from typing import Any, Callable

from safeneurons.errors import EmptySelectionError
from safeneurons.identify.safeneuron import PAPER, SafeNeuronConfig, identify_safeneurons, mean_difference_topk
from safeneurons.neurons import NeuronSet
from safeneurons.registry import Registry
from safeneurons.stats.collect import ActivationStats

Method = Callable[[ActivationStats, dict[str, Any], str], dict[str, NeuronSet]]
METHODS: Registry[Method] = Registry("identification method")


@METHODS.register("safeneuron", summary="ES ∪ SAS (SafeNeuron Eqs. 5-10): sets ES, SAS and FULL", paper=PAPER)
def _safeneuron(stats: ActivationStats, params: dict[str, Any], family: str) -> dict[str, NeuronSet]:
    return identify_safeneurons(stats, SafeNeuronConfig(**params), family)


@METHODS.register("meandiff", summary="raw mean-difference top-k per layer (baseline)")
def _meandiff(stats: ActivationStats, params: dict[str, Any], family: str) -> dict[str, NeuronSet]:
    p = dict(params)
    k = int(p.pop("k", 100))
    s = mean_difference_topk(stats, k, SafeNeuronConfig(**p))
    return {s.name: s}


def identify(stats: ActivationStats, method: str = "safeneuron", params: dict[str, Any] | None = None,
             family: str = "", allow_empty: bool = False) -> dict[str, NeuronSet]:
    """Run a registered method; an empty FULL/only set is an error unless ``allow_empty``."""
    sets = METHODS.get(method)(stats, dict(params or {}), family)
    main = sets.get("FULL") or next(iter(sets.values()))
    if not allow_empty and len(main) == 0:
        prov = main.provenance
        raise EmptySelectionError(
            f"method {method!r} selected no neurons (thresholds: tau_es={prov.get('tau_es')}, "
            f"tau_sas={prov.get('tau_sas')}; {prov.get('n_unsafe')} harmful vs {prov.get('n_safe')} benign samples). "
            "Lower the thresholds, add prompts, or check that the two prompt groups differ."
        )
    return sets
