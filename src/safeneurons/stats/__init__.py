"""Streaming activation statistics."""

from safeneurons.stats.collect import POSITIONS, ActivationStats, StatsConfig, collect_stats, decoder_of
from safeneurons.stats.moments import RunningMoments

__all__ = ["POSITIONS", "ActivationStats", "RunningMoments", "StatsConfig", "collect_stats", "decoder_of"]
