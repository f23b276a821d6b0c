"""Importance results: :class:`ImportanceScores` (one float64 array per (layer, site) cell) and its file
format, neuron shards and their merge, top-p counts and the comparison of two estimators."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safeneurons.errors import ConfigError, DataError, NeuronSetMismatchError
from safeneurons.identify.importance.config import Cell
from safeneurons.io import atomic_path, read_safetensors
from safeneurons.neurons import SITES, ModelShape

FORMAT = "safeneurons.importance/1"


@dataclass
class ImportanceScores:
    """``I(N, D)`` for every scored neuron: ``scores[(layer, site)]`` is a float64 array of the
    site's width. Neurons another shard owns are NaN (see :func:`merge_importance`)."""

    shape: ModelShape
    scores: dict[Cell, np.ndarray]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def get(self, layer: int, site: str) -> np.ndarray:
        try:
            return self.scores[(layer, site)]
        except KeyError:
            raise DataError(f"importance scores have no cell {layer}.{site} "
                            f"(cells: {', '.join(f'{a}.{b}' for a, b in self.cells())}).") from None

    def cells(self) -> list[Cell]:
        return sorted(self.scores, key=lambda c: (c[0], SITES.index(c[1])))

    def sites(self) -> list[str]:
        return sorted({s for _, s in self.scores}, key=SITES.index)

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.scores})

    def covered(self, layer: int, site: str) -> np.ndarray:
        return ~np.isnan(self.get(layer, site))

    def complete(self) -> bool:
        return all(not np.isnan(v).any() for v in self.scores.values())

    def to_tensor(self, site: str) -> np.ndarray:
        """``[n_layers_scored, width]`` for one site (rows in :meth:`layers` order)."""
        return np.stack([self.get(layer, site) for layer in self.layers() if (layer, site) in self.scores])

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"{layer}.{site}": torch.from_numpy(np.ascontiguousarray(v)) for (layer, site), v in
                   self.scores.items()}
        meta = {"format": FORMAT, "shape": json.dumps(self.shape.to_dict()),
                "config": json.dumps(self.config), "meta": json.dumps(self.meta, default=str)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> ImportanceScores:
        try:
            raw, meta = read_safetensors(path)
        except FileNotFoundError:
            raise DataError(f"importance file {path} does not exist.") from None
        if meta.get("format") != FORMAT:
            raise DataError(f"{path}: not a safeneurons importance file (format {meta.get('format')!r}).")
        scores = {}
        for key, t in raw.items():
            layer, site = key.split(".", 1)
            scores[(int(layer), site)] = t.numpy().astype(np.float64)
        return cls(ModelShape.from_dict(json.loads(meta["shape"])), scores, json.loads(meta["config"]),
                   json.loads(meta.get("meta", "{}")))


# ---------------------------------------------------------------- neuron shards


def _shard_indices(width: int, shard: tuple[int, int] | None) -> np.ndarray:
    """The neurons of a width-``width`` cell that shard ``(rank, world)`` owns (``j % world == rank``)."""
    if shard is None:
        return np.arange(width, dtype=np.int64)
    rank, world = shard
    return np.arange(rank, width, world, dtype=np.int64)


def _check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        rank, world = (int(shard[0]), int(shard[1]))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"neuron_shard must be (rank, world), got {shard!r}.") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"neuron_shard (rank={rank}, world={world}) needs world >= 1 and 0 <= rank < world.")
    return (rank, world)


def _empty_cell(width: int, shard: tuple[int, int] | None) -> np.ndarray:
    """A cell's accumulator: 0 for the shard's own neurons, NaN for the others'."""
    out = np.full(width, np.nan, dtype=np.float64)
    out[_shard_indices(width, shard)] = 0.0
    return out


def merge_importance(parts: Sequence[ImportanceScores]) -> ImportanceScores:
    """Combine neuron shards of one run (same model shape, prompts and config; disjoint neurons).

    Every neuron must be covered by exactly one shard; cells missing from a shard are an error."""
    if not parts:
        raise DataError("merge_importance: no shards given.")
    first = parts[0]
    for i, p in enumerate(parts[1:], 1):
        if not first.shape.compatible(p.shape):
            raise NeuronSetMismatchError(f"merge_importance: shard {i} belongs to a different model shape.")
        if p.meta.get("prompts_sha256") != first.meta.get("prompts_sha256"):
            raise DataError(f"merge_importance: shard {i} was computed on different prompts.")
        a = {k: v for k, v in first.config.items() if k not in ("batch_size", "max_rows", "prefix_cache")}
        b = {k: v for k, v in p.config.items() if k not in ("batch_size", "max_rows", "prefix_cache")}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise DataError(f"merge_importance: shard {i} has a different config (fields {diff}).")
        if set(p.scores) != set(first.scores):
            raise DataError(f"merge_importance: shard {i} has different (layer, site) cells.")
    merged: dict[Cell, np.ndarray] = {}
    for cell in first.cells():
        out = np.full_like(first.scores[cell], np.nan)
        for i, p in enumerate(parts):
            v = p.scores[cell]
            have = ~np.isnan(v)
            clash = have & ~np.isnan(out)
            if clash.any():
                raise DataError(f"merge_importance: neuron {int(np.argmax(clash))} of {cell[0]}.{cell[1]} is "
                                f"in two shards (shard {i} and an earlier one).")
            out[have] = v[have]
        if np.isnan(out).any():
            raise DataError(f"merge_importance: {int(np.isnan(out).sum())} neurons of {cell[0]}.{cell[1]} are in no "
                            "shard; run the missing ranks.")
        merged[cell] = out
    meta = {**first.meta, "neuron_shard": None, "merged_shards": [p.meta.get("neuron_shard") for p in parts],
            "seconds": sum(float(p.meta.get("seconds", 0.0)) for p in parts)}
    return ImportanceScores(first.shape, merged, dict(first.config), meta)


# ---------------------------------------------------------------- top-p selection and comparison


def top_k_count(width: int, p: float, rounding: str = "ceil") -> int:
    """How many neurons "top p %" of ``width`` means: ``x = round(p·width, 9)`` (so that 0.03·100 =
    3.0000000000000004 counts as 3), then ``ceil(x)`` (default: at least one neuron when p > 0),
    ``round`` (half up) or ``floor``; never more than ``width``."""
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"top-p fraction must be in [0, 1], got {p}.")
    x = round(p * width, 9)
    if rounding == "ceil":
        k = math.ceil(x)
    elif rounding == "round":
        k = math.floor(x + 0.5)
    elif rounding == "floor":
        k = math.floor(x)
    else:
        raise ConfigError(f"rounding must be ceil, round or floor, got {rounding!r}.")
    return max(0, min(width, int(k)))


def top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values; ties go to the lower index. Sorted ascending."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def compare_estimators(exact: ImportanceScores, approx: ImportanceScores, p: float = 0.03,
                       rounding: str = "ceil") -> dict[str, Any]:
    """Agreement of an estimator with the exact importance: Spearman ρ (scipy) and the overlap of the
    per-cell top-p% sets (|top_exact ∩ top_approx| / |top_exact|), per (layer, site), per site and
    pooled (ρ over all neurons of all common cells; overlap summed over cells)."""
    from scipy.stats import spearmanr

    common = [c for c in exact.cells() if c in approx.scores]
    if not common:
        raise DataError("compare_estimators: the two score sets have no (layer, site) cell in common.")
    per_cell: dict[str, dict[str, float]] = {}
    xs, ys = [], []
    hit_total = k_total = 0
    by_site: dict[str, list[tuple[float, int, int]]] = {}
    for cell in common:
        a, b = exact.scores[cell], approx.scores[cell]
        ok = ~(np.isnan(a) | np.isnan(b))
        a, b = a[ok], b[ok]
        k = top_k_count(a.size, p, rounding)
        hits = np.intersect1d(top_indices(a, k), top_indices(b, k)).size
        rho = float(spearmanr(a, b).statistic) if a.size > 1 else float("nan")
        per_cell[f"{cell[0]}.{cell[1]}"] = {"spearman": rho, "top_overlap": hits / k if k else float("nan"),
                                            "n": int(a.size), "k": k}
        by_site.setdefault(cell[1], []).append((rho, hits, k))
        xs.append(a)
        ys.append(b)
        hit_total += hits
        k_total += k
    x, y = np.concatenate(xs), np.concatenate(ys)
    site_summary = {s: {"spearman_mean": float(np.nanmean([r for r, _, _ in v])),
                        "top_overlap": sum(h for _, h, _ in v) / max(1, sum(k for _, _, k in v))}
                    for s, v in by_site.items()}
    return {
        "p": p,
        "pooled": {"spearman": float(spearmanr(x, y).statistic) if x.size > 1 else float("nan"),
                   "top_overlap": hit_total / k_total if k_total else float("nan"),
                   "spearman_mean_per_cell": float(np.nanmean([v["spearman"] for v in per_cell.values()])),
                   "n": int(x.size), "cells": len(common)},
        "per_site": site_summary,
        "per_cell": per_cell,
    }


