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

Estimators (``method``, the names of the ``ESTIMATORS`` registry):

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

Modules: ``config`` (:class:`ImportanceConfig`, its choices, the ``ESTIMATORS`` registry), ``scores`` (the
result type and file, neuron shards, merge, top-p, comparison), ``batches`` (prompt encoding and scored
batches), ``resume`` (partial results and their key), ``rerun`` (prefix capture and re-running from a layer),
``exact`` (``exact``, ``naive``, ``refine``), ``first_order`` (``first_order``, ``probe``), ``heuristic``;
this package holds the entry point :func:`deactivation_importance`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from safeneurons.errors import ConfigError, NumericalError
from safeneurons.identify.importance import exact, first_order, heuristic  # noqa: F401  (registers the estimators)
from safeneurons.identify.importance.batches import _encode, _make_batches
from safeneurons.identify.importance.batches import (
    _texts_and_responses as _texts_and_responses,  # multilingual
)
from safeneurons.identify.importance.config import (
    ABLATE_POSITIONS,
    ESTIMATORS,
    METHODS,
    NORMS,
    PAPER,
    POSITIONS,
    PROBE_KINDS,
    ImportanceConfig,
    _resolve_layers,
)
from safeneurons.identify.importance.exact import _refine
from safeneurons.identify.importance.resume import PARTIAL_FORMAT, _Resume, _run_key
from safeneurons.identify.importance.scores import (
    FORMAT,
    ImportanceScores,
    _check_shard,
    _shard_indices,
    compare_estimators,
    merge_importance,
    top_indices,
    top_k_count,
)
from safeneurons.io import package_version
from safeneurons.models.layout import ModelLayout, model_layout
from safeneurons.stats.encode import pad_token_id

log = logging.getLogger(__name__)


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
        ESTIMATORS.get(cfg.method)(model, layout, cfg, batches, len(encoded), todo, shard, resume, progress, meta)
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


__all__ = ["ABLATE_POSITIONS", "ESTIMATORS", "FORMAT", "METHODS", "NORMS", "PAPER", "PARTIAL_FORMAT", "POSITIONS",
           "PROBE_KINDS", "ImportanceConfig", "ImportanceScores", "compare_estimators", "deactivation_importance",
           "merge_importance", "top_indices", "top_k_count"]
