"""``safeneurons analyze``: layer-wise and cross-category analysis (SafeNeuron §4.5).

Safety neurons are identified separately for every harm category of a harmful dataset (each category's
prompts against the same benign set, in one statistics pass), then split into core / shared /
category-specific neurons, with the overlap ratio as the number of categories K grows and the per-layer
(normalised depth) profile. Given neuron-set files (``sets``), their pairwise overlap is added (e.g.
between models, training rounds or methods)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from safeneurons import runformat as rf
from safeneurons.config import variant_field
from safeneurons.data import PromptSet, load_prompts
from safeneurons.errors import ConfigError, DataError
from safeneurons.pipelines.common import IdentifyConfig, ModelConfig, record_data, record_model
from safeneurons.pipelines.rundir import RunDir, default_run_dir
from safeneurons.stats import StatsConfig


def _safeneuron_only(method: str) -> type:
    from safeneurons.identify import SafeNeuronConfig

    if method != "safeneuron":
        raise ConfigError(f"analyze: identify.method = {method!r}; the per-category sets are SafeNeuron sets "
                          "(ES ∪ SAS), so only 'safeneuron' applies here.")
    return SafeNeuronConfig


@dataclass
class CategoryIdentifyConfig(IdentifyConfig):
    """``identify`` of analyze: SafeNeuron's settings only (the categories set its two groups)."""

    params: Any = variant_field("method", _safeneuron_only, lambda: ["safeneuron"],
                                "SafeNeuron settings (tau_es, tau_sas, statistic, site); unsafe_group and "
                                "safe_group are set per category")


@dataclass
class AnalyzeConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "the model (--model sets model.spec)"})
    harmful: str = field(default="harmbench", metadata={"help": "harmful dataset with categories"})
    harmless: str = field(default="self_instruct", metadata={"help": "benign contrast prompts"})
    n_per_category: int = field(default=32, metadata={"help": "prompts per category (sampled)"})
    min_per_category: int = field(default=8, metadata={"help": "skip categories with fewer prompts"})
    n_harmless: int = field(default=128, metadata={"help": "benign prompts"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={
        "help": "activation statistics, one group per category plus the benign prompts"})
    identify: CategoryIdentifyConfig = field(default_factory=CategoryIdentifyConfig, metadata={
        "help": "SafeNeuron settings of the per-category sets (identify.params; its unsafe_group and "
                "safe_group are set per category)"})
    sets: tuple[str, ...] = field(default=(), metadata={"help": "neuron-set JSON files to compare pairwise"})
    max_subsets: int = field(default=200, metadata={"help": "K-subsets sampled per K for the overlap curve"})
    data_dir: str | None = field(default=None, metadata={"help": "datasets folder"})
    seed: int = field(default=0, metadata={"help": "seed for sampling prompts and the overlap-curve subsets"})


def split_by_category(ps: PromptSet, n: int, minimum: int, seed: int) -> dict[str, PromptSet]:
    out = {}
    for cat in ps.categories():
        sub = ps.filter(lambda p, c=cat: p.category == c, f"category {cat}")
        if len(sub) >= minimum:
            out[cat] = sub.sample(n, seed)
    if len(out) < 2:
        raise DataError(f"{ps.name}: fewer than 2 categories with >= {minimum} prompts; lower min_per_category.")
    return out


def run_analyze(cfg: AnalyzeConfig, out: str | Path | None = None, progress: bool = True, lm=None) -> Path:
    from safeneurons.identify import identify_safeneurons
    from safeneurons.identify.analysis import (
        category_decomposition,
        normalised_layer_profile,
        overlap_curve,
        pairwise_overlap,
    )
    from safeneurons.models import model_layout
    from safeneurons.neurons import NeuronSet
    from safeneurons.stats import ActivationStats, collect_stats

    run = RunDir(out or default_run_dir("analyze"), "analyze", cfg)
    if lm is None:
        lm = cfg.model.load()
    record_model(run, lm)
    layout = model_layout(lm.model)
    shape = layout.shape(lm.name, lm.checksum)
    harmful = load_prompts(cfg.harmful, data_dir=cfg.data_dir)
    harmless = load_prompts(cfg.harmless, data_dir=cfg.data_dir, limit=cfg.n_harmless, seed=cfg.seed)
    cats = split_by_category(harmful, cfg.n_per_category, cfg.min_per_category, cfg.seed)
    record_data(run, harmless=harmless, **{f"category:{c}": p for c, p in cats.items()})
    stats_path = run.file(rf.STATS)
    if run.done("stats") and stats_path.exists():
        stats = ActivationStats.load(stats_path)
    else:
        with run.stage("stats"):
            stats = collect_stats(lm.model, lm.tokenizer, {**cats, "harmless": harmless}, cfg.stats, layout=layout,
                                  shape=shape, progress=progress)
            stats.save(stats_path)
    per_cat = {}
    for cat in cats:
        params = replace(cfg.identify.params, unsafe_group=cat, safe_group="harmless")
        full = identify_safeneurons(stats, params, layout.adapter.family)["FULL"]
        per_cat[cat] = full.renamed(f"FULL[{cat}]", category=cat)
        per_cat[cat].save(run.file(rf.category_set(cat)))
    decomp = category_decomposition(per_cat)
    for key in ("core_set", "shared_set", "specific_set"):
        decomp.pop(key).save(run.file(rf.category_set(key[:-4].upper())))
    result = {
        "decomposition": decomp,
        "overlap_curve": overlap_curve(per_cat, cfg.max_subsets, cfg.seed),
        "layer_profiles": {c: normalised_layer_profile(s) for c, s in per_cat.items()},
    }
    if cfg.sets:
        loaded = {Path(p).stem: NeuronSet.load(p) for p in cfg.sets}
        result["pairwise"] = pairwise_overlap(loaded)
        result["layer_profiles"].update({f"set:{n}": normalised_layer_profile(s) for n, s in loaded.items()})
    run.write_json(rf.ANALYSIS, result)
    run.finish()
    return run.path
