"""Layer-wise and cross-category analysis of safety-neuron sets (SafeNeuron §4.5).

* :func:`normalised_layer_profile`: counts per layer and per normalised depth bin (layer / (L-1) in
  [0, 1]), so models of different depth can be compared.
* :func:`category_decomposition`: for sets identified separately per harm category, the *core* neurons
  (in every category's set), *shared* ones (in at least two but not all) and *specific* ones (in exactly
  one), with counts per category.
* :func:`overlap_curve`: the overlap ratio ``|∩_{k∈S} N_k| / |∪_{k∈S} N_k|`` over all K-subsets S of the
  categories (all C(n, K) subsets, or a seeded sample of at most ``max_subsets``), mean and spread per K.
* :func:`pairwise_overlap`: Jaccard and intersection sizes between sets of different models, rounds or
  methods (same model shape required).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from safeneurons.errors import DataError
from safeneurons.neurons import NeuronSet


def normalised_layer_profile(ns: NeuronSet, bins: int = 10) -> dict[str, Any]:
    per_layer = ns.counts_per_layer()
    L = ns.shape.n_layers
    depth = [layer / (L - 1) if L > 1 else 0.0 for layer in range(L)]
    hist = np.zeros(bins, dtype=np.int64)
    for layer, c in per_layer.items():
        hist[min(int(depth[layer] * bins), bins - 1)] += c
    total = max(len(ns), 1)
    return {"name": ns.name, "n_layers": L, "per_layer": [per_layer[layer] for layer in range(L)],
            "depth": depth, "bins": bins, "per_depth_bin": hist.tolist(),
            "per_depth_bin_fraction": (hist / total).tolist()}


def _union(sets: Sequence[NeuronSet]) -> NeuronSet:
    out = sets[0]
    for s in sets[1:]:
        out = out | s
    return out


def _intersection(sets: Sequence[NeuronSet]) -> NeuronSet:
    out = sets[0]
    for s in sets[1:]:
        out = out & s
    return out


def category_decomposition(per_category: Mapping[str, NeuronSet]) -> dict[str, Any]:
    """Core / shared / category-specific neurons of per-category sets (needs >= 2 categories)."""
    if len(per_category) < 2:
        raise DataError(f"category decomposition needs at least 2 categories, got {len(per_category)}.")
    names = list(per_category)
    sets = [per_category[n] for n in names]
    membership: dict[tuple[int, str, int], int] = {}
    for s in sets:
        for neuron in s:
            membership[neuron] = membership.get(neuron, 0) + 1
    n = len(sets)
    core = {k for k, m in membership.items() if m == n}
    specific = {k for k, m in membership.items() if m == 1}
    shared = {k for k, m in membership.items() if 1 < m < n}
    shape = sets[0].shape
    return {
        "categories": names,
        "sizes": {nm: len(per_category[nm]) for nm in names},
        "union": len(membership),
        "core": len(core), "shared": len(shared), "specific": len(specific),
        "specific_per_category": {nm: len(set(per_category[nm]) & specific) for nm in names},
        "core_set": NeuronSet.from_triples(shape, core, name="CORE", provenance={"kind": "core", "categories": names}),
        "shared_set": NeuronSet.from_triples(shape, shared, name="SHARED", provenance={"kind": "shared"}),
        "specific_set": NeuronSet.from_triples(shape, specific, name="SPECIFIC", provenance={"kind": "specific"}),
    }


def overlap_curve(per_category: Mapping[str, NeuronSet], max_subsets: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    """Mean and spread of the K-subset overlap ratio |∩| / |∪| for K = 1..n."""
    names = list(per_category)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(1, len(names) + 1):
        total = math.comb(len(names), k)
        if total <= max_subsets:
            subsets = list(itertools.combinations(names, k))
        else:
            seen: set[tuple[str, ...]] = set()
            while len(seen) < max_subsets:
                seen.add(tuple(sorted(rng.choice(names, size=k, replace=False).tolist(), key=names.index)))
            subsets = sorted(seen)
        ratios = []
        for sub in subsets:
            sets = [per_category[s] for s in sub]
            u = len(_union(sets))
            ratios.append(len(_intersection(sets)) / u if u else 1.0)
        arr = np.asarray(ratios)
        out.append({"K": k, "n_subsets": len(subsets), "of": total, "mean": float(arr.mean()),
                    "std": float(arr.std()), "min": float(arr.min()), "max": float(arr.max())})
    return out


def pairwise_overlap(sets: Mapping[str, NeuronSet]) -> dict[str, Any]:
    """Jaccard and intersection matrices between named sets (e.g. models, rounds, methods)."""
    names = list(sets)
    jac = np.eye(len(names))
    inter = np.zeros((len(names), len(names)), dtype=np.int64)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            inter[i, j] = len(sets[a] & sets[b])
            if i < j:
                jac[i, j] = jac[j, i] = sets[a].jaccard(sets[b])
    return {"names": names, "jaccard": jac.tolist(), "intersection": inter.tolist(),
            "sizes": [len(sets[n]) for n in names]}
