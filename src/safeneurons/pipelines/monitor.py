"""``safeneurons monitor fit``: fit a safety-neuron monitor (:mod:`safeneurons.evaluate.monitor`) into a folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from safeneurons.config import to_dict
from safeneurons.data import load_prompts
from safeneurons.errors import ConfigError
from safeneurons.evaluate.monitor import Monitor, MonitorConfig, fit_monitor
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.common import ModelConfig


@dataclass
class MonitorFitRunConfig:
    """What ``safeneurons monitor fit`` reads: the model, the neuron set, the two prompt groups, fit settings."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "the model whose neurons are read (--model sets model.spec)"})
    neurons: str = field(default="", metadata={
        "help": "neuron set JSON the monitor reads (e.g. a run's neurons/FULL.json; --neurons)"})
    harmful: str = field(default="advbench", metadata={"help": "harmful prompts: dataset name or file"})
    harmless: str = field(default="self_instruct", metadata={"help": "benign prompts: dataset name or file"})
    data_dir: str | None = field(default=None, metadata={"help": "datasets folder (default ../shared/datasets)"})
    fit: MonitorConfig = field(default_factory=MonitorConfig, metadata={
        "help": "prompt counts, held-out share, L2 penalty, false-positive rates, seed, prompt rendering"})


def run_monitor_fit(cfg: MonitorFitRunConfig, out: str | Path) -> tuple[Monitor, Path]:
    """Read the neuron set and both prompt groups (each failure before the model loads), load the model, fit,
    and save the monitor into ``out``. Returns the monitor and its folder."""
    from safeneurons.models import model_layout

    if not cfg.neurons:
        raise ConfigError("monitor fit needs a neuron set: --neurons FILE.json (or neurons: in the config).")
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the monitor.")
    ns = NeuronSet.load(cfg.neurons)
    groups = {name: load_prompts(spec, data_dir=cfg.data_dir, limit=cfg.fit.n, seed=cfg.fit.seed)
              for name, spec in (("harmful", cfg.harmful), ("harmless", cfg.harmless))}
    lm = cfg.model.load()
    ns.check_fits(model_layout(lm.model).shape(lm.name, lm.checksum), source=cfg.neurons)
    monitor = fit_monitor(lm.model, lm.tokenizer, ns, groups["harmful"], groups["harmless"], cfg.fit,
                          model_checksum=lm.checksum, model_name=lm.name)
    monitor.info["model"].update(spec=lm.spec, dtype=lm.dtype)
    monitor.info["neurons_file"] = str(cfg.neurons)
    monitor.info["config"] = to_dict(cfg)
    return monitor, monitor.save(out)
