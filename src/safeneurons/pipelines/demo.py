"""The README's main job: configs for the demo (1.5B, under 15 min on 2 CPU cores from a fresh clone) and the headline
run."""

from __future__ import annotations

from pathlib import Path

CONFIGS = Path(__file__).parent / "configs"


def demo_config_path(headline: bool = False) -> Path:
    return CONFIGS / ("headline.yaml" if headline else "demo.yaml")
