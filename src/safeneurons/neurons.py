"""NeuronSet: a set of neurons addressed by ``(layer, site, index)`` with set algebra and provenance.

A neuron ``12.mlp.4031`` is coordinate 4031 of the MLP intermediate activation of layer 12 (the
input of HF ``model.layers.12.mlp.down_proj``; TransformerLens ``blocks.12.mlp.hook_post``).
Attention neurons are coordinates of the Q/K/V projection outputs (``q``, ``k``, ``v``) and of the
O projection input (``o``). Sets are plain data: they know the shape of the model they were made
for (:class:`ModelShape`) but never hold a model.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from safeneurons.errors import DataError, NeuronSetMismatchError
from safeneurons.io import package_version, read_json, write_json_atomic

SITES: tuple[str, ...] = ("mlp", "q", "k", "v", "o")
FORMAT = "safeneurons.neuronset/1"


@dataclass(frozen=True)
class ModelShape:
    """What a neuron set needs to know about its model: layer count, neurons per site per layer,
    parameters owned by one neuron of each site, total parameter count, and identity."""

    n_layers: int
    site_sizes: Mapping[str, int]
    params_per_neuron: Mapping[str, int] = field(default_factory=dict)
    total_params: int = 0
    model_name: str = ""
    model_checksum: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers,
            "site_sizes": dict(self.site_sizes),
            "params_per_neuron": dict(self.params_per_neuron),
            "total_params": self.total_params,
            "model_name": self.model_name,
            "model_checksum": self.model_checksum,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelShape":
        return cls(
            n_layers=int(d["n_layers"]),
            site_sizes={k: int(v) for k, v in d["site_sizes"].items()},
            params_per_neuron={k: int(v) for k, v in d.get("params_per_neuron", {}).items()},
            total_params=int(d.get("total_params", 0)),
            model_name=str(d.get("model_name", "")),
            model_checksum=str(d.get("model_checksum", "")),
        )

    def neurons_total(self, sites: Iterable[str] | None = None) -> int:
        chosen = self.site_sizes if sites is None else {s: self.site_sizes[s] for s in sites}
        return self.n_layers * sum(chosen.values())

    def compatible(self, other: "ModelShape") -> bool:
        return self.n_layers == other.n_layers and dict(self.site_sizes) == dict(other.site_sizes)


def _as_index_array(values: Iterable[int]) -> np.ndarray:
    arr = np.unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.int64))
    return arr


class NeuronSet:
    """An immutable set of neurons for one model shape.

    >>> shape = ModelShape(n_layers=2, site_sizes={"mlp": 8})
    >>> a = NeuronSet.from_triples(shape, [(0, "mlp", 1), (1, "mlp", 3)], name="a")
    >>> b = NeuronSet.from_triples(shape, [(1, "mlp", 3), (1, "mlp", 5)], name="b")
    >>> len(a | b), len(a & b), len(a - b)
    (3, 1, 1)
    """

    def __init__(
        self,
        shape: ModelShape,
        indices: Mapping[tuple[int, str], Iterable[int]] | None = None,
        name: str = "",
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        self.shape = shape
        self.name = name
        self.provenance: dict[str, Any] = dict(provenance or {})
        self._idx: dict[tuple[int, str], np.ndarray] = {}
        for (layer, site), vals in (indices or {}).items():
            arr = _as_index_array(vals)
            if arr.size:
                self._check_range(layer, site, arr)
                self._idx[(int(layer), site)] = arr

    # construction -------------------------------------------------------------------------
    @classmethod
    def from_triples(cls, shape: ModelShape, triples: Iterable[tuple[int, str, int]], **kw: Any) -> "NeuronSet":
        groups: dict[tuple[int, str], list[int]] = {}
        for layer, site, idx in triples:
            groups.setdefault((int(layer), site), []).append(int(idx))
        return cls(shape, groups, **kw)

    @classmethod
    def empty(cls, shape: ModelShape, name: str = "") -> "NeuronSet":
        return cls(shape, {}, name=name)

    def _check_range(self, layer: int, site: str, arr: np.ndarray) -> None:
        where = f"neuron set {self.name or '(unnamed)'}"
        if site not in self.shape.site_sizes:
            raise NeuronSetMismatchError(
                f"{where}: site {site!r} is not part of this model shape (sites: {', '.join(self.shape.site_sizes)})."
            )
        if not 0 <= layer < self.shape.n_layers:
            raise NeuronSetMismatchError(
                f"{where}: layer {layer} is out of range for a {self.shape.n_layers}-layer model."
            )
        size = self.shape.site_sizes[site]
        if arr[0] < 0 or arr[-1] >= size:
            raise NeuronSetMismatchError(
                f"{where}: index {int(arr[-1] if arr[-1] >= size else arr[0])} at {layer}.{site} is out of range "
                f"0..{size - 1}."
            )

    # access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(sum(a.size for a in self._idx.values()))

    def __bool__(self) -> bool:
        return bool(self._idx)

    def __iter__(self) -> Iterator[tuple[int, str, int]]:
        for (layer, site) in sorted(self._idx, key=lambda k: (k[0], SITES.index(k[1]) if k[1] in SITES else 99)):
            for i in self._idx[(layer, site)]:
                yield layer, site, int(i)

    def __contains__(self, item: object) -> bool:
        if not (isinstance(item, tuple) and len(item) == 3):
            return False
        layer, site, idx = item
        arr = self._idx.get((int(layer), str(site)))
        return arr is not None and bool(np.isin(int(idx), arr))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return self.shape.compatible(other.shape) and self._idx.keys() == other._idx.keys() and all(
            np.array_equal(v, other._idx[k]) for k, v in self._idx.items()
        )

    def __hash__(self) -> int:  # sets are immutable values
        return hash(tuple((k, v.tobytes()) for k, v in sorted(self._idx.items())))

    def __repr__(self) -> str:
        return f"NeuronSet({self.name!r}, {len(self)} neurons in {len(self.layers())} layers, sites={self.sites()})"

    def groups(self) -> dict[tuple[int, str], np.ndarray]:
        """``{(layer, site): sorted int64 indices}``; the arrays are copies."""
        return {k: v.copy() for k, v in self._idx.items()}

    def indices(self, layer: int, site: str) -> np.ndarray:
        return self._idx.get((layer, site), np.zeros(0, dtype=np.int64)).copy()

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self._idx})

    def sites(self) -> list[str]:
        return sorted({site for _, site in self._idx}, key=lambda s: SITES.index(s) if s in SITES else 99)

    def restrict(self, *, sites: Iterable[str] | None = None, layers: Iterable[int] | None = None) -> "NeuronSet":
        s = set(sites) if sites is not None else None
        ls = set(layers) if layers is not None else None
        keep = {k: v for k, v in self._idx.items() if (s is None or k[1] in s) and (ls is None or k[0] in ls)}
        return NeuronSet(self.shape, keep, name=self.name, provenance={**self.provenance, "restricted": True})

    # counts -------------------------------------------------------------------------------
    def counts_per_layer(self) -> dict[int, int]:
        out = {layer: 0 for layer in range(self.shape.n_layers)}
        for (layer, _), v in self._idx.items():
            out[layer] += int(v.size)
        return out

    def counts_per_site(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, site), v in self._idx.items():
            out[site] = out.get(site, 0) + int(v.size)
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"layer.site": count}`` nested as ``{site: {layer: count}}`` with string keys (JSON-ready)."""
        out: dict[str, dict[str, int]] = {}
        for (layer, site), v in sorted(self._idx.items()):
            out.setdefault(site, {})[str(layer)] = int(v.size)
        return out

    def fraction_of_neurons(self, sites: Iterable[str] | None = None) -> float:
        """Share of the neurons of ``sites`` (default: the sites this set uses, or all) that are in the set."""
        chosen = list(sites) if sites is not None else (self.sites() or list(self.shape.site_sizes))
        total = self.shape.neurons_total(chosen)
        n = sum(c for s, c in self.counts_per_site().items() if s in chosen)
        return n / total if total else 0.0

    def n_params(self) -> int:
        """Parameters owned by the neurons of the set (gate/up rows + down column for MLP neurons,
        a Q/K/V row or an O column for attention neurons, bias entries included)."""
        ppn = self.shape.params_per_neuron
        missing = [s for s in self.sites() if s not in ppn]
        if missing:
            raise NeuronSetMismatchError(f"model shape has no parameter count for sites {missing}.")
        return sum(ppn[s] * c for s, c in self.counts_per_site().items())

    def fraction_of_parameters(self) -> float:
        if not self.shape.total_params:
            raise NeuronSetMismatchError("model shape has no total parameter count; build it from a loaded model.")
        return self.n_params() / self.shape.total_params

    # algebra ------------------------------------------------------------------------------
    def _check_compatible(self, other: "NeuronSet") -> None:
        if not isinstance(other, NeuronSet):
            raise TypeError(f"expected a NeuronSet, got {type(other).__name__}")
        if not self.shape.compatible(other.shape):
            raise NeuronSetMismatchError(
                f"neuron sets {self.name!r} and {other.name!r} belong to different model shapes "
                f"({self.shape.n_layers} layers {dict(self.shape.site_sizes)} vs "
                f"{other.shape.n_layers} layers {dict(other.shape.site_sizes)})."
            )

    def _combine(self, other: "NeuronSet", op: str) -> "NeuronSet":
        self._check_compatible(other)
        keys = set(self._idx) | set(other._idx)
        out: dict[tuple[int, str], np.ndarray] = {}
        empty = np.zeros(0, dtype=np.int64)
        for k in keys:
            a, b = self._idx.get(k, empty), other._idx.get(k, empty)
            if op == "union":
                r = np.union1d(a, b)
            elif op == "intersection":
                r = np.intersect1d(a, b, assume_unique=True)
            else:
                r = np.setdiff1d(a, b, assume_unique=True)
            if r.size:
                out[k] = r
        sym = {"union": "∪", "intersection": "∩", "difference": "\\"}[op]
        return NeuronSet(
            self.shape,
            out,
            name=f"({self.name} {sym} {other.name})",
            provenance={"op": op, "operands": [self.name, other.name],
                        "operand_provenance": [self.provenance, other.provenance]},
        )

    def union(self, other: "NeuronSet") -> "NeuronSet":
        return self._combine(other, "union")

    def intersection(self, other: "NeuronSet") -> "NeuronSet":
        return self._combine(other, "intersection")

    def difference(self, other: "NeuronSet") -> "NeuronSet":
        return self._combine(other, "difference")

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    def jaccard(self, other: "NeuronSet") -> float:
        u = len(self | other)
        return len(self & other) / u if u else 1.0

    def renamed(self, name: str, **provenance: Any) -> "NeuronSet":
        return NeuronSet(self.shape, self._idx, name=name, provenance={**self.provenance, **provenance})

    def random_matched(self, seed: int = 0, exclude_self: bool = True, name: str | None = None,
                       avoid: "NeuronSet | None" = None) -> "NeuronSet":
        """A random set with the same count in every (layer, site) cell, seeded.

        ``exclude_self`` draws only from neurons outside this set (a control that shares no neuron
        with the set it controls for); it falls back to all neurons of a cell when the cell is too full.
        ``avoid``: where a cell leaves enough, also outside these neurons (e.g. the ones an attacker was not
        allowed to pick); with ``avoid`` empty the draw is the same as without it."""
        rng = np.random.default_rng(seed)
        out: dict[tuple[int, str], np.ndarray] = {}
        for (layer, site) in sorted(self._idx):
            chosen = self._idx[(layer, site)]
            size = self.shape.site_sizes[site]
            pool = np.arange(size, dtype=np.int64)
            if exclude_self and size - chosen.size >= chosen.size:
                pool = np.setdiff1d(pool, chosen, assume_unique=True)
            if avoid is not None:
                narrower = np.setdiff1d(pool, avoid.indices(layer, site), assume_unique=True)
                if narrower.size >= chosen.size:
                    pool = narrower
            out[(layer, site)] = np.sort(rng.choice(pool, size=chosen.size, replace=False))
        provenance = {"method": "random_matched", "matched_to": self.name, "seed": seed, "exclude_self": exclude_self}
        if avoid is not None:
            provenance["avoids"] = avoid.name
        return NeuronSet(self.shape, out, name=name or f"RANDOM({self.name}, seed={seed})", provenance=provenance)

    # validation and I/O -------------------------------------------------------------------
    def check_fits(self, shape: ModelShape, source: str = "") -> None:
        """Raise :class:`NeuronSetMismatchError` if this set cannot address a model of ``shape``."""
        where = source or f"neuron set {self.name!r}"
        if self.shape.n_layers != shape.n_layers:
            raise NeuronSetMismatchError(
                f"{where} was computed for a {self.shape.n_layers}-layer model ({self.shape.model_name or '?'}); "
                f"this model ({shape.model_name or '?'}) has {shape.n_layers} layers. Recompute it or load that model."
            )
        for site in self.sites():
            if shape.site_sizes.get(site) != self.shape.site_sizes.get(site):
                raise NeuronSetMismatchError(
                    f"{where}: site {site!r} has {self.shape.site_sizes.get(site)} neurons per layer in the set's "
                    f"model but {shape.site_sizes.get(site)} in this one. Recompute it for this model."
                )
        if (self.shape.model_checksum and shape.model_checksum
                and self.shape.model_checksum != shape.model_checksum):
            import logging

            logging.getLogger("safeneurons").warning(
                "%s was identified on model %s (%s) and is applied to %s (%s): same shape, different weights.",
                where, self.shape.model_name, self.shape.model_checksum[:19], shape.model_name,
                shape.model_checksum[:19],
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "size": len(self),
            "fraction_of_neurons": self.fraction_of_neurons() if self else 0.0,
            "model": self.shape.to_dict(),
            "provenance": self.provenance,
            "counts": self.counts(),
            "neurons": {f"{layer}.{site}": v.tolist() for (layer, site), v in sorted(self._idx.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "NeuronSet":
        if d.get("format") != FORMAT:
            raise DataError(f"{source}: not a safeneurons neuron set (format {d.get('format')!r}, expected {FORMAT!r}).")
        try:
            shape = ModelShape.from_dict(d["model"])
            groups: dict[tuple[int, str], list[int]] = {}
            for key, vals in d["neurons"].items():
                layer_s, site = key.split(".", 1)
                groups[(int(layer_s), site)] = [int(x) for x in vals]
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{source}: malformed neuron set ({type(exc).__name__}: {exc}).") from exc
        return cls(shape, groups, name=str(d.get("name", "")), provenance=d.get("provenance") or {})

    def save(self, path: str | os.PathLike[str]) -> None:
        if "created" not in self.provenance:
            self.provenance["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.provenance.setdefault("safeneurons_version", package_version())
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], shape: ModelShape | None = None) -> "NeuronSet":
        """Load a set; with ``shape`` given, check it fits that model and fail clearly if not."""
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise DataError(f"neuron set file {path} does not exist.") from None
        except ValueError as exc:
            raise DataError(f"{path}: not valid JSON ({exc}).") from exc
        ns = cls.from_dict(data, source=str(path))
        if shape is not None:
            ns.check_fits(shape, source=str(path))
        return ns
