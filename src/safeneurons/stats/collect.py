"""One streaming pass over prompt groups that accumulates per-neuron activation moments.

Positions (``position``):

* ``last`` (default): the last prompt token, i.e. the last token before the answer;
* ``prompt_mean``: the mean over the prompt's tokens (one sample per prompt);
* ``prompt_tokens``: every prompt token is a sample;
* ``response_mean`` / ``response_tokens``: the same over the response tokens of (prompt, response) pairs;
* ``all_tokens``: every non-padding token is a sample.

Padding never counts. Only the decoder runs (the LM head is skipped), and activations are reduced
inside the hooks, so memory does not depend on the number of prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from safeneurons.data.prompts import PromptSet
from safeneurons.errors import DataError, NumericalError
from safeneurons.io import atomic_path, read_safetensors
from safeneurons.models.hooks import site_hooks
from safeneurons.models.layout import ModelLayout, model_layout
from safeneurons.neurons import ModelShape
from safeneurons.stats.encode import Encoded, encode, length_sorted_batches, pad_batch, pad_token_id
from safeneurons.stats.moments import RunningMoments, Span, Workspace

log = logging.getLogger("safeneurons.stats")
POSITIONS = ("last", "prompt_mean", "prompt_tokens", "response_mean", "response_tokens", "all_tokens")


@dataclass
class StatsConfig:
    position: str = field(default="last", metadata={"help": f"token positions: {', '.join(POSITIONS)}"})
    sites: tuple[str, ...] = field(default=("mlp",), metadata={"help": "neuron sites: mlp, q, k, v, o"})
    batch_size: int = field(default=8, metadata={"help": "prompts per forward pass"})
    chat_template: bool = field(default=True, metadata={"help": "apply the tokenizer's chat template"})
    system_prompt: str | None = field(default=None, metadata={"help": "system message for the chat template"})
    track_positive: bool = field(default=False, metadata={"help": "also count activations > 0"})
    max_length: int = field(default=512, metadata={"help": "truncate longer inputs (tokens)"})

    def __post_init__(self) -> None:
        from safeneurons.errors import ConfigError

        if self.position not in POSITIONS:
            raise ConfigError(f"stats.position {self.position!r} is not one of {', '.join(POSITIONS)}.")
        self.sites = tuple(self.sites)
        if self.batch_size < 1:
            raise ConfigError(f"stats.batch_size must be >= 1, got {self.batch_size}.")


@dataclass
class ActivationStats:
    """Moments per group (e.g. ``harmful``/``harmless``), per (layer, site)."""

    shape: ModelShape
    position: str
    moments: dict[str, dict[tuple[int, str], RunningMoments]]
    meta: dict[str, Any] = field(default_factory=dict)

    def groups(self) -> list[str]:
        return list(self.moments)

    def get(self, group: str, layer: int, site: str) -> RunningMoments:
        try:
            return self.moments[group][(layer, site)]
        except KeyError:
            raise DataError(f"no statistics for group {group!r} at {layer}.{site} "
                            f"(groups: {self.groups()})") from None

    def count(self, group: str) -> int:
        first = next(iter(self.moments[group].values()))
        return first.n

    def table(self, group: str, site: str) -> tuple[int, torch.Tensor, torch.Tensor]:
        """``(n, mean[L, W], var[L, W])`` in float64 for one group and site."""
        rows = [self.get(group, layer, site) for layer in range(self.shape.n_layers)]
        return rows[0].n, torch.stack([r.mean for r in rows]), torch.stack([r.var for r in rows])

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Merge another shard (same model shape and position) into this one, in place."""
        if not self.shape.compatible(other.shape) or self.position != other.position:
            raise DataError("cannot merge statistics of different model shapes or positions")
        for g, cells in other.moments.items():
            mine = self.moments.setdefault(g, {})
            for key, m in cells.items():
                if key in mine:
                    mine[key].merge(m)
                else:
                    mine[key] = RunningMoments.from_state_dict(m.state_dict())
        return self

    def save(self, path: str | Path) -> None:
        import json

        tensors = {}
        for g, cells in self.moments.items():
            for (layer, site), m in cells.items():
                for k, v in m.state_dict().items():
                    tensors[f"{g}/{layer}.{site}/{k}"] = v.contiguous()
        meta = {"format": "safeneurons.stats/1", "position": self.position,
                "shape": json.dumps(self.shape.to_dict()), "meta": json.dumps(self.meta, default=str)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "ActivationStats":
        import json

        raw, meta = read_safetensors(path)
        if meta.get("format") != "safeneurons.stats/1":
            raise DataError(f"{path}: not a safeneurons statistics file.")
        parts: dict[str, dict[tuple[int, str], dict[str, torch.Tensor]]] = {}
        for key, t in raw.items():
            g, cell, k = key.rsplit("/", 2)
            layer, site = cell.split(".")
            parts.setdefault(g, {}).setdefault((int(layer), site), {})[k] = t
        moments = {g: {c: RunningMoments.from_state_dict(d) for c, d in cells.items()} for g, cells in parts.items()}
        return cls(ModelShape.from_dict(json.loads(meta["shape"])), meta["position"], moments,
                   json.loads(meta.get("meta", "{}")))


@dataclass(frozen=True)
class BatchPlan:
    """Which activations of a right-padded batch ``[B, T]`` count, built once per batch from the token counts.

    The hooks view a site's activation as rows ``[B*T, W]`` (row ``r*T + t`` is token ``t`` of prompt ``r``).
    Token positions accumulate the rows in ``spans`` where they are (no copy; adjacent spans are joined, so
    a batch without padding is one span). ``last`` gathers one row per prompt (``gather``); ``prompt_mean`` /
    ``response_mean`` average each prompt's rows ``segments`` into one sample; both give ``B`` samples and
    ``spans == ((0, B),)``. No position reads a padding row, so padding cannot change a result."""

    n: int
    spans: tuple[Span, ...]
    gather: torch.Tensor | None = None
    segments: tuple[Span, ...] | None = None

    def samples(self, x: torch.Tensor, ws: Workspace) -> torch.Tensor:
        """The rows that ``spans`` index, from a site activation ``x`` ``[B, T, W]``."""
        rows = x.reshape(-1, x.shape[-1])
        if self.gather is not None:  # .to() is a no-op unless the model is split over devices
            return rows.index_select(0, self.gather.to(rows.device))
        if self.segments is not None:  # a prompt's mean as a matrix product with ones: one read, BLAS
            return torch.cat([ws.ones(b - a, rows.dtype, rows.device) @ rows[a:b] / (b - a)
                              for a, b in self.segments])
        return rows


def batch_plan(batch: Sequence[Encoded], width: int, position: str,
               device: torch.device | str = "cpu") -> BatchPlan:
    """The :class:`BatchPlan` of ``position`` for ``batch`` padded on the right to ``width`` tokens."""
    segs = []
    for r, e in enumerate(batch):
        n, p = len(e.ids), e.prompt_len
        if position == "last":
            a, b = p - 1, p
        elif position.startswith("prompt"):
            a, b = 0, p
        elif position.startswith("response"):
            if n <= p:
                raise DataError(f"position {position!r} needs a response, but prompt {r} of the batch has none.")
            a, b = p, n
        else:
            a, b = 0, n
        segs.append((r * width + a, r * width + b))
    if position == "last":
        gather = torch.tensor([a for a, _ in segs], dtype=torch.long).to(device)
        return BatchPlan(len(batch), ((0, len(batch)),), gather=gather)
    if position.endswith("_mean"):
        return BatchPlan(len(batch), ((0, len(batch)),), segments=tuple(segs))
    spans: list[Span] = []
    for a, b in segs:
        if spans and spans[-1][1] == a:
            spans[-1] = (spans[-1][0], b)
        else:
            spans.append((a, b))
    return BatchPlan(sum(b - a for a, b in segs), tuple(spans))


def _prompt_names(idx: Sequence[int]) -> str:
    """``"3-5"`` for a run of consecutive indices, else the sorted list (the first 8)."""
    s = sorted(idx)
    if s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}" if len(s) > 1 else str(s[0])
    return ", ".join(map(str, s[:8])) + (", ..." if len(s) > 8 else "")


#: batches between two finiteness checks (each check is one host sync; a failing check still names the batch)
CHECK_EVERY = 16


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (``model.model`` for Llama-like, ``transformer`` for GPT-2)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return base if isinstance(base, nn.Module) else model


@torch.no_grad()
def collect_stats(model: nn.Module, tokenizer: Any, groups: Mapping[str, PromptSet | Sequence[str]],
                  config: StatsConfig | None = None, layout: ModelLayout | None = None,
                  shape: ModelShape | None = None, progress: bool = True) -> ActivationStats:
    """Accumulate activation moments of ``config.sites`` for each named prompt group."""
    cfg = config or StatsConfig()
    layout = layout or model_layout(model)
    layout.check_sites(cfg.sites)
    shape = shape or layout.shape()
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    decoder = decoder_of(model)
    workspace = Workspace()  # scratch shared by every hook and batch of this pass
    result: dict[str, dict[tuple[int, str], RunningMoments]] = {}
    meta: dict[str, Any] = {"position": cfg.position, "chat_template": cfg.chat_template, "groups": {}}
    for gname, prompts in groups.items():
        texts = prompts.texts() if isinstance(prompts, PromptSet) else list(prompts)
        responses = prompts.responses() if isinstance(prompts, PromptSet) else None
        if not texts:
            raise DataError(f"prompt group {gname!r} is empty; nothing to collect.")
        if cfg.position.startswith("response") and (responses is None or any(r is None for r in responses)):
            raise DataError(f"position {cfg.position!r} needs responses for every prompt of group {gname!r}.")
        with_resp = responses is not None and all(r is not None for r in responses) and (
            cfg.position.startswith("response") or cfg.position == "all_tokens")
        encoded = encode(tokenizer, texts, responses if with_resp else None,
                         cfg.chat_template, cfg.system_prompt, cfg.max_length)
        cells = {(layer, site): RunningMoments(layout.site(site).width, cfg.track_positive)
                 for layer in range(layout.n_layers) for site in cfg.sites}
        state: dict[str, Any] = {}

        def make_hook(layer: int, site: str):
            lay = layout.site(site)
            cell = cells[(layer, site)]

            def observe(x: torch.Tensor) -> None:
                plan: BatchPlan = state["plan"]
                samples = plan.samples(x[..., lay.offset : lay.offset + lay.width], workspace)
                state["probes"].append(cell.add(samples, plan.spans, workspace))
                state["keys"].append((layer, site))

            return observe

        def check(pending: list[tuple[list[int], list[tuple[int, str]], torch.Tensor]]) -> None:
            """One host sync for the pending batches; names the first non-finite (batch, layer, site) in the
            order the forward pass ran the hooks."""
            if not pending:
                return
            finite = torch.isfinite(torch.cat([p for _, _, p in pending])).cpu()
            if not bool(finite.all()):
                first = int((~finite).nonzero()[0])
                for idx, keys, _ in pending:
                    if first < len(keys):
                        layer, site = keys[first]
                        raise NumericalError(
                            f"non-finite activations at {layer}.{site} for prompts {_prompt_names(idx)} of "
                            f"group {gname!r}; not averaged. Try dtype float32.")
                    first -= len(keys)
            pending.clear()

        hooks = [(layer, site, make_hook(layer, site))
                 for layer in range(layout.n_layers) for site in cfg.sites]
        pending: list[tuple[list[int], list[tuple[int, str]], torch.Tensor]] = []
        with site_hooks(layout, hooks):
            batches = length_sorted_batches(encoded, cfg.batch_size)
            bar = tqdm(batches, desc=f"stats {gname}", disable=not progress, unit="batch", leave=False)
            for idx in bar:
                batch = [encoded[i] for i in idx]
                ids, mask = pad_batch(batch, pad, "right")
                state["plan"] = batch_plan(batch, ids.shape[1], cfg.position, device)
                state["probes"], state["keys"] = [], []
                decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
                # each hook's probe is non-finite exactly when its activations were: kept on the device and
                # read every CHECK_EVERY batches (one sync), so the forward passes are not stalled per batch
                if state["probes"]:
                    pending.append((idx, state["keys"], torch.stack([p.to(device) for p in state["probes"]])))
                if len(pending) >= CHECK_EVERY:
                    check(pending)
            check(pending)
        result[gname] = {cell: moments.to("cpu") for cell, moments in cells.items()}
        meta["groups"][gname] = {
            "n_prompts": len(texts),
            "sha256": prompts.sha256 if isinstance(prompts, PromptSet) else None,
            "name": prompts.name if isinstance(prompts, PromptSet) else gname,
        }
    return ActivationStats(shape, cfg.position, result, meta)
