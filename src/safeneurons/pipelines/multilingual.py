"""SS-Neurons pipeline (arXiv 2602.01283) on MultiJail's parallel prompts.

1. Split MultiJail rows (ids shared by all languages) into identification and held-out rows.
2. Per language: deactivation importance on ``D_jail`` (the language's harmful identification rows)
   and ``D_norm`` (benign prompts; see ``norm_source``), per-layer top-p sets, ``MS = S_jail \\ S_norm``,
   ``SS_lang = MS_lang ∩ MS_en``.
3. Analysis: counts per language and layer, Jaccard overlap across languages, correlation of SS count
   with per-language ASR.
4. Causal tests on held-out rows: suppress (zero) the language's SS set, English MS, and a random set
   matched to SS; reinforce SS (scale by ``alpha``); per-language ASR with the multilingual judge.

Choices the paper leaves open (defaults here, each an option): ``D_norm`` is the same English benign set
for every language (``norm_source: english``; ``translate`` asks the model itself to translate it);
``D_jail`` keeps all harmful rows (``jail_filter: refused`` keeps only those the model refuses, as in
the paper's "harmful prompts with the model's refusals", at the cost of one generation pass); the
estimator defaults to the first-order probe sketch validated against exact ablation in
``benchmarks/importance``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeneurons.data import MULTIJAIL_LANGUAGES, Prompt, PromptSet, load_prompts
from safeneurons.errors import ConfigError
from safeneurons.evaluate.generate import GenerationConfig
from safeneurons.identify.importance import ImportanceConfig
from safeneurons.intervene import Intervention
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.common import ModelConfig, record_model
from safeneurons.pipelines.rundir import RunDir, default_run_dir

log = logging.getLogger("safeneurons.multilingual")
CONDITIONS = ("ORI", "SUPPRESS_SS", "SUPPRESS_MS_EN", "RANDOM_SS", "REINFORCE_SS")


@dataclass
class MultilingualConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    languages: tuple[str, ...] = field(default=MULTIJAIL_LANGUAGES, metadata={"help": "MultiJail languages (en first)"})
    hr_language: str = field(default="en", metadata={"help": "high-resource reference language for SS"})
    n_identify: int = field(default=48, metadata={"help": "MultiJail rows used to identify (D_jail), per language"})
    n_eval: int | None = field(default=48, metadata={"help": "held-out MultiJail rows for ASR (None: all the rest)"})
    norm_source: str = field(default="english", metadata={"help": "D_norm: 'english' benign set for all languages, or 'translate'"})
    norm_dataset: str = field(default="self_instruct", metadata={"help": "benign prompts for D_norm"})
    n_norm: int = field(default=48, metadata={"help": "benign prompts in D_norm"})
    jail_filter: str = field(default="none", metadata={"help": "'none' or 'refused' (keep rows the model refuses)"})
    importance: ImportanceConfig = field(default_factory=lambda: ImportanceConfig(method="probe", n_probes=16))
    p: float = field(default=0.03, metadata={"help": "top-p share per layer and site"})
    conditions: tuple[str, ...] = field(default=CONDITIONS, metadata={"help": ", ".join(CONDITIONS)})
    alpha: float = field(default=2.0, metadata={"help": "reinforcement scale for REINFORCE_SS"})
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=48, batch_size=16))
    judge: str = field(default="refusal", metadata={"help": "judge name"})
    seed: int = field(default=0, metadata={"help": "row split and random-set seed"})
    data_dir: str | None = field(default=None, metadata={"help": "datasets folder"})

    def __post_init__(self) -> None:
        self.languages = tuple(self.languages)
        self.conditions = tuple(self.conditions)
        if self.hr_language not in self.languages:
            raise ConfigError(f"multilingual.languages must include hr_language {self.hr_language!r}.")
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad:
            raise ConfigError(f"multilingual.conditions: unknown {bad}; choose from {', '.join(CONDITIONS)}.")
        if self.norm_source not in ("english", "translate"):
            raise ConfigError("multilingual.norm_source must be 'english' or 'translate'.")
        if self.jail_filter not in ("none", "refused"):
            raise ConfigError("multilingual.jail_filter must be 'none' or 'refused'.")


def split_rows(cfg: MultilingualConfig) -> tuple[dict[str, PromptSet], dict[str, PromptSet]]:
    """Identification and held-out MultiJail rows per language; the same row ids in every language."""
    per_lang = {lang: load_prompts("multijail", language=lang, data_dir=cfg.data_dir) for lang in cfg.languages}
    ids = sorted({p.id for p in per_lang[cfg.hr_language]},
                 key=lambda i: __import__("hashlib").sha256(f"{cfg.seed}:{i}".encode()).hexdigest())
    ident_ids = set(ids[: cfg.n_identify])
    rest = [i for i in ids if i not in ident_ids]
    eval_ids = set(rest if cfg.n_eval is None else rest[: cfg.n_eval])
    ident = {l: ps.filter(lambda p: p.id in ident_ids, "identification rows") for l, ps in per_lang.items()}
    held = {l: ps.filter(lambda p: p.id in eval_ids, "held-out rows") for l, ps in per_lang.items()}
    return ident, held


def _translate(lm: Any, texts: list[str], lang: str, gen: GenerationConfig) -> list[str]:
    from safeneurons.evaluate.generate import generate

    names = {"zh": "Chinese", "it": "Italian", "vi": "Vietnamese", "ar": "Arabic", "ko": "Korean", "th": "Thai",
             "bn": "Bengali", "sw": "Swahili", "jv": "Javanese"}
    asks = [f"Translate into {names.get(lang, lang)}. Reply with the translation only.\n\n{t}" for t in texts]
    return [o.strip() or t for o, t in zip(generate(lm.model, lm.tokenizer, asks, gen, progress=False), texts)]


def run_multilingual(cfg: MultilingualConfig, out: str | Path | None = None, progress: bool = True,
                     lm: Any = None) -> Path:
    from safeneurons.evaluate.asr import AsrTable
    from safeneurons.evaluate.cache import GenerationCache
    from safeneurons.evaluate.generate import generate
    from safeneurons.evaluate.judges import make_judge
    from safeneurons.identify.importance import ImportanceScores
    from safeneurons.identify.multilingual import (
        build_language_sets,
        compute_language_importance,
        count_asr_correlation,
        jaccard_matrix,
        set_counts,
    )
    from safeneurons.models import load_model, model_layout

    run = RunDir(out or default_run_dir("multilingual"), "multilingual", cfg)
    if lm is None:
        lm = load_model(cfg.model.spec, dtype=cfg.model.dtype, device=cfg.model.device,
                        device_map=cfg.model.device_map, trust_remote_code=cfg.model.trust_remote_code)
    record_model(run, lm)
    layout = model_layout(lm.model)
    shape = layout.shape(lm.name, lm.checksum)
    judge = make_judge(cfg.judge)
    cache = GenerationCache(run.file("generations.sqlite"))
    ident, held = split_rows(cfg)
    norm_en = load_prompts(cfg.norm_dataset, data_dir=cfg.data_dir, limit=cfg.n_norm, seed=cfg.seed)

    # 1-2. importance and sets
    data: dict[str, dict[str, Any]] = {}
    for lang in cfg.languages:
        jail = ident[lang]
        if cfg.jail_filter == "refused":
            outs = generate(lm.model, lm.tokenizer, jail.texts(), cfg.generation, cache=cache, model_key=lm.checksum,
                            progress=progress)
            verdicts = judge.judge_many([(p.text, o, lang) for p, o in zip(jail.prompts, outs)])
            kept = [Prompt(p.text, p.id, p.category, lang, p.source, o)
                    for p, o, v in zip(jail.prompts, outs, verdicts) if v.label == "refusal"]
            jail = jail.derive(jail.name, kept or jail.prompts, f"kept {len(kept)} refused rows")
        norm = norm_en
        if cfg.norm_source == "translate" and lang != cfg.hr_language:
            texts = _translate(lm, norm_en.texts(), lang, cfg.generation)
            norm = PromptSet(f"{norm_en.name}[{lang}]", [Prompt(t, language=lang) for t in texts])
        data[lang] = {"jail": jail, "norm": norm}
    imp_dir = run.file("importance/.keep").parent
    if run.done("importance"):
        scores = {lang: {r: ImportanceScores.load(imp_dir / f"importance-{lang}-{r}.safetensors")
                         for r in ("jail", "norm")} for lang in cfg.languages}
    else:
        with run.stage("importance") as info:
            scores = compute_language_importance(lm.model, lm.tokenizer, data, cfg.importance,
                                                 resume_dir=imp_dir / "partial", layout=layout, progress=progress,
                                                 save_dir=imp_dir)
            info.update(method=cfg.importance.method, languages=list(cfg.languages))
    sets = build_language_sets(scores, cfg.p, cfg.hr_language, shape=shape)
    for lang, kinds in sets.items():
        for kind, ns in kinds.items():
            ns.save(run.file(f"neurons/multilingual/{lang}/{kind}.json"))
    counts = {lang: {k: len(v) for k, v in kinds.items()} | {"per_layer_SS": list(kinds["SS"].counts_per_layer().values()),
                                                               "fraction_SS": kinds["SS"].fraction_of_neurons()}
              for lang, kinds in sets.items()}
    run.write_json("multilingual/counts.json", counts)
    for kind in ("MS", "SS"):
        langs, mat = jaccard_matrix({lang: s[kind] for lang, s in sets.items()}, list(cfg.languages))
        run.write_json(f"multilingual/overlap_{kind}.json", {"languages": langs, "jaccard": mat.tolist(), "kind": kind})
    langs, mat = jaccard_matrix({lang: s["MS"] for lang, s in sets.items()}, list(cfg.languages))
    run.write_json("multilingual/overlap.json", {"languages": langs, "jaccard": mat.tolist(), "kind": "MS"})

    # 4. causal tests
    ms_en = sets[cfg.hr_language]["MS"]
    records: list[dict[str, Any]] = []
    for lang in cfg.languages:
        ss = sets[lang]["SS"]
        cond_iv: dict[str, Any] = {"ORI": None, "SUPPRESS_SS": ss, "SUPPRESS_MS_EN": ms_en,
                                   "RANDOM_SS": ss.random_matched(seed=cfg.seed, name=f"RANDOM_SS[{lang}]"),
                                   "REINFORCE_SS": Intervention(ss, "scale", alpha=cfg.alpha)}
        for cond in cfg.conditions:
            iv = cond_iv[cond]
            stage = f"generate:{lang}:{cond}"
            rel = f"multilingual/completions/{lang}/{cond}.json"
            if run.done(stage) and run.file(rel).exists():
                from safeneurons.io import read_json

                outs = [r["response"] for r in read_json(run.file(rel))]
            else:
                with run.stage(stage):
                    ns = iv.neurons if isinstance(iv, Intervention) else iv
                    outs = generate(lm.model, lm.tokenizer, held[lang].texts(), cfg.generation,
                                    interventions=iv if (ns is not None and len(ns)) else None,
                                    cache=cache, model_key=lm.checksum, progress=progress)
                    run.write_json(rel, [{"id": p.id, "prompt": p.text, "response": o}
                                         for p, o in zip(held[lang].prompts, outs)])
            verdicts = judge.judge_many([(p.text, o, lang) for p, o in zip(held[lang].prompts, outs)])
            for p, o, v in zip(held[lang].prompts, outs, verdicts):
                records.append({"condition": cond, "language": lang, "category": p.category or "-", "id": p.id,
                                "prompt": p.text, "response": o, "verdict": v.to_dict()})
    table = AsrTable.from_records(records, group_by=("language",))
    asr: dict[str, dict[str, Any]] = {}
    for r in table.rows:
        if r.language == "all":
            continue
        asr.setdefault(r.condition, {})[r.language] = {"k": r.k, "n": r.n, "asr": r.asr, "ci": [r.ci_lo, r.ci_hi],
                                                       "n_degenerate": r.n_degenerate}
    run.write_json("multilingual/asr.json", asr)
    run.write_json("multilingual/verdicts.json", records)
    run.write_text("multilingual/asr.md", table.to_markdown())
    ori = {lang: v["asr"] for lang, v in asr.get("ORI", {}).items() if v["asr"] is not None}
    run.write_json("multilingual/correlation.json",
                   count_asr_correlation(set_counts(sets, "SS", exclude=(cfg.hr_language,)), ori))
    run.finish()
    return run.path


def suppression_sets(sets: dict[str, dict[str, NeuronSet]], lang: str, hr: str = "en") -> dict[str, NeuronSet]:
    """The neuron sets each causal condition touches for ``lang`` (for reports and reuse)."""
    return {"SUPPRESS_SS": sets[lang]["SS"], "SUPPRESS_MS_EN": sets[hr]["MS"]}
