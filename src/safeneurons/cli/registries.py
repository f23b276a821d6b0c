"""``safeneurons ls KIND``: what each registry holds."""

from __future__ import annotations

from safeneurons.errors import ConfigError


def registry_listing(kind: str) -> list[tuple[str, str]]:
    if kind == "methods":
        from safeneurons.identify import METHODS as reg
    elif kind == "judges":
        from safeneurons.evaluate.judges import JUDGES as reg
    elif kind == "datasets":
        from safeneurons.data import DATASETS as reg
    elif kind == "models":
        from safeneurons.models import OFFLINE_MODELS as reg
    elif kind == "architectures":
        from safeneurons.models import ARCHITECTURES as reg
    elif kind == "benchmarks":
        from safeneurons.evaluate.capability import BENCHMARKS as reg
    else:
        raise ConfigError(f"unknown registry {kind!r}; choose methods, judges, datasets, models, architectures, benchmarks.")
    return [(e.name, e.summary) for e in reg]
