"""How deactivation importance is computed: :class:`ImportanceConfig`, its choices, and the registry of
estimators (``ESTIMATORS``) that ``importance.method`` names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from safeneurons.errors import ConfigError
from safeneurons.neurons import SITES
from safeneurons.registry import Registry

# the estimator names in the order the help text gives them; ESTIMATORS below holds their functions
METHODS = ("exact", "naive", "first_order", "probe", "heuristic")
POSITIONS = ("last", "response")
ABLATE_POSITIONS = ("all", "last", "response")
NORMS = ("l2", "l2_squared")
PROBE_KINDS = ("orthogonal", "gaussian", "rademacher")
PAPER = {"title": "Who Transfers Safety? Identifying and Targeting Cross-Lingual Shared Safety Neurons",
         "arxiv": "2602.01283"}

Cell = tuple[int, str]

# ``importance.method`` -> estimator. An estimator scores the (layer, site) cells it is given and saves each
# into the resume store: ``fn(model, layout, cfg, batches, n_prompts, todo, shard, resume, progress, meta)``.
# Each entry's meta: ``reads``, the ImportanceConfig fields the estimator function reads itself (every
# estimator also depends, through the batches and cells it is given, on sites, layers, position,
# ablate_positions, batch_size, chat_template, system_prompt and max_length), and ``exact``: True where it
# ablates for real, so ``refine`` does not apply. The estimator modules register themselves when the
# package imports them.
Estimator = Callable[..., None]
ESTIMATORS: Registry[Estimator] = Registry("importance estimator")


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
        if self.method not in ESTIMATORS:
            raise ConfigError(f"importance.method {self.method!r} is not one of {', '.join(ESTIMATORS.names())}.")
        checks = (("position", POSITIONS), ("ablate_positions", ABLATE_POSITIONS), ("norm", NORMS),
                  ("probe_kind", PROBE_KINDS))
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
        if self.refine > 0 and ESTIMATORS.entry(self.method).meta["exact"]:
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
    def from_dict(cls, d: Mapping[str, Any]) -> ImportanceConfig:
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
