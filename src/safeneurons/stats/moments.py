"""Streaming per-feature moments: float32 partial sums per batch on the batch's device, merged in float64.

Each batch is reduced to shifted sums ``S1 = sum(x - c)`` and ``S2 = sum((x - c)^2)`` around a per-feature
shift ``c`` (the running mean so far, or for the first batch the mean of its first rows), in float32 (float64
for float64 input). In float64 these give the batch's ``mu_B = c + S1/m`` and ``M2_B = S2 - S1^2/m``: the
shifted-data algorithm of Chan, Golub & LeVeque, "Algorithms for computing the sample variance: analysis and
recommendations" (The American Statistician 37(3), 1983). The subtraction costs a factor
``1 + ((mu_B - c) / std)^2`` of float32 precision, small with ``c`` near the mean, and ``x - c`` of two
nearby float32 numbers is exact (Sterbenz), so a large common offset costs nothing. The batch is merged into
the running ``(n, mu, M2)`` in float64: ``delta = mu_B - mu``, ``n' = n + m``, ``mu' = mu + delta * m / n'``,
``M2' = M2 + M2_B + delta^2 * n m / n'`` (Chan, Golub & LeVeque 1979). Variance is ``M2 / (n - 1)``.
Activations are never stored, so memory does not grow with the number of prompts.

Stated tolerance of the float32 partial sums (tests/unit/test_stats.py and test_stats_batches.py, the latter
on the activations a model's hooks really see): against float64 moments of the same values, the mean is
within ``1e-6 * s`` (``s``: the feature's largest ``|x - mean|``) and the variance within ``1e-5`` relative.
Each chunk is summed in float32 and the chunk sums in float64, so the error does not grow with the number
of chunks or batches. The largest error measured on the 0.5B model's real activations is in
benchmarks/README.md.

Why this form, not ``torch.var_mean`` (measured on a 2-core AVX-512 CPU, [1024, 4864] float32, see
benchmarks/README.md "Where the statistics pass spends its time"): ATen's CPU ``var_mean`` over a dimension
is a Welford loop in double (3-9 ns per value, 14 ms for one 0.5B layer's batch), and
``sum(dtype=float64)`` of a float32 tensor first makes a float64 copy of it. Here the sums are matrix
products with a ones vector (BLAS, one read of the batch) over row chunks small enough that the
``(x - c)^2`` scratch stays in the CPU cache; the scratch is allocated once (:class:`Workspace`), not per
batch. Only the rows named in ``spans`` are read, so padding is skipped without copying the selected rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

#: chunk size, in values and rows. On a CPU at most 128 rows and 2^20 values (4 MiB of float32 scratch, kept
#: in the cache): MKL sums a matrix product's rows one after another, so its float32 error grows with the rows
#: (relative error of the variance measured at width 4864: 1.6e-7 at 128 rows, 1.8e-6 at 1024), and 128 rows
#: was also the fastest chunk (2.2 ms for 1020 x 4864 values; 16 rows: 5.3, 1024 rows: 4.4). On an
#: accelerator the batch is one chunk unless it is larger than 2^24 values (64 MiB of float32 scratch).
CHUNK_VALUES = {"cpu": 1 << 20}
CHUNK_VALUES_OTHER = 1 << 24
CHUNK_ROWS = {"cpu": 128}

Span = tuple[int, int]


class Workspace:
    """Scratch buffers and ones vectors reused by every batch and every hook of one collection pass.

    Hooks run one after another within a forward pass, so one buffer per (device, dtype) serves them all."""

    def __init__(self, chunk_values: int | None = None) -> None:
        self.chunk_values = chunk_values
        self._scratch: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._ones: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def chunk_rows(self, width: int, device: torch.device) -> int:
        if self.chunk_values:
            return max(1, self.chunk_values // max(width, 1))
        rows = max(1, CHUNK_VALUES.get(device.type, CHUNK_VALUES_OTHER) // max(width, 1))
        return min(rows, CHUNK_ROWS.get(device.type, rows))

    def scratch(self, rows: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``[rows, width]`` buffer (contents undefined), grown when a larger one is asked for."""
        key = (device, dtype)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < rows * width:
            buf = self._scratch[key] = torch.empty(rows * width, dtype=dtype, device=device)
        return buf[: rows * width].view(rows, width)

    def ones(self, rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``[1, rows]`` row of ones (the left factor of a column sum as a matrix product)."""
        key = (device, dtype)
        one = self._ones.get(key)
        if one is None or one.shape[1] < rows:
            one = self._ones[key] = torch.ones(1, rows, dtype=dtype, device=device)
        return one[:, :rows]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is summed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def shifted_sums(v: torch.Tensor, spans: Sequence[Span], shift: torch.Tensor | None, ws: Workspace,
                 track_positive: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(c, S1, S2, n_positive)`` of the rows ``v[a:b]`` for each ``(a, b)`` in ``spans`` (``v``: [N, W]).

    ``c`` is ``shift`` (cast to the compute dtype) or, when ``shift`` is None, the mean of the first
    chunk's rows. ``S1``/``S2`` are ``[W]`` float64 sums, on ``v``'s device, of ``x - c`` and ``(x - c)^2``;
    each chunk is summed in :func:`compute_dtype` (a BLAS product) and the chunk sums are added in float64,
    so the error does not grow with the number of chunks. They are non-finite when any selected value is
    (no host sync here)."""
    width, dev = v.shape[1], v.device
    cd = compute_dtype(v.dtype)
    rows = ws.chunk_rows(width, dev)
    s1 = torch.zeros(1, width, dtype=torch.float64, device=dev)
    s2 = torch.zeros(1, width, dtype=torch.float64, device=dev)
    pos = torch.zeros(width, dtype=torch.int64, device=dev) if track_positive else None
    c: torch.Tensor | None = None if shift is None else shift.to(device=dev, dtype=cd)
    for a, b in spans:
        for lo in range(a, b, rows):
            hi = min(b, lo + rows)
            chunk = v[lo:hi]
            d = ws.scratch(hi - lo, width, cd, dev)
            one = ws.ones(hi - lo, cd, dev)
            if c is None:  # first batch: shift by the mean of its first chunk
                first = chunk if chunk.dtype == cd else d.copy_(chunk)
                c = (one @ first)[0] / (hi - lo)
            torch.sub(chunk, c, out=d)
            s1 += one @ d
            d.square_()
            s2 += one @ d
            if pos is not None:
                pos += (chunk > 0).sum(0)
    if c is None:
        c = torch.zeros(width, dtype=cd, device=dev)
    return c, s1[0], s2[0], pos


@dataclass
class RunningMoments:
    """Count, mean, M2 and (optionally) the count of positive values, per feature (float64 state, updated in
    place by :meth:`add` and :meth:`merge`)."""

    width: int
    track_positive: bool = False
    n: int = 0
    mean: torch.Tensor = field(default=None)  # type: ignore[assignment]
    m2: torch.Tensor = field(default=None)  # type: ignore[assignment]
    n_positive: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = torch.zeros(self.width, dtype=torch.float64)
        if self.m2 is None:
            self.m2 = torch.zeros(self.width, dtype=torch.float64)
        if self.track_positive and self.n_positive is None:
            self.n_positive = torch.zeros(self.width, dtype=torch.float64)

    def add(self, x: torch.Tensor, spans: Sequence[Span] | None = None,
            workspace: Workspace | None = None) -> torch.Tensor:
        """Add the rows of ``x`` (``[rows, width]``, any float dtype/device) named by ``spans`` (all rows when
        None) and return a 0-dim probe on ``x``'s device that is non-finite exactly when a selected value
        is (or ``(x - c)^2`` overflowed the compute dtype); reading it is left to the caller, so a pass can
        check many batches with one host sync."""
        if x.ndim != 2 or x.shape[1] != self.width:
            raise ValueError(f"expected [samples, {self.width}], got {tuple(x.shape)}")
        spans = [(0, int(x.shape[0]))] if spans is None else [(a, b) for a, b in spans if b > a]
        if any(a < 0 or b > x.shape[0] for a, b in spans):
            raise ValueError(f"spans {spans} reach outside the {x.shape[0]} rows")
        m = sum(b - a for a, b in spans)
        if m == 0:
            return torch.zeros((), dtype=torch.float64, device=x.device)
        x = x.detach()
        if self.mean.device != x.device:  # accumulate where the batches are: no per-batch copy, no sync
            self.to(x.device)
        c, s1, s2, pos = shifted_sums(x, spans, self.mean if self.n else None, workspace or Workspace(),
                                      self.track_positive)
        mu_b = c.to(torch.float64) + s1 / m
        m2_b = (s2 - s1 * s1 / m).clamp_min(0)
        self._merge(m, mu_b, m2_b, None if pos is None else pos.to(torch.float64))
        return s2.sum()

    def to(self, device: torch.device | str) -> "RunningMoments":
        """Move the accumulator to ``device`` (in place) and return self."""
        self.mean, self.m2 = self.mean.to(device), self.m2.to(device)
        if self.n_positive is not None:
            self.n_positive = self.n_positive.to(device)
        return self

    def _merge(self, m: int, mu_b: torch.Tensor, m2_b: torch.Tensor, pos_b: torch.Tensor | None) -> None:
        if m == 0:
            return
        n = self.n
        tot = n + m
        # Chan et al.'s pairwise update, in place: the state tensors keep the addresses they got before the
        # first forward pass. Re-allocating them per batch (``mean = mean + ...``) put long-lived 40 KB blocks
        # between the forward's freed activations, and glibc's heap then kept 100-350 MiB more than a bare
        # forward (benchmarks/README.md, "Peak memory"). Same operations in the same order: same bits.
        delta = mu_b - self.mean
        self.m2.add_(m2_b).add_(delta.square().mul_(n * m / tot))
        self.mean.add_(delta.mul_(m / tot))
        self.n = tot
        if self.track_positive and pos_b is not None:
            self.n_positive.add_(pos_b)

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        """Merge another accumulator into this one (in place) and return self."""
        if other.width != self.width:
            raise ValueError(f"cannot merge widths {other.width} and {self.width}")
        dev = self.mean.device
        pos = other.n_positive.to(dev) if other.n_positive is not None else None
        self._merge(other.n, other.mean.to(dev), other.m2.to(dev), pos)
        return self

    @property
    def var(self) -> torch.Tensor:
        """Unbiased sample variance (``M2 / (n-1)``); zeros when ``n < 2``."""
        return self.m2 / (self.n - 1) if self.n > 1 else torch.zeros_like(self.m2)

    @property
    def std(self) -> torch.Tensor:
        return self.var.clamp_min(0).sqrt()

    @property
    def p_positive(self) -> torch.Tensor | None:
        return None if self.n_positive is None else self.n_positive / max(self.n, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        d = {"n": torch.tensor([self.n], dtype=torch.int64), "mean": self.mean, "m2": self.m2}
        if self.n_positive is not None:
            d["n_positive"] = self.n_positive
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> "RunningMoments":
        width = int(d["mean"].shape[0])
        pos = d.get("n_positive")
        # copies: the state is updated in place (:meth:`_merge`), so it must not share memory with ``d``'s source
        return cls(width, pos is not None, int(d["n"][0]), d["mean"].to(torch.float64, copy=True),
                   d["m2"].to(torch.float64, copy=True), None if pos is None else pos.to(torch.float64, copy=True))
