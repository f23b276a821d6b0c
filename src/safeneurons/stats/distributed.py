"""Data-parallel statistics: each torch.distributed rank collects moments on its shard of the prompts,
then the accumulators are merged with the Chan update across ranks (``all_gather`` of the fixed-size
``(n, mean, M2)`` states, merged in rank order so every rank ends with the same numbers as a
single-process pass, up to float rounding)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist

from safeneurons.data.prompts import PromptSet
from safeneurons.stats.collect import ActivationStats, StatsConfig, collect_stats
from safeneurons.stats.moments import RunningMoments


def shard(prompts: PromptSet | Sequence[str], rank: int, world: int) -> PromptSet | list[str]:
    """Every ``world``-th prompt starting at ``rank`` (balanced in count and length mix)."""
    if isinstance(prompts, PromptSet):
        return prompts.derive(prompts.name, prompts.prompts[rank::world], f"shard {rank}/{world}")
    return list(prompts)[rank::world]


def all_reduce_moments(stats: ActivationStats, group: Any = None) -> ActivationStats:
    """Merge the moments of all ranks into ``stats`` (in place, identical result on every rank)."""
    world = dist.get_world_size(group)
    if world == 1:
        return stats
    for gname, cells in stats.moments.items():
        keys = sorted(cells)
        widths = [cells[k].width for k in keys]
        offsets = [0]
        for w in widths:
            offsets.append(offsets[-1] + w)
        track = cells[keys[0]].n_positive is not None
        n = torch.tensor([float(cells[k].n) for k in keys], dtype=torch.float64)
        flat = [torch.cat([cells[k].mean for k in keys]), torch.cat([cells[k].m2 for k in keys])]
        if track:
            flat.append(torch.cat([cells[k].n_positive for k in keys]))
        gathered = []
        for t in (n, *flat):
            bufs = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(bufs, t.contiguous(), group=group)
            gathered.append(bufs)
        for i, key in enumerate(keys):
            sl = slice(offsets[i], offsets[i + 1])
            merged = RunningMoments(widths[i], track)
            for r in range(world):
                merged.merge(RunningMoments(widths[i], track, int(gathered[0][r][i].item()), gathered[1][r][sl].clone(),
                                            gathered[2][r][sl].clone(), gathered[3][r][sl].clone() if track else None))
            cells[key] = merged
    return stats


def collect_stats_distributed(model: torch.nn.Module, tokenizer: Any,
                              groups: Mapping[str, PromptSet | Sequence[str]], config: StatsConfig | None = None,
                              progress: bool = True, **kw: Any) -> ActivationStats:
    """:func:`collect_stats` on this rank's shard of every group, then merged across ranks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    shards = {g: shard(p, rank, world) for g, p in groups.items()}
    stats = collect_stats(model, tokenizer, shards, config, progress=progress and rank == 0, **kw)
    all_reduce_moments(stats)
    for g, p in groups.items():
        stats.meta["groups"][g].update(n_prompts=len(p), world_size=world,
                                       sha256=p.sha256 if isinstance(p, PromptSet) else None)
    return stats
