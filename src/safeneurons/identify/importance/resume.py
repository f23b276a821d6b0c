"""The resume store: finished (layer, site) cells of one run saved as they complete, keyed by the model,
the prompts, the number-changing config fields and the neuron shard (:func:`_run_key`)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from safeneurons.errors import DataError
from safeneurons.identify.importance.config import Cell, ImportanceConfig
from safeneurons.io import atomic_path, read_json, read_safetensors, write_json_atomic

log = logging.getLogger(__name__)

PARTIAL_FORMAT = "safeneurons.importance-partial/1"


def _model_fingerprint(model: nn.Module) -> str:
    """Cheap identity of the weights: names, shapes and the first values of every parameter."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)}:".encode())
        h.update(p.detach().reshape(-1)[:16].to("cpu", torch.float64).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def _run_key(model: nn.Module, cfg: ImportanceConfig, prompts_hash: str, shard: tuple[int, int] | None) -> str:
    payload = {"config": cfg.result_key_fields(), "prompts": prompts_hash, "model": _model_fingerprint(model),
               "shard": list(shard) if shard else None}
    return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class _Resume:
    """Per-(layer, site) partial results: ``<dir>/cell-<layer>.<site>.safetensors`` + ``manifest.json``."""

    def __init__(self, path: str | Path | None, key: str, cfg: ImportanceConfig, restart_stale: bool = False) -> None:
        self.dir = Path(path) if path is not None else None
        self.key = key
        self.cfg = cfg
        self.done: dict[Cell, np.ndarray] = {}
        if self.dir is None:
            return
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            return
        try:
            data = read_json(manifest)
        except ValueError as exc:
            raise DataError(f"{manifest}: unreadable resume manifest ({exc}); delete {self.dir} to start over.") from exc
        if data.get("format") != PARTIAL_FORMAT or data.get("key") != key:
            if restart_stale:
                log.info("resume: %s holds another configuration's cells (key %s); starting over there.",
                         self.dir, str(data.get("key"))[:19])
                return  # the first finished cell rewrites the manifest; unlisted cell files are never read
            raise DataError(
                f"{self.dir} holds partial importance results of a different run (model, prompts, config or shard "
                f"differ: key {str(data.get('key'))[:19]} vs {key[:19]}). Pass another resume_path or delete it.")
        for name, fname in data.get("cells", {}).items():
            layer, site = name.split(".", 1)
            f = self.dir / fname
            if not f.exists():
                log.warning("resume: %s is listed in %s but missing; recomputing it.", f, manifest)
                continue
            self.done[(int(layer), site)] = read_safetensors(f)[0]["scores"].numpy().astype(np.float64)
        if self.done:
            log.info("resume: %d finished (layer, site) cells loaded from %s", len(self.done), self.dir)

    def save(self, cell: Cell, scores: np.ndarray) -> None:
        self.done[cell] = scores
        if self.dir is None:
            return
        _save_cell(self.dir, cell, scores)
        write_json_atomic(self.dir / "manifest.json", {
            "format": PARTIAL_FORMAT, "key": self.key, "config": self.cfg.to_dict(),
            "cells": {f"{layer}.{site}": f"cell-{layer}.{site}.safetensors" for (layer, site) in sorted(self.done)},
        })


def _save_cell(directory: Path, cell: Cell, scores: np.ndarray) -> None:
    from safetensors.torch import save_file

    with atomic_path(directory / f"cell-{cell[0]}.{cell[1]}.safetensors") as tmp:
        save_file({"scores": torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float64))}, str(tmp))
