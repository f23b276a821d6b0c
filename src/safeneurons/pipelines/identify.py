"""``safeneurons stats`` / ``safeneurons identify``: statistics and neuron sets in a run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safeneurons import runformat as rf
from safeneurons.pipelines.common import (
    DataConfig,
    IdentifyConfig,
    ModelConfig,
    identification_stage,
    load_identification_data,
    record_data,
    record_model,
)
from safeneurons.pipelines.rundir import RunDir, default_run_dir
from safeneurons.stats import StatsConfig


@dataclass
class IdentifyRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "the model (--model sets model.spec)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "harmful and benign identification prompts (eval, n_eval and split are not used)"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={
        "help": "activation statistics on both prompt groups (positions, sites, batching)"})
    identify: IdentifyConfig = field(default_factory=IdentifyConfig, metadata={
        "help": "identification method and its settings (not read by stats)"})


def run_identify(cfg: IdentifyRunConfig, out: str | Path | None = None, progress: bool = True,
                 stats_only: bool = False) -> Path:
    from safeneurons.stats import collect_stats

    command = "stats" if stats_only else "identify"
    run = RunDir(out or default_run_dir(command), command, cfg)
    lm = cfg.model.load()
    record_model(run, lm)
    harmful, harmless = load_identification_data(cfg.data)
    record_data(run, harmful=harmful, harmless=harmless)
    if stats_only:
        with run.stage("stats") as info:
            stats = collect_stats(lm.model, lm.tokenizer, {"harmful": harmful, "harmless": harmless}, cfg.stats,
                                  progress=progress)
            stats.save(run.file(rf.STATS))
            info.update(n_harmful=len(harmful), n_harmless=len(harmless))
    else:
        _, sets = identification_stage(run, lm, harmful, harmless, cfg.stats, cfg.identify, progress=progress)
        run.write_text(rf.NEURON_SUMMARY, neuron_summary(sets))
    run.finish()
    return run.path


def neuron_summary(sets: dict) -> str:
    lines = ["| set | neurons | % of neurons | per layer |", "|---|---|---|---|"]
    for name, ns in sets.items():
        per_layer = " ".join(str(c) for c in ns.counts_per_layer().values())
        lines.append(f"| {name} | {len(ns)} | {100 * ns.fraction_of_neurons():.2f} | {per_layer} |")
    return "\n".join(lines) + "\n"
