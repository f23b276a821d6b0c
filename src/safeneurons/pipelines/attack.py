"""The pruning attack (SafeNeuron §4.2, Table 1): identify safety neurons, zero them, and measure
attack success on held-out harmful prompts.

Conditions: ``ORI`` (no pruning), ``ES`` / ``SAS`` / ``FULL`` (SN-: the ES, SAS or ES∪SAS set zeroed
at every position) and ``RANDOM`` (sets matched to FULL in per-layer counts, one per seed). On a
trained model the sets are re-identified by default (the attacker's view); ``neuron_sets`` reuses
given ones instead."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from safeneurons import runformat as rf
from safeneurons.errors import ConfigError
from safeneurons.evaluate.generate import GenerationConfig
from safeneurons.evaluate.judges.base import check_judge_name, check_judge_params
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.common import (
    DataConfig,
    IdentifyConfig,
    ModelConfig,
    capability_refs,
    check_resumed_split,
    harmful_eval_ref,
    identification_stage,
    load_eval_data,
    load_identification_data,
    record_data,
    record_eval_sets,
    record_model,
    sets_from_dir,
)
from safeneurons.pipelines.ledger import EvalSetRef, TestLook, check_writable, needs_ledger, open_look
from safeneurons.pipelines.rundir import RunDir, default_run_dir
from safeneurons.stats import StatsConfig

log = logging.getLogger("safeneurons.attack")
CONDITIONS = ("ORI", "ES", "SAS", "FULL", "RANDOM")


@dataclass
class CapabilityCheck:
    tasks: tuple[str, ...] = field(default=("arc_challenge",), metadata={"help": "capability tasks (safeneurons ls benchmarks)"})
    n: int | None = field(default=100, metadata={"help": "questions per task (None: all)"})
    n_per_task: dict[str, int] = field(default_factory=dict, metadata={
        "help": "questions for the named tasks instead of n, e.g. {gsm8k: 50} (generation is slow)"})
    conditions: tuple[str, ...] = field(default=("ORI", "FULL", "RANDOM"), metadata={"help": "conditions to score"})
    perplexity_texts: int = field(default=64, metadata={"help": "benign texts for the fluency (perplexity) figure; 0 = skip"})
    k_shot: dict[str, int] = field(default_factory=dict, metadata={
        "help": "few-shot examples per task, e.g. {arc_challenge: 25} (the SafeNeuron paper's ARC@25); "
                "tasks not named use their default (0, GSM8K 8)"})
    metric: dict[str, str] = field(default_factory=dict, metadata={
        "help": "metric reported per task (acc or acc_norm); default acc_norm for arc_challenge/hellaswag, else acc"})
    batch_size: int = field(default=8, metadata={
        "help": "prompts per forward / generate call in every task (scores do not depend on it beyond float "
                "rounding; GSM8K's generation gains from wider batches, see benchmarks/README.md)"})
    batch_size_per_task: dict[str, int] = field(default_factory=dict, metadata={
        "help": "prompts per call for the named tasks instead of batch_size, e.g. {gsm8k: 16} (GSM8K 8-shot with "
                "the shared prefix: 1.74x at 16 vs 8 in full, same text; benchmarks/README.md)"})
    share_prefix: bool = field(default=True, metadata={
        "help": "run a context many prompts share once, on copies of its key/value cache: GSM8K's 8-shot prefix "
                "(same greedy text as full prompts, 1.32x at batch 8), a multiple-choice question's context before "
                "its choices (same log-likelihoods up to float rounding); false: full prompts, as lm-eval"})

    def __post_init__(self) -> None:
        from safeneurons.errors import ConfigError

        self.tasks = tuple(self.tasks)
        for task, m in self.metric.items():
            if m not in ("acc", "acc_norm"):
                raise ConfigError(f"capability.metric.{task} = {m!r}: expected acc or acc_norm.")
        counts = [("batch_size", self.batch_size, 1)]  # (field, value, lowest allowed)
        for field_name, per_task, low in (("n_per_task", self.n_per_task, 1), ("k_shot", self.k_shot, 0),
                                          ("batch_size_per_task", self.batch_size_per_task, 1)):
            counts += [(f"{field_name}.{task}", v, low) for task, v in per_task.items()]
        for name, v, low in counts:
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"capability.{name} = {v!r}: expected an integer >= {low}.")

    def n_of(self, task: str) -> int | None:
        return self.n_per_task.get(task, self.n)

    def batch_size_of(self, task: str) -> int:
        return self.batch_size_per_task.get(task, self.batch_size)

    def metric_of(self, task: str) -> str:
        from safeneurons.evaluate.capability import headline_metric

        return self.metric.get(task) or headline_metric(task)


@dataclass
class AttackConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "the model to attack (--model sets model.spec)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "identification prompts and the held-out harmful prompts scored"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={
        "help": "activation statistics for identification (not read with neuron_sets)"})
    identify: IdentifyConfig = field(default_factory=IdentifyConfig, metadata={
        "help": "identification of the sets to prune (not read with neuron_sets)"})
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64, batch_size=16),
                                         metadata={"help": "decoding of the replies to the held-out prompts"})
    judge: str = field(default="guard", metadata={
        "help": "judge name (safeneurons ls judges); its agreement with labelled replies is printed under each table"})
    judge_params: dict[str, Any] = field(default_factory=dict, metadata={"help": "judge options"})
    conditions: tuple[str, ...] = field(default=CONDITIONS, metadata={"help": "ORI, ES, SAS, FULL, RANDOM"})
    random_seeds: tuple[int, ...] = field(default=(0, 1), metadata={"help": "seeds of the matched random sets"})
    random_exclude_self: bool = field(default=True, metadata={"help": "random sets avoid the FULL neurons"})
    neuron_sets: str | None = field(default=None, metadata={"help": "reuse these sets (a neurons/ dir) instead of re-identifying"})
    capability: CapabilityCheck = field(default_factory=CapabilityCheck, metadata={
        "help": "capability (task accuracy) and fluency (perplexity) of the conditions; tasks: [] and "
                "perplexity_texts: 0 skip it"})
    examples: int = field(default=3, metadata={"help": "example completions kept per condition"})
    cache_dir: str | None = field(default=None, metadata={"help": "generation cache (default: <run>/generations.sqlite)"})

    def __post_init__(self) -> None:
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ConfigError(f"attack.conditions: unknown {bad}; choose from {', '.join(CONDITIONS)}.")
        self.conditions = tuple(self.conditions)
        self.random_seeds = tuple(self.random_seeds)
        check_judge_name(self.judge, "judge")
        check_judge_params(self.judge, self.judge_params, "judge_params")


def condition_sets(sets: dict[str, NeuronSet], cfg: AttackConfig) -> dict[str, NeuronSet | None]:
    out: dict[str, NeuronSet | None] = {}
    for cond in cfg.conditions:
        if cond == "ORI":
            out["ORI"] = None
        elif cond == "RANDOM":
            for seed in cfg.random_seeds:
                out[f"RANDOM{seed}"] = sets["FULL"].random_matched(seed=seed, exclude_self=cfg.random_exclude_self,
                                                                   name=f"RANDOM{seed}")
        else:
            if cond not in sets:
                raise ConfigError(f"condition {cond} needs a neuron set named {cond}; have {sorted(sets)}.")
            out[cond] = sets[cond]
    return out


def attack_eval_refs(cfg: AttackConfig, evalset: Any) -> list[EvalSetRef]:
    """The evaluation sets an attack scores on ``cfg.data.split``: the held-out harmful prompts and each
    capability task's questions (for the manifest and the test ledger)."""
    refs = [harmful_eval_ref(cfg.data, evalset)]
    if cfg.capability.tasks:
        refs += capability_refs(cfg.capability, cfg.data.split, cfg.data.data_dir)
    return refs


def run_attack(cfg: AttackConfig, out: str | Path | None = None, progress: bool = True, lm: Any = None,
               look: TestLook | None = None) -> Path:
    """Run the whole attack; returns the run directory (resumable with the same config).

    On a ``data.split`` other than dev the run is a test scoring: the ledger must be writable before any
    work, and its ``opened`` line is appended before the first held-out prompt is generated, its ``result``
    line after the tables (:mod:`safeneurons.pipelines.ledger`). ``look``: a look already opened by the caller
    (the train pipeline attacks every model under one look), which this run neither opens nor closes."""
    from safeneurons.evaluate.cache import GenerationCache
    from safeneurons.evaluate.generate import generate
    from safeneurons.evaluate.judges import make_judge
    from safeneurons.models import model_layout
    from safeneurons.pipelines.scoring import asr_stage, capability_stage

    own_look = look is None and needs_ledger(cfg.data.split)
    if own_look:
        check_writable()
    check_resumed_split(out, "data.split", cfg.data.split)
    run = RunDir(out or default_run_dir("attack"), "attack", cfg)
    if lm is None:
        lm = cfg.model.load()
    record_model(run, lm)
    harmful, harmless = load_identification_data(cfg.data)
    evalset = load_eval_data(cfg.data, [harmful, harmless], run)
    record_data(run, harmful=harmful, harmless=harmless, eval=evalset)
    refs = attack_eval_refs(cfg, evalset)
    record_eval_sets(run, refs)

    shape = model_layout(lm.model).shape(lm.name, lm.checksum)
    if cfg.neuron_sets:
        sets = sets_from_dir(cfg.neuron_sets, shape)
        run.record("identify", "reused_from", str(cfg.neuron_sets))
    else:
        _, sets = identification_stage(run, lm, harmful, harmless, cfg.stats, cfg.identify, progress=progress)
    conds = condition_sets(sets, cfg)
    for name, ns in conds.items():
        if ns is not None and name.startswith("RANDOM"):
            ns.save(run.file(rf.neuron_set(name)))

    if own_look:  # before the generation cache exists: nothing of the test half is touched yet
        look = open_look(run.path, run.manifest["config"], lm.checksum, refs)
    cache = GenerationCache(Path(cfg.cache_dir) / rf.GENERATIONS if cfg.cache_dir else run.file(rf.GENERATIONS))
    completions: dict[str, list[str]] = {}
    for name, ns in conds.items():
        rel = rf.completions(name)
        if run.done(f"generate:{name}") and run.file(rel).exists():
            from safeneurons.io import read_json

            completions[name] = [r["response"] for r in read_json(run.file(rel))]
            continue
        with run.stage(f"generate:{name}") as info:
            texts = generate(lm.model, lm.tokenizer, evalset.texts(), cfg.generation, interventions=ns, cache=cache,
                             model_key=lm.checksum, progress=progress)
            completions[name] = texts
            run.write_json(rel, [{"id": p.id, "category": p.category, "prompt": p.text, "response": t}
                                 for p, t in zip(evalset.prompts, texts)])
            info.update(n=len(texts), n_neurons=len(ns) if ns is not None else 0)
    judge = make_judge(cfg.judge, **cfg.judge_params)
    asr_stage(run, judge, evalset, completions, conds, examples=cfg.examples)
    capability: dict[str, Any] = {}
    if cfg.capability.tasks or cfg.capability.perplexity_texts:
        capability = capability_stage(run, lm, {k: v for k, v in conds.items() if _cap_cond(k, cfg)},
                                      cfg.capability, data_dir=cfg.data.data_dir, progress=progress,
                                      split=cfg.data.split)
    if own_look and look is not None:
        look.close(**attack_headline(run, cfg, capability))
    run.finish()
    log.info("attack results in %s", run.path)
    return run.path


def attack_headline(run: RunDir, cfg: AttackConfig, capability: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a test scoring's ledger ``result`` line keeps: the ASR table rows (k, n, ASR and its
    interval per condition) and each capability task's headline metric per condition."""
    from safeneurons.io import read_json

    summary = read_json(run.file(rf.ASR))["summary"]
    asr = {c: {k: s[k] for k in ("k", "n", "asr", "ci", "n_degenerate")} for c, s in summary.items()}
    metric = cfg.capability.metric_of
    cap = {cond: {task: res.get(metric(task)) for task, res in (r.get("tasks") or {}).items()}
           for cond, r in capability.items()}
    return {"asr": asr, "capability": cap}


def _cap_cond(name: str, cfg: AttackConfig) -> bool:
    base = "RANDOM" if name.startswith("RANDOM") else name
    if name.startswith("RANDOM") and name != f"RANDOM{cfg.random_seeds[0]}":
        return False
    return base in cfg.capability.conditions
