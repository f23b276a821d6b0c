"""Deactivation importance of single neurons (SS-Neurons, arXiv 2602.01283, papers.md B.3).

For a neuron ``N``, a prompt ``x`` and a prompt set ``D`` [B.3]:

    Δ(x, N) = ‖ h(x) − h_{\\N}(x) ‖₂                (``norm="l2"``; ``"l2_squared"`` squares it)
    I(N, D) = mean_{x ∈ D} Δ(x, N)

``h`` is the final hidden state of the decoder (after the final norm, before the LM head) and
``h_{\\N}`` the same with neuron ``N`` zeroed [B.2: Q/K/V neurons are output coordinates of
q/k/v_proj, O neurons input coordinates of o_proj, MLP neurons inputs of down_proj]. Which
representation is compared is not confirmed by the paper [B.3]; we use

* ``position="last"`` (default): ``h`` at the last token of the chat-templated prompt (the token
  that predicts the first answer token), the third-party "Who Transfers Safety"-style choice;
* ``position="response"``: the mean over the response tokens of ``Δ`` per token (ACTR, [FOLLOW-UP]
  B.3; needs (prompt, response) pairs).

The neuron is zeroed at every token (``ablate_positions="all"``, the papers' "deactivation"), only
at the last prompt token (``"last"``), or only at the response tokens (``"response"``, ACTR).

Estimators (``method``):

* ``exact``: batched single-neuron ablations. Each prompt is replicated R times along the batch and
  replica r has a different neuron zeroed (a per-row mask in a hook); the unablated baseline is
  computed once. The unchanged prefix is cached: the residual stream entering layer l and the
  keyword arguments the decoder passes to every layer (causal mask, rotary position embeddings,
  per-layer sliding-window masks) are captured from one ordinary forward pass, and only layers
  l..L-1 plus the final norm are re-run per chunk of neurons. The layer-call path is checked against
  the ordinary forward once per run; where it disagrees (or ``prefix_cache=False``) full forwards
  are used, with a log line.
* ``naive``: one forward per (neuron, prompt batch) with :func:`safeneurons.intervene.ablate`; the
  reference ``exact`` must equal.
* ``first_order`` (attribution patching, exact Jacobian): Δh ≈ J·(−a_j e_j) summed over the ablated
  positions, ``Δh_c = −Σ_t a_{t,j} ∂h_c/∂a_{t,j}``, with one vector-Jacobian product per output
  coordinate ``c`` (d VJPs per scored position; for small models and tests).
* ``probe``: the same linearisation sketched with k random probe vectors u_i (E[u uᵀ] = I):
  ``Δh·u_i ≈ −Σ_t a_{t,j} ∂(h·u_i)/∂a_{t,j}`` and ``‖Δh‖² ≈ mean_i (Δh·u_i)²`` — k VJPs per prompt
  batch give every neuron of every layer at once. Orthogonal probes (rows of a random orthogonal
  matrix scaled by √d) are the default: same expectation, lower variance than Gaussian ones.
* ``heuristic``: gradient-free ``‖a_{·,j}‖₂ (over the ablated positions) × ‖outgoing weight column‖``
  (down_proj / o_proj column for mlp / o neurons; the o_proj columns a V coordinate feeds for v;
  the head's o_proj block norm / √head_dim for q and k, which have no single outgoing column).

* ``refine > 0`` (with a cheap method): the top ``ceil(refine·width)`` neurons of each cell by the cheap
  estimate are re-scored with exact ablations. Their scores are exact; every other neuron keeps its
  cheap score capped just below the cell's smallest exact candidate score, so a top-p selection with
  ``p <= refine`` picks only exactly scored neurons (the cheap scores only decide the shortlist).

Scores are float64 arrays per (layer, site); see :class:`ImportanceScores`. Runs can be resumed
(``resume_path``), sharded over neurons (``neuron_shard=(rank, world)``, merged with
:func:`merge_importance`) and compared (:func:`compare_estimators`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from safeneurons.errors import ConfigError, DataError, NeuronSetMismatchError, NumericalError
from safeneurons.io import atomic_path, package_version, read_json, read_safetensors, write_json_atomic
from safeneurons.models.adapters import get_module
from safeneurons.models.hooks import hook_handles, site_hooks
from safeneurons.models.layout import ModelLayout, model_layout
from safeneurons.neurons import SITES, ModelShape
from safeneurons.stats.collect import decoder_of
from safeneurons.stats.encode import Encoded, encode, length_sorted_batches, pad_batch, pad_token_id

log = logging.getLogger("safeneurons.identify.importance")

METHODS = ("exact", "naive", "first_order", "probe", "heuristic")
POSITIONS = ("last", "response")
ABLATE_POSITIONS = ("all", "last", "response")
NORMS = ("l2", "l2_squared")
PROBE_KINDS = ("orthogonal", "gaussian", "rademacher")
FORMAT = "safeneurons.importance/1"
PARTIAL_FORMAT = "safeneurons.importance-partial/1"
PAPER = {"title": "Who Transfers Safety? Identifying and Targeting Cross-Lingual Shared Safety Neurons",
         "arxiv": "2602.01283"}

Cell = tuple[int, str]


# ============================================================================ configuration


@dataclass
class ImportanceConfig:
    """How to compute deactivation importance I(N, D) (papers.md B.3)."""

    method: str = field(default="exact", metadata={
        "help": f"estimator: {', '.join(METHODS)} (exact = batched single-neuron ablations)"})
    sites: tuple[str, ...] = field(default=("q", "k", "v", "o"), metadata={
        "help": "candidate neuron sites: q, k, v, o (attention, the paper's candidates, B.2) and optionally mlp"})
    layers: tuple[int, ...] | None = field(default=None, metadata={
        "help": "layers to score (default: all); negative indices count from the end"})
    position: str = field(default="last", metadata={
        "help": "compared representation: 'last' = final hidden state at the last prompt token; "
                "'response' = mean over response tokens (needs responses)"})
    ablate_positions: str = field(default="all", metadata={
        "help": "where the neuron is zeroed: 'all' tokens (the papers), the 'last' prompt token, or the "
                "'response' tokens (ACTR)"})
    norm: str = field(default="l2", metadata={
        "help": "'l2' = ‖h − h_\\N‖₂ (B.3); 'l2_squared' = its square (emergentmind / ACTR form)"})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch (padded on the right)"})
    max_rows: int = field(default=64, metadata={
        "help": "exact: rows per ablated forward (prompts × neurons stacked along the batch)"})
    chat_template: bool = field(default=True, metadata={"help": "apply the tokenizer's chat template"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message for the chat template"})
    max_length: int = field(default=512, metadata={"help": "truncate longer inputs (tokens)"})
    prefix_cache: bool = field(default=True, metadata={
        "help": "exact: re-run only layers l..L from the cached residual stream entering layer l "
                "(falls back to full forwards, with a log line, where the layer-call path is unsupported)"})
    n_probes: int = field(default=32, metadata={"help": "probe: random probe vectors (VJPs) per scored position"})
    probe_kind: str = field(default="orthogonal", metadata={
        "help": f"probe: distribution of probe vectors: {', '.join(PROBE_KINDS)}"})
    seed: int = field(default=0, metadata={"help": "probe: seed of the probe vectors (per prompt)"})
    joint_positions: bool = field(default=False, metadata={
        "help": "probe with position 'response' and norm 'l2_squared': one set of k probes spread over all the "
                "response tokens at once (k VJPs per batch instead of k per response token); unbiased for the "
                "same mean of ‖Δh_t‖², with more variance"})
    refine: float = field(default=0.0, metadata={
        "help": "first_order/probe/heuristic: re-score the top fraction of each (layer, site) cell by the cheap "
                "estimate with exact ablations (0 = off; use >= the top-p of the selection, e.g. 0.06 for p = 3%)"})

    def __post_init__(self) -> None:
        self.sites = tuple(self.sites)
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
        checks = (("method", METHODS), ("position", POSITIONS), ("ablate_positions", ABLATE_POSITIONS),
                  ("norm", NORMS), ("probe_kind", PROBE_KINDS))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"importance.{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}.")
        if not self.sites:
            raise ConfigError("importance.sites is empty; name at least one of q, k, v, o, mlp.")
        bad = [s for s in self.sites if s not in SITES]
        if bad:
            raise ConfigError(f"importance.sites has unknown site(s) {bad}; sites are {', '.join(SITES)}.")
        if len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"importance.sites repeats a site: {self.sites}.")
        if not 0.0 <= self.refine <= 1.0:
            raise ConfigError(f"importance.refine must be a fraction in [0, 1], got {self.refine}.")
        if self.refine > 0 and self.method in ("exact", "naive"):
            raise ConfigError(f"importance.refine applies to the cheap estimators; method {self.method!r} is exact "
                              "already. Set refine: 0 or method: probe.")
        if self.joint_positions and (self.method != "probe" or self.norm != "l2_squared"):
            raise ConfigError("importance.joint_positions estimates a sum of squared norms: it needs method: probe "
                              f"and norm: l2_squared (got method {self.method!r}, norm {self.norm!r}).")
        for name in ("batch_size", "max_rows", "n_probes", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"importance.{name} must be >= 1, got {getattr(self, name)}.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sites"] = list(self.sites)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImportanceConfig":
        from safeneurons.config import from_dict

        return from_dict(cls, d, source=cls.__name__)

    @property
    def reads_responses(self) -> bool:
        """Whether the scores depend on the response tokens (``position`` or ``ablate_positions`` is
        ``"response"``), so every prompt needs a response."""
        return "response" in (self.position, self.ablate_positions)

    def result_key_fields(self) -> dict[str, Any]:
        """Fields that change the numbers (not batching, layers or sites; cells are independent)."""
        d = self.to_dict()
        for k in ("sites", "layers", "batch_size", "max_rows", "prefix_cache"):
            d.pop(k)
        if self.method != "probe":
            for k in ("n_probes", "probe_kind", "seed"):
                d.pop(k)
        if not self.refine:
            d.pop("refine")
        if not self.joint_positions:  # keys of results computed before the option existed stay valid
            d.pop("joint_positions")
        return d


# ============================================================================ results


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
    def load(cls, path: str | Path) -> "ImportanceScores":
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


# ============================================================================ helpers


@dataclass
class _Batch:
    idx: list[int]  # global prompt indices
    ids: torch.Tensor  # [B, T] right-padded
    mask: torch.Tensor  # [B, T]
    score_w: torch.Tensor  # [B, T] weights of the scored positions (rows sum to 1)
    ablate_m: torch.Tensor  # [B, T] bool: positions where the neuron is zeroed
    lengths: list[int]


def _texts_and_responses(prompts: Any, responses: Sequence[str | None] | None) -> tuple[list[str], list | None]:
    from safeneurons.data.prompts import PromptSet

    if isinstance(prompts, PromptSet):
        texts = prompts.texts()
        resp = list(responses) if responses is not None else prompts.responses()
    elif isinstance(prompts, str):
        raise DataError("prompts must be a list of strings or a PromptSet, not one string.")
    else:
        texts = [str(p) for p in prompts]
        resp = list(responses) if responses is not None else None
    if not texts:
        raise DataError("no prompts given; deactivation importance is a mean over prompts.")
    if resp is not None and len(resp) != len(texts):
        raise DataError(f"{len(resp)} responses for {len(texts)} prompts; give one response per prompt.")
    if resp is not None and all(r is None for r in resp):
        resp = None
    return texts, resp


def _encode(tokenizer: Any, prompts: Any, responses: Sequence[str | None] | None,
            cfg: ImportanceConfig) -> tuple[list[Encoded], str]:
    texts, resp = _texts_and_responses(prompts, responses)
    needs_resp = cfg.reads_responses
    if needs_resp and (resp is None or any(not r for r in resp)):
        missing = "all" if resp is None else str([i for i, r in enumerate(resp) if not r][:5])
        raise DataError(f"importance.position={cfg.position!r} / ablate_positions={cfg.ablate_positions!r} need a "
                        f"response for every prompt (missing: {missing}); give (prompt, response) pairs or use "
                        "position='last'.")
    encoded = encode(tokenizer, texts, resp if needs_resp else None, cfg.chat_template, cfg.system_prompt,
                     cfg.max_length)
    if needs_resp:
        short = [i for i, e in enumerate(encoded) if len(e.ids) <= e.prompt_len]
        if short:
            raise DataError(f"prompts {short[:5]} have no response tokens left after truncation to "
                            f"max_length={cfg.max_length}; raise importance.max_length.")
    h = hashlib.sha256()
    for e in encoded:
        h.update(np.asarray(e.ids, dtype=np.int64).tobytes())
        h.update(f"|{e.prompt_len};".encode())
    return encoded, "sha256:" + h.hexdigest()


def _make_batches(encoded: list[Encoded], cfg: ImportanceConfig, pad: int, device: torch.device) -> list[_Batch]:
    out = []
    for idx in length_sorted_batches(encoded, cfg.batch_size):
        batch = [encoded[i] for i in idx]
        ids, mask = pad_batch(batch, pad, "right")
        width = ids.shape[1]
        w = torch.zeros((len(batch), width), dtype=torch.float64)
        ab = torch.zeros((len(batch), width), dtype=torch.bool)
        for r, e in enumerate(batch):
            n, p = len(e.ids), e.prompt_len
            if cfg.position == "last":
                w[r, p - 1] = 1.0
            else:
                w[r, p:n] = 1.0 / (n - p)
            if cfg.ablate_positions == "all":
                ab[r, :n] = True
            elif cfg.ablate_positions == "last":
                ab[r, p - 1] = True
            else:
                ab[r, p:n] = True
        out.append(_Batch(list(idx), ids.to(device), mask.to(device), w.to(device), ab.to(device),
                          [len(e.ids) for e in batch]))
    return out


def _resolve_layers(cfg: ImportanceConfig, n_layers: int) -> list[int]:
    if cfg.layers is None:
        return list(range(n_layers))
    out = []
    for x in cfg.layers:
        y = x + n_layers if x < 0 else x
        if not 0 <= y < n_layers:
            raise ConfigError(f"importance.layers has {x}, out of range for a {n_layers}-layer model.")
        out.append(y)
    return sorted(set(out))


def _shard_indices(width: int, shard: tuple[int, int] | None) -> np.ndarray:
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


def _final_rep(out: Any) -> torch.Tensor:
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0] if isinstance(out, (tuple, list)) else out


def _distances(h_abl: torch.Tensor, h0: torch.Tensor, score_w: torch.Tensor, reps: int, norm: str) -> torch.Tensor:
    """Δ per row: rows are prompt-major (row = b·reps + r); float64 ``[B·reps]``."""
    cols = torch.nonzero(score_w.sum(0) > 0).squeeze(1)
    base = h0[:, cols].repeat_interleave(reps, 0)
    diff = (h_abl[:, cols] - base).to(torch.float64)
    d2 = (diff * diff).sum(-1)  # [rows, ncols]
    per_tok = d2 if norm == "l2_squared" else d2.sqrt()
    w = score_w[:, cols].repeat_interleave(reps, 0)
    return (per_tok * w).sum(-1)


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "neuron") -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ============================================================================ resume


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


# ============================================================================ hooks


class _RowMask:
    """Zeroes coordinate ``cols[i]`` of row ``rows[i]`` (at every position, or where ``keep`` is 0)."""

    def __init__(self) -> None:
        self.rows: torch.Tensor | None = None
        self.cols: torch.Tensor | None = None
        self.keep: torch.Tensor | None = None  # [n, T] multiplier (0 where ablated), None = all positions

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return x
        x = x.clone()
        if self.keep is None:
            x[self.rows, :, self.cols] = 0
        else:
            x[self.rows, :, self.cols] = x[self.rows, :, self.cols] * self.keep.to(x.dtype)
        return x


# ============================================================================ prefix cache


class _StopForward(Exception):
    pass


def _final_norm(decoder: nn.Module) -> nn.Module | None:
    for name in ("norm", "ln_f", "final_layernorm", "final_norm"):
        m = getattr(decoder, name, None)
        if isinstance(m, nn.Module):
            return m
    return None


def _expand(obj: Any, b: int, reps: int) -> Any:
    """Repeat batch-dimension tensors (dim 0 == b, ndim >= 2) ``reps`` times, prompt-major."""
    if reps == 1:
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.dim() >= 2 and obj.shape[0] == b and b > 1:
            return obj.repeat_interleave(reps, 0)
        return obj
    if isinstance(obj, tuple):
        return tuple(_expand(o, b, reps) for o in obj)
    if isinstance(obj, list):
        return [_expand(o, b, reps) for o in obj]
    if isinstance(obj, dict):
        return {k: _expand(v, b, reps) for k, v in obj.items()}
    return obj


@dataclass
class _Captured:
    hidden: torch.Tensor  # residual stream entering layer ``start``
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]]  # layer -> (positional args after hidden, kwargs)
    baseline: torch.Tensor  # final hidden state [B, T, d]


def _capture(decoder: nn.Module, layers: list[nn.Module], batch: _Batch, start: int) -> _Captured:
    """One ordinary forward that records the input of layer ``start`` and every later layer's call."""
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    store: dict[str, torch.Tensor] = {}

    def make(i: int) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            kw = dict(kwargs)
            if args:
                hidden, rest = args[0], tuple(args[1:])
            else:
                hidden, rest = kw.pop("hidden_states"), ()
            calls[i] = (rest, kw)
            if i == start:
                store["hidden"] = hidden

        return hook

    with hook_handles() as handles:
        for i in range(start, len(layers)):
            handles.append(layers[i].register_forward_pre_hook(make(i), with_kwargs=True))
        out = decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False)
    return _Captured(store["hidden"], calls, _final_rep(out))


def _run_from(layers: list[nn.Module], norm: nn.Module, cap: _Captured, start: int, reps: int) -> torch.Tensor:
    b = cap.hidden.shape[0]
    h = cap.hidden.repeat_interleave(reps, 0) if reps > 1 else cap.hidden
    for i in range(start, len(layers)):
        rest, kw = cap.calls[i]
        out = layers[i](h, *_expand(rest, b, reps), **_expand(kw, b, reps))
        h = out[0] if isinstance(out, (tuple, list)) else out
    return norm(h)


# ============================================================================ public entry point


def deactivation_importance(model: nn.Module, tokenizer: Any, prompts: Any,
                            config: ImportanceConfig | None = None, layout: ModelLayout | None = None,
                            progress: bool = True, resume_path: str | Path | None = None, *,
                            responses: Sequence[str | None] | None = None,
                            neuron_shard: tuple[int, int] | None = None,
                            restart_stale: bool = False) -> ImportanceScores:
    """``I(N, D)`` (papers.md B.3) for every neuron of ``config.sites`` in ``config.layers``.

    ``prompts``: a list of strings or a :class:`~safeneurons.data.prompts.PromptSet` (its responses are
    used when ``position``/``ablate_positions`` is ``"response"``; ``responses=`` overrides them).
    ``resume_path``: a directory for per-(layer, site) partial results; cells finished by an earlier
    run with the same model, prompts, config and shard are loaded instead of recomputed (``exact`` and
    ``naive`` save each cell when it is done; the cheap methods score every cell in the same passes and
    save them together at the end). Changing ``layers``, ``sites`` or batch sizes keeps the cells valid.
    Partial results of another model, prompt set or config there are an error, or, with ``restart_stale``
    (for a pipeline's own run folder, where ``--reuse`` may have seeded them), ignored and overwritten.
    ``neuron_shard=(rank, world)``: score only neurons ``j`` with ``j % world == rank`` in each cell
    (others are NaN); combine shards with :func:`merge_importance`."""
    cfg = config or ImportanceConfig()
    shard = _check_shard(neuron_shard)
    if cfg.refine and shard is not None:
        raise ConfigError("importance.refine cannot be combined with neuron_shard (each shard would shortlist its "
                          "own neurons); run the cheap method without refine per shard, or refine unsharded.")
    layout = layout or model_layout(model)
    layout.check_sites(cfg.sites)
    shape = layout.shape()
    layers_sel = _resolve_layers(cfg, layout.n_layers)
    if model.training:
        log.warning("model is in training mode (dropout active); importance assumes eval mode. Call model.eval().")
    device = next(model.parameters()).device
    encoded, prompts_hash = _encode(tokenizer, prompts, responses, cfg)
    batches = _make_batches(encoded, cfg, pad_token_id(tokenizer), device)
    key = _run_key(model, cfg, prompts_hash, shard)
    resume = _Resume(resume_path, key, cfg, restart_stale)
    cells = [(layer, site) for layer in layers_sel for site in cfg.sites]
    todo = [c for c in cells if c not in resume.done]
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"method": cfg.method, "n_prompts": len(encoded), "prompts_sha256": prompts_hash,
                            "neuron_shard": list(shard) if shard else None, "run_key": key,
                            "safeneurons_version": package_version(), "paper": PAPER,
                            "resumed_cells": len(cells) - len(todo)}
    if todo:
        runner = {"exact": _exact, "naive": _naive, "first_order": _first_order, "probe": _first_order,
                  "heuristic": _heuristic}[cfg.method]
        runner(model, layout, cfg, batches, len(encoded), todo, shard, resume, progress, meta)
    scores = {c: resume.done[c] for c in cells}
    if cfg.refine:
        scores = _refine(model, layout, cfg, batches, len(encoded), cells, scores, resume_path, key, progress, meta,
                         restart_stale)
    meta["seconds"] = time.perf_counter() - t0
    for (layer, site), v in scores.items():
        covered = v[_shard_indices(v.size, shard)]
        if not np.isfinite(covered).all():
            raise NumericalError(f"non-finite importance at {layer}.{site}; the model produced inf/NaN. "
                                 "Try dtype float32.")
    return ImportanceScores(shape, scores, cfg.to_dict(), meta)


def _refine(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch], n_prompts: int,
            cells: list[Cell], coarse: dict[Cell, np.ndarray], resume_path: str | Path | None, key: str,
            progress: bool, meta: dict[str, Any], restart_stale: bool = False) -> dict[Cell, np.ndarray]:
    """Exact scores for each cell's shortlist (see ``refine`` in the module docstring)."""
    t = time.perf_counter()
    cand = {c: top_indices(v, top_k_count(v.size, cfg.refine)) for c, v in coarse.items()}
    sub = _Resume(Path(resume_path) / "refine" if resume_path is not None else None, key + ":refine", cfg, restart_stale)
    todo = [c for c in cells if c not in sub.done]
    sub_meta: dict[str, Any] = {}
    if todo:
        _exact(model, layout, cfg, batches, n_prompts, todo, None, sub, progress, sub_meta, subset=cand)
    out = {}
    for c in cells:
        v, idx = coarse[c].copy(), cand[c]
        if idx.size:
            exact = sub.done[c][idx]
            v = np.minimum(v, np.nextafter(exact.min(), -np.inf))
            v[idx] = exact
        out[c] = v
    meta["refine"] = {"fraction": cfg.refine, "candidates": int(sum(x.size for x in cand.values())),
                      "seconds": time.perf_counter() - t, "prefix_cache_used": sub_meta.get("prefix_cache_used")}
    return out


def _empty_cell(width: int, shard: tuple[int, int] | None) -> np.ndarray:
    out = np.full(width, np.nan, dtype=np.float64)
    out[_shard_indices(width, shard)] = 0.0
    return out


# ============================================================================ exact


@torch.no_grad()
def _exact(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch], n_prompts: int,
           todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume, progress: bool,
           meta: dict[str, Any], subset: Mapping[Cell, np.ndarray] | None = None) -> None:
    """Batched single-neuron ablations (module docstring); ``subset`` limits each cell's neurons."""
    decoder = decoder_of(model)
    layers = layout.layers

    def neurons_of(cell: Cell) -> np.ndarray:
        idx = _shard_indices(layout.site(cell[1]).width, shard)
        return idx if subset is None else np.intersect1d(idx, subset[cell])

    norm = _final_norm(decoder) if cfg.prefix_cache else None
    use_cache = norm is not None
    if cfg.prefix_cache and norm is None:
        log.info("importance: %s has no recognised final norm; using full forwards (slower, same result).",
                 type(decoder).__name__)
    total = sum(neurons_of(c).size for c in todo) * len(batches)
    bar = _Progress(total, f"importance exact ({len(todo)} cells)", progress)
    checked = False
    try:
        for layer, site in todo:
            lay = layout.site(site)
            neurons = neurons_of((layer, site))
            sums = _empty_cell(lay.width, shard)
            if neurons.size == 0:
                resume.save((layer, site), sums)
                continue
            mask = _RowMask()
            with site_hooks(layout, [(layer, site, mask)]):
                for batch in batches:
                    b = batch.ids.shape[0]
                    reps_max = max(1, cfg.max_rows // b)
                    if use_cache:
                        mask.rows = None
                        cap = _capture(decoder, layers, batch, layer)
                        if not checked:
                            use_cache = _check_cache_path(layers, norm, cap, layer)  # type: ignore[arg-type]
                            checked = True
                        h0 = cap.baseline
                    if not use_cache:
                        mask.rows = None
                        h0 = _final_rep(decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False))
                    for s in range(0, neurons.size, reps_max):
                        chunk = torch.as_tensor(neurons[s:s + reps_max], device=batch.ids.device)
                        reps = int(chunk.numel())
                        mask.rows = torch.arange(b * reps, device=chunk.device)
                        mask.cols = chunk.repeat(b) + lay.offset
                        mask.keep = None if cfg.ablate_positions == "all" else \
                            (~batch.ablate_m).repeat_interleave(reps, 0)
                        if use_cache:
                            h = _run_from(layers, norm, cap, layer, reps)  # type: ignore[arg-type]
                        else:
                            h = _final_rep(decoder(input_ids=batch.ids.repeat_interleave(reps, 0),
                                                   attention_mask=batch.mask.repeat_interleave(reps, 0),
                                                   use_cache=False))
                        mask.rows = None
                        d = _distances(h, h0, batch.score_w, reps, cfg.norm).view(b, reps).sum(0)
                        sums[neurons[s:s + reps]] += d.cpu().numpy()
                        bar.update(reps * 1)
            resume.save((layer, site), sums / n_prompts)
    finally:
        bar.close()
    meta["prefix_cache_used"] = use_cache


def _check_cache_path(layers: list[nn.Module], norm: nn.Module, cap: _Captured, start: int) -> bool:
    """Compare the layer-call path (two replicas) with the ordinary forward once; False = fall back."""
    try:
        h = _run_from(layers, norm, cap, start, 2)
    except Exception as exc:  # an unsupported layer signature
        log.info("importance: the cached-prefix layer path failed (%s: %s); using full forwards instead "
                 "(slower, same result).", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    ref = cap.baseline.repeat_interleave(2, 0)
    if h.shape != ref.shape:
        log.info("importance: the cached-prefix layer path gives shape %s, not %s; using full forwards.",
                 tuple(h.shape), tuple(ref.shape))
        return False
    scale = float(ref.abs().max()) + 1.0
    tol = 1e-4 if ref.dtype == torch.float32 or ref.dtype == torch.float64 else 5e-2
    err = float((h - ref).abs().max()) / scale
    if not err <= tol:
        log.info("importance: the cached-prefix layer path differs from the full forward (rel. error %.2e); "
                 "using full forwards instead (slower, same result).", err)
        return False
    return True


# ============================================================================ naive


def _zero_one(layout: ModelLayout, layer: int, site: str, j: int,
              keep: torch.Tensor | None) -> AbstractContextManager[None]:
    """Zero neuron ``j``: at every position (as :func:`~safeneurons.intervene.hooks.ablate` does: the
    activation times a 0/1 vector), else where ``keep`` is 0."""
    col = layout.site(site).offset + j

    def zero_all(x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(x.shape[-1], dtype=x.dtype, device=x.device)
        a[col] = 0
        return x * a

    def zero_kept(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, :, col] = x[:, :, col] * keep.to(x.dtype)
        return x

    return site_hooks(layout, [(layer, site, zero_all if keep is None else zero_kept)])


@torch.no_grad()
def _naive(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch], n_prompts: int,
           todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume, progress: bool,
           meta: dict[str, Any]) -> None:
    decoder = decoder_of(model)
    base = [_final_rep(decoder(input_ids=b.ids, attention_mask=b.mask, use_cache=False)) for b in batches]
    total = sum(_shard_indices(layout.site(s).width, shard).size for _, s in todo) * len(batches)
    bar = _Progress(total, f"importance naive ({len(todo)} cells)", progress)
    try:
        for layer, site in todo:
            width = layout.site(site).width
            sums = _empty_cell(width, shard)
            for j in _shard_indices(width, shard):
                for batch, h0 in zip(batches, base):
                    keep = None if cfg.ablate_positions == "all" else ~batch.ablate_m
                    with _zero_one(layout, layer, site, int(j), keep):
                        h = _final_rep(decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False))
                    sums[j] += float(_distances(h, h0, batch.score_w, 1, cfg.norm).sum())
                    bar.update(1)
            resume.save((layer, site), sums / n_prompts)
    finally:
        bar.close()


# ============================================================================ first order / probes


def _probe_matrix(kind: str, k: int, d: int, seed: int, prompt: int, slot: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """``(U [k, d], weight)`` with ``weight · Σ_i (v·u_i)² ≈ ‖v‖²`` (E over the seeded draw)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + prompt) * 7919 + slot)
    if kind == "gaussian":
        u = torch.randn(k, d, generator=g, dtype=torch.float64)
    elif kind == "rademacher":
        u = torch.randint(0, 2, (k, d), generator=g).to(torch.float64) * 2 - 1
    else:  # orthogonal: blocks of rows of random orthogonal matrices, scaled to E[u uᵀ] = I
        blocks, left = [], k
        while left > 0:
            q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar-distributed
            blocks.append(q.T[: min(left, d)] * math.sqrt(d))
            left -= d
        u = torch.cat(blocks)
    return u.to(device=device, dtype=dtype), 1.0 / k


@contextmanager
def _frozen_params(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad inside the block (no weight-gradient graph), restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def _vjps(h: torch.Tensor, inputs: list[torch.Tensor], g_out: torch.Tensor,
          state: dict[str, bool]) -> list[torch.Tensor | None]:
    """``[k, *input.shape]`` gradients for k stacked output cotangents ``g_out [k, *h.shape]``
    (one vmapped backward; one backward per cotangent where vmap is unsupported)."""
    if state.get("batched", True) and g_out.shape[0] > 1:
        try:
            return list(torch.autograd.grad(h, inputs, grad_outputs=g_out, retain_graph=True, allow_unused=True,
                                            is_grads_batched=True))
        except (RuntimeError, NotImplementedError) as exc:
            state["batched"] = False
            log.info("importance: batched VJPs unsupported here (%s); one backward per probe instead.",
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    outs = [torch.autograd.grad(h, inputs, grad_outputs=g, retain_graph=True, allow_unused=True) for g in g_out]
    return [None if outs[0][i] is None else torch.stack([o[i] for o in outs]) for i in range(len(inputs))]


def _first_order(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch],
                 n_prompts: int, todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume,
                 progress: bool, meta: dict[str, Any]) -> None:
    """Linearised Δh for all neurons at once (attribution patching), see the module docstring.

    For prompt b, scored position s and probe u (d-vector): ``c_j = −Σ_{t ablated} a_{t,j} ∂(h_s·u)/∂a_{t,j}``
    ≈ ``Δh_s·u``; ``‖Δh_s‖² ≈ w Σ_i c_{j,i}²`` with w = 1 for the basis (method ``first_order``) and
    1/k for k random probes (``probe``). One backward per probe gives every scored neuron of every layer."""
    decoder = decoder_of(model)
    exact_jac = cfg.method == "first_order"
    sums = {c: _empty_cell(layout.site(c[1]).width, shard) for c in todo}
    n_vjp = 0
    vstate: dict[str, bool] = {}
    bar = _Progress(len(batches), f"importance {cfg.method} ({len(todo)} cells)", progress, unit="batch")
    try:
        for batch in batches:
            acts: dict[Cell, torch.Tensor] = {}
            deltas: dict[Cell, torch.Tensor] = {}

            def make(cell: Cell) -> Callable[[torch.Tensor], torch.Tensor]:
                lay = layout.site(cell[1])

                def fn(x: torch.Tensor) -> torch.Tensor:
                    a = x[..., lay.offset: lay.offset + lay.width]
                    acts[cell] = a.detach()
                    dlt = torch.zeros_like(a, requires_grad=True)
                    deltas[cell] = dlt
                    pad = (lay.offset, x.shape[-1] - lay.offset - lay.width)
                    return x + torch.nn.functional.pad(dlt, pad) if pad != (0, 0) else x + dlt

                return fn

            with torch.enable_grad(), _frozen_params(model), \
                    site_hooks(layout, [(cell[0], cell[1], make(cell)) for cell in todo]):
                h = _final_rep(decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False))
            b, t, d = h.shape
            order = list(deltas)
            inputs = [deltas[c] for c in order]
            # attribution weights −a_{t,j} on the ablated positions, 0 elsewhere
            w_ab = {c: -(acts[c] * batch.ablate_m.unsqueeze(-1).to(acts[c].dtype)) for c in order}
            per_elem = sum(x.numel() for x in inputs) * h.element_size() * 3  # grads + products
            chunk = max(1, min(64, (256 << 20) // max(1, per_elem)))
            # slots: scored positions (one for "last"; the i-th response token for "response")
            pos_lists = [torch.nonzero(batch.score_w[r] > 0).squeeze(1).tolist() for r in range(b)]
            per_prompt = {c: torch.zeros((b, acts[c].shape[-1]), dtype=torch.float64, device=h.device)
                          for c in order}
            n_slots_max = max(len(p) for p in pos_lists)
            # each group of slots shares one set of VJPs: one slot at a time, or all of them (joint_positions:
            # independent probes at every position sum, in expectation, to Σ_t ‖Δh_t‖²)
            groups = [list(range(n_slots_max))] if cfg.joint_positions else [[s] for s in range(n_slots_max)]
            for group in groups:
                entries = [(r, slot) for slot in group for r in range(b) if slot < len(pos_lists[r])]
                rows = sorted({r for r, _ in entries})
                e_rows = torch.tensor([r for r, _ in entries], device=h.device)
                pos = torch.tensor([pos_lists[r][slot] for r, slot in entries], device=h.device)
                rows_t = torch.tensor(rows, device=h.device)
                if exact_jac:
                    k, weight = d, 1.0
                    probes = torch.eye(d, dtype=h.dtype, device=h.device).unsqueeze(1).expand(d, len(entries), d)
                else:
                    k, weight = cfg.n_probes, 1.0 / cfg.n_probes
                    probes = torch.stack([_probe_matrix(cfg.probe_kind, k, d, cfg.seed, batch.idx[r], slot,
                                                        h.device, h.dtype)[0] for r, slot in entries], 1)  # [k, E, d]
                est2 = {c: torch.zeros((b, acts[c].shape[-1]), dtype=torch.float64, device=h.device) for c in order}
                for s0 in range(0, k, chunk):
                    u = probes[s0:s0 + chunk]
                    g_out = torch.zeros((u.shape[0], b, t, d), dtype=h.dtype, device=h.device)
                    g_out[:, e_rows, pos] = u
                    grads = _vjps(h, inputs, g_out, vstate)
                    n_vjp += u.shape[0]
                    for c, g in zip(order, grads):
                        if g is not None:
                            proj = (w_ab[c].unsqueeze(0) * g).sum(2).to(torch.float64)  # [k', B, width]
                            est2[c] += (proj * proj).sum(0)
                    del grads, g_out
                for c in order:
                    e2 = est2[c][rows_t] * weight  # joint: the sum over the group's slots
                    val = e2 if cfg.norm == "l2_squared" else e2.sqrt()
                    n_slots = torch.tensor([len(pos_lists[r]) for r in rows], dtype=torch.float64, device=h.device)
                    per_prompt[c][rows_t] += val / n_slots.unsqueeze(1)
            for c in order:
                idx = _shard_indices(acts[c].shape[-1], shard)
                sums[c][idx] += per_prompt[c].sum(0).cpu().numpy()[idx]
            del h, acts, deltas, inputs, w_ab
            bar.update(1)
    finally:
        bar.close()
    meta["vjps"] = n_vjp
    meta["batched_vjps"] = vstate.get("batched", True)
    for c in todo:
        resume.save(c, sums[c] / n_prompts)


# ============================================================================ heuristic


def _site_matrix(layout: ModelLayout, layer: int, site: str) -> torch.Tensor:
    """The weight matrix of the module that consumes an input site, as ``[d_out, width]``."""
    lay = layout.site(site)
    ps = lay.surgery
    w = getattr(get_module(layout.layers[layer], ps.module), ps.param).detach()
    return (w if ps.dim == 1 else w.T).to(torch.float64)


def _outgoing_norms(layout: ModelLayout, layer: int, site: str) -> torch.Tensor:
    """‖outgoing weight‖ per neuron (see the module docstring for q/k/v)."""
    if site in ("mlp", "o"):
        return _site_matrix(layout, layer, site).norm(dim=0)
    wo = _site_matrix(layout, layer, "o")  # [d, n_heads * head_dim]
    hd, nh, nkv = layout.head_dim, layout.n_heads, layout.n_kv_heads
    col = wo.norm(dim=0).view(nh, hd)  # per query head, per head coordinate
    group = nh // nkv
    if site == "v":  # v coordinate (g, e) feeds o columns (h, e) for the heads h of group g
        return (col.pow(2).view(nkv, group, hd).sum(1)).sqrt().reshape(-1)
    head = col.pow(2).sum(1).sqrt() / math.sqrt(hd)  # per query head
    if site == "q":
        return head.repeat_interleave(hd)
    return (head.pow(2).view(nkv, group).sum(1)).sqrt().repeat_interleave(hd)  # k


@torch.no_grad()
def _heuristic(model: nn.Module, layout: ModelLayout, cfg: ImportanceConfig, batches: list[_Batch],
               n_prompts: int, todo: list[Cell], shard: tuple[int, int] | None, resume: _Resume,
               progress: bool, meta: dict[str, Any]) -> None:
    decoder = decoder_of(model)
    sums = {c: _empty_cell(layout.site(c[1]).width, shard) for c in todo}
    norms = {c: _outgoing_norms(layout, *c) for c in todo}
    bar = _Progress(len(batches), f"importance heuristic ({len(todo)} cells)", progress, unit="batch")
    try:
        for batch in batches:
            acc: dict[Cell, torch.Tensor] = {}

            def make(cell: Cell) -> Callable[[torch.Tensor], torch.Tensor]:
                lay = layout.site(cell[1])

                def fn(x: torch.Tensor) -> torch.Tensor:
                    a = x[..., lay.offset: lay.offset + lay.width].to(torch.float64)
                    m = batch.ablate_m.unsqueeze(-1).to(a.dtype)
                    acc[cell] = ((a * a * m).sum(1)).sqrt().sum(0)  # Σ_prompts ‖a_{·,j}‖₂ over ablated tokens
                    return x

                return fn

            with site_hooks(layout, [(cell[0], cell[1], make(cell)) for cell in todo]):
                decoder(input_ids=batch.ids, attention_mask=batch.mask, use_cache=False)
            for c in todo:
                idx = _shard_indices(sums[c].size, shard)
                sums[c][idx] += (acc[c] * norms[c].to(acc[c].device)).cpu().numpy()[idx]
            bar.update(1)
    finally:
        bar.close()
    for c in todo:
        resume.save(c, sums[c] / n_prompts)


# ============================================================================ shards and comparison


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


__all__ = ["ABLATE_POSITIONS", "METHODS", "NORMS", "POSITIONS", "ImportanceConfig", "ImportanceScores",
           "compare_estimators", "deactivation_importance", "merge_importance", "top_indices", "top_k_count"]
