"""``ModelLayout``: an adapter resolved against one loaded model (layers, sites, heads, shape)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from safeneurons.errors import ArchitectureError
from safeneurons.models.adapters import (
    ArchitectureAdapter,
    ParamSlice,
    SiteLayout,
    adapter_for,
    get_module,
    param_numel_per_neuron,
    site_layouts,
)
from safeneurons.neurons import SITES, ModelShape, NeuronSet


class NeuronSlice(NamedTuple):
    """The coordinates of one (layer, site) group of neurons in one of the site's parameters."""

    layer: int
    module: nn.Module
    param: ParamSlice
    coords: torch.Tensor  # indices along ``param.dim`` (neuron index + ``param.offset``)

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.module, self.param.param)


@dataclass
class ModelLayout:
    model: nn.Module
    adapter: ArchitectureAdapter
    layers: list[nn.Module]
    sites: dict[str, SiteLayout]
    n_heads: int
    n_kv_heads: int
    head_dim: int

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def module(self, layer: int, site: str) -> nn.Module:
        return get_module(self.layers[layer], self.site(site).module)

    def site(self, site: str) -> SiteLayout:
        if site not in self.sites:
            raise ArchitectureError(f"unknown site {site!r}; sites are {', '.join(SITES)}.")
        return self.sites[site]

    def neuron_slices(self, neurons: NeuronSet) -> Iterator[NeuronSlice]:
        """Every parameter slice ``neurons`` own, in (layer, site) order: for an MLP neuron its gate/up rows
        and down column, for an attention neuron its Q/K/V row or O column (and bias entries)."""
        for (layer, site), idx in sorted(neurons.groups().items()):
            idx_t = torch.as_tensor(idx, dtype=torch.long)
            for ps in self.site(site).params:
                yield NeuronSlice(layer, get_module(self.layers[layer], ps.module), ps, idx_t + ps.offset)

    def check_sites(self, sites: Iterable[str]) -> list[str]:
        sites = list(sites)
        for s in sites:
            self.site(s)
        return sites

    def shape(self, model_name: str = "", model_checksum: str = "") -> ModelShape:
        total = sum(p.numel() for p in self.model.parameters())
        return ModelShape(
            n_layers=self.n_layers,
            site_sizes={s: lay.width for s, lay in self.sites.items()},
            params_per_neuron={s: param_numel_per_neuron(self.layers[0], lay) for s, lay in self.sites.items()},
            total_params=int(total),
            model_name=model_name or str(getattr(self.model.config, "_name_or_path", "")),
            model_checksum=model_checksum,
        )

    def kv_head_of(self, site: str, index: int) -> int:
        """Head that neuron ``index`` of ``site`` belongs to (K/V heads under GQA)."""
        return index // self.head_dim


def model_layout(model: nn.Module) -> ModelLayout:
    """Resolve the architecture adapter of ``model`` (raises ArchitectureError for unknown classes)."""
    adapter = adapter_for(model)
    layers = list(get_module(model, adapter.layers))
    if not layers:
        raise ArchitectureError(f"{type(model).__name__} has no layers at {adapter.layers!r}.")
    sites = site_layouts(model, layers[0], adapter)
    cfg = model.config
    n_heads = int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = sites["q"].width // n_heads
    return ModelLayout(model, adapter, layers, sites, n_heads, n_kv, head_dim)
