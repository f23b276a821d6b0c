"""Config sections shared by the pipelines, and the identification stage they all start with."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safeneurons import runformat as rf
from safeneurons.config import resolve_variant, variant_field
from safeneurons.data import (
    EVAL_SPLITS,
    PromptSet,
    eval_split,
    item_key,
    load_prompts,
    overlap,
    remove_overlap,
)
from safeneurons.errors import ConfigError
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.ledger import EvalSetRef
from safeneurons.pipelines.rundir import RunDir
from safeneurons.stats import ActivationStats, StatsConfig, collect_stats

log = logging.getLogger("safeneurons.pipeline")

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
HEADLINE_MODEL = "qwen2.5-coder-1.5b-instruct"


@dataclass
class ModelConfig:
    spec: str = field(default=DEFAULT_MODEL, metadata={"help": "local dir, offline registry name or hub id"})
    dtype: str = field(default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: best available)"})
    device_map: str | None = field(default=None, metadata={"help": "transformers device_map, e.g. auto (multi-GPU)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model repos to run their own code"})

    def load(self) -> Any:
        """The model and tokenizer these settings name (:func:`safeneurons.models.load_model`)."""
        from safeneurons.models import load_model

        return load_model(self.spec, dtype=self.dtype, device=self.device, device_map=self.device_map,
                          trust_remote_code=self.trust_remote_code)


@dataclass
class DataConfig:
    harmful: str = field(default="advbench", metadata={"help": "harmful prompts for identification"})
    harmless: str = field(default="self_instruct", metadata={"help": "benign prompts for identification"})
    n_identify: int | None = field(default=None, metadata={"help": "prompts per identification group (None: all)"})
    eval: str = field(default="strongreject", metadata={"help": "held-out harmful prompts for the attack"})
    n_eval: int | None = field(default=None, metadata={"help": "evaluation prompts (None: all)"})
    data_dir: str | None = field(default=None, metadata={"help": "datasets folder (default ../shared/datasets)"})
    seed: int = field(default=0, metadata={"help": "seed for prompt sampling"})
    split: str = field(default="dev", metadata={
        "help": "evaluation half scored (held-out prompts, capability questions, XSTest): dev (choosing "
                "recipes), test (sealed; only with the command-line flag --split test, never from a config "
                "file or --set; each run is logged to the test ledger, $SAFENEURONS_LEDGER or "
                "./test-ledger.jsonl) or all (every prompt, as runs published before the split; logged like "
                "test). Fixed per prompt by safeneurons.data.split_of; n_eval and seed sample within it"})

    def __post_init__(self) -> None:
        if self.split not in EVAL_SPLITS:
            raise ConfigError(f"data.split = {self.split!r}; choose from {', '.join(EVAL_SPLITS)}.")
        for key in ("n_identify", "n_eval"):
            n = getattr(self, key)
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ConfigError(f"data.{key} = {n!r}: a count of prompts must be at least 1 (or null: all).")


def _identify_params_type(method: str) -> type:
    from safeneurons.identify.registry import params_type

    return params_type(method)


def _identify_methods() -> list[str]:
    from safeneurons.identify.registry import METHODS

    return METHODS.names()


@dataclass
class IdentifyConfig:
    method: str = field(default="safeneuron", metadata={"help": "identification method (safeneurons ls methods)"})
    params: Any = variant_field("method", _identify_params_type, _identify_methods,
                                "the method's settings (safeneuron: tau_es, tau_sas, statistic, ...; "
                                "safeneurons config show lists each method's keys)")

    def __post_init__(self) -> None:
        resolve_variant(self, "params", "identify.params")


def load_identification_data(data: DataConfig) -> tuple[PromptSet, PromptSet]:
    harmful = load_prompts(data.harmful, data_dir=data.data_dir, limit=data.n_identify, seed=data.seed)
    harmless = load_prompts(data.harmless, data_dir=data.data_dir, limit=data.n_identify, seed=data.seed)
    return harmful, harmless


def load_eval_data(data: DataConfig, identification: list[PromptSet], run: RunDir | None = None,
                   language: str | None = None) -> PromptSet:
    """Held-out harmful prompts, disjoint from identification: every evaluation prompt that occurs in the
    identification *datasets* (all their rows, not only the sampled ones) is removed, and a warning says how
    many (StrongREJECT loses its 25 AdvBench rows when AdvBench identifies). When ``data.eval`` names one of
    the identification datasets itself (e.g. AdvBench for both), removing all its rows would leave nothing,
    so its held-out rows are kept and only the prompts sampled for identification are removed (by normalised
    text, so a duplicate row of a sampled prompt goes too). Then only the ``data.split`` half is kept
    (:func:`safeneurons.data.eval_split` by prompt text) and ``n_eval`` prompts are sampled within it with
    ``seed``, so no setting moves a prompt between dev and test."""
    full = load_prompts(data.eval, data_dir=data.data_dir, language=language)
    removed = 0
    sources = list(identification)
    for spec in (data.harmful, data.harmless):
        if spec == data.eval:  # held-out rows of the identification dataset: the samples above guard
            continue
        try:
            sources.append(load_prompts(spec, data_dir=data.data_dir))
        except Exception as exc:  # a file that cannot be re-read unsampled: the samples still guard
            log.debug("overlap check uses the sample only for %s: %s", spec, exc)
    for ps in sources:
        full, n = remove_overlap(full, ps)
        removed += n
    if removed:
        log.warning("removed %d evaluation prompts of %s that also occur in the identification %s", removed,
                    data.eval, "prompts" if data.eval in (data.harmful, data.harmless) else "datasets")
    pool = eval_split(full, data.split)
    if not pool.prompts:
        raise ConfigError(f"data.eval = {data.eval!r} has no prompt on the {data.split} split.")
    ev = pool.sample(data.n_eval, data.seed)
    left = sum(len(overlap(ps, ev)) for ps in identification)
    if left:  # cannot happen after removal; kept as a guard against normalisation changes
        raise ConfigError(f"{left} evaluation prompts still overlap the identification prompts.")
    if run is not None:
        run.record("data", "eval_overlap_removed", removed)
    return ev


def eval_set_ref(name: str, split: str, pool: list[str], scored: list[str]) -> EvalSetRef:
    """The ledger and manifest entry of an evaluation set: the split keys of every item on its side
    (``pool``) and of the ones scored."""
    from safeneurons.data import split_hash

    return EvalSetRef(name, split, split_hash(pool), len(pool), len(scored), split_hash(scored))


def harmful_eval_ref(data: DataConfig, evalset: PromptSet) -> EvalSetRef:
    """Ledger entry of the held-out harmful prompts: the ``data.split`` half of the whole ``data.eval``
    dataset (before the identification overlap is removed, so the identity of the test set does not depend
    on the identification data) and the prompts scored."""
    pool = eval_split(load_prompts(data.eval, data_dir=data.data_dir), data.split)
    return eval_set_ref(str(data.eval), data.split, [item_key(p) for p in pool.prompts],
                        [item_key(p) for p in evalset.prompts])


def over_refusal_prompts(n: int, data_dir: str | None, seed: int, split: str) -> tuple[PromptSet, PromptSet]:
    """``(pool, sample)``: the XSTest safe prompts on the ``split`` side, and the ``n`` of them over-refusal
    scores (seeded sample within the side; ``split="all"``: the sample of every prompt, as before splits)."""
    pool = eval_split(load_prompts("xstest", data_dir=data_dir), split)
    return pool, pool.sample(n, seed)


def over_refusal_ref(n: int, data_dir: str | None, seed: int, split: str) -> EvalSetRef:
    pool, sample = over_refusal_prompts(n, data_dir, seed, split)
    return eval_set_ref("xstest", split, [item_key(p) for p in pool.prompts],
                        [item_key(p) for p in sample.prompts])


def capability_refs(cap: Any, split: str, data_dir: str | None) -> list[EvalSetRef]:
    """Ledger entries of the capability questions an attack's ``capability`` section scores on ``split``."""
    from safeneurons.evaluate.capability import scored_keys

    refs = []
    for task in cap.tasks:
        pool, scored = scored_keys(task, cap.n_of(task), 0, split, data_dir)
        refs.append(eval_set_ref(f"capability:{task}", split, pool, scored))
    return refs


def record_eval_sets(run: RunDir, refs: list[EvalSetRef]) -> None:
    """The evaluation split and the hash of each evaluation set's half go to the manifest's ``data``
    (``eval_sets``: one entry per set, by name)."""
    run.record("data", "eval_sets", {r.name: r.to_dict() for r in refs})


def check_resumed_split(out: str | Path | None, key: str, split: str) -> None:
    """A run directory started before evaluation splits existed scored every prompt: resuming it needs
    ``--split all`` (``key`` is the dotted config key of the split), else its stored completions would be
    paired with another prompt sample. Checked before the run directory is opened."""
    from safeneurons.io import read_json
    from safeneurons.pipelines.rundir import MANIFEST

    manifest = Path(out) / MANIFEST if out is not None else None
    if split == "all" or manifest is None or not manifest.is_file():
        return
    stored: Any = read_json(manifest).get("config") or {}
    *parents, last = key.split(".")
    for part in parents:
        stored = stored.get(part) if isinstance(stored, dict) else None
    if isinstance(stored, dict) and last not in stored:
        raise ConfigError(f"{manifest.parent} was started before evaluation splits and scored every prompt; "
                          f"resume it with --split all ({key}), or choose another --out (with --reuse "
                          f"{manifest.parent}).")


STATS_CACHE = rf.STATS_CACHE  # one file per (weights, chat template, prompts, stats settings): see stats_key


def stats_key(lm: Any, harmful: PromptSet, harmless: PromptSet, stats_cfg: StatsConfig) -> str:
    """Content key of the identification statistics: the weights checksum, the chat template that renders the
    prompts, both prompt sets' contents and every statistics setting. ``--reuse`` carries the statistics to a
    new run under this key, so a run that changes only later stages does not collect them again. Empty for
    weights of unknown identity (never reused)."""
    import dataclasses
    import hashlib
    import json

    if getattr(lm, "checksum", "unknown") in ("", "unknown", None):
        return ""
    template = getattr(lm.tokenizer, "chat_template", None) or ""
    blob = json.dumps({"v": 1, "model": lm.checksum, "template": hashlib.sha256(str(template).encode()).hexdigest(),
                       "harmful": harmful.sha256, "harmless": harmless.sha256,
                       "stats": dataclasses.asdict(stats_cfg)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def identification_stage(run: RunDir, lm: Any, harmful: PromptSet, harmless: PromptSet, stats_cfg: StatsConfig,
                         identify_cfg: IdentifyConfig, prefix: str = "", progress: bool = True
                         ) -> tuple[ActivationStats, dict[str, NeuronSet]]:
    """Collect statistics and identify neuron sets; both are saved and reused when resuming."""
    from safeneurons.identify import identify
    from safeneurons.models import model_layout

    layout = model_layout(lm.model)
    shape = layout.shape(lm.name, lm.checksum)
    stats_path = run.file(prefix + rf.STATS)
    if run.done(f"{prefix}stats") and stats_path.exists():
        stats = ActivationStats.load(stats_path)
    else:
        key = stats_key(lm, harmful, harmless, stats_cfg)
        cached = run.file(f"{prefix}{STATS_CACHE}/{key}.safetensors") if key else None
        with run.stage(f"{prefix}stats") as info:
            if cached is not None and cached.exists():
                stats = ActivationStats.load(cached)
                info["reused"] = f"{STATS_CACHE}/{cached.name}"
            else:
                stats = collect_stats(lm.model, lm.tokenizer, {"harmful": harmful, "harmless": harmless},
                                      stats_cfg, layout=layout, shape=shape, progress=progress)
                if cached is not None:
                    stats.save(cached)
            stats.save(stats_path)
            info.update(n_harmful=len(harmful), n_harmless=len(harmless), position=stats_cfg.position)
    names_path = run.file(prefix + rf.NEURON_INDEX)
    if run.done(f"{prefix}identify") and names_path.exists():
        from safeneurons.io import read_json

        names = read_json(names_path)
        sets = {n: NeuronSet.load(run.file(rf.neuron_set(n, prefix)), shape=shape) for n in names}
    else:
        with run.stage(f"{prefix}identify") as info:
            sets = identify(stats, identify_cfg.method, identify_cfg.params, family=layout.adapter.family)
            data_prov = {"harmful": harmful.describe(), "harmless": harmless.describe()}
            for name, ns in sets.items():
                ns.provenance.update(model=lm.name, model_checksum=lm.checksum, datasets=data_prov)
                ns.save(run.file(rf.neuron_set(name, prefix)))
            run.write_json(prefix + rf.NEURON_INDEX, list(sets))
            if identify_cfg.method == "safeneuron":
                run.write_json(prefix + rf.HISTOGRAMS,
                               score_histograms(stats, identify_cfg, sets["FULL"].provenance))
            info.update(counts={n: len(s) for n, s in sets.items()},
                        fraction={n: s.fraction_of_neurons() for n, s in sets.items()})
    return stats, sets


def over_refusal_stage(run: RunDir, rel: str, model: Any, tokenizer: Any, *, n: int, data_dir: str | None,
                       seed: int, split: str, **kwargs: Any) -> dict[str, Any]:
    """Over-refusal on ``n`` XSTest safe prompts of the ``split`` half (:func:`over_refusal_prompts`), kept in
    ``run/rel`` (reloaded when a resumed run has it); ``kwargs`` go to
    :func:`safeneurons.evaluate.overrefusal.over_refusal` (judge, generation, cache...)."""
    from safeneurons.evaluate.overrefusal import over_refusal
    from safeneurons.io import read_json

    if run.file(rel).exists():
        return read_json(run.file(rel))
    _, prompts = over_refusal_prompts(n, data_dir, seed, split)
    res = over_refusal(model, tokenizer, prompts, **kwargs)
    run.write_json(rel, res)
    return res


def record_model(run: RunDir, lm: Any) -> None:
    from safeneurons.models import model_layout

    shape = model_layout(lm.model).shape(lm.name, lm.checksum)
    run.manifest["model"] = {"spec": lm.spec, "name": lm.name, "checksum": lm.checksum, "source": lm.source,
                             "dtype": lm.dtype, "class": type(lm.model).__name__, "shape": shape.to_dict()}
    run.save()


def record_data(run: RunDir, **sets: PromptSet) -> None:
    for k, ps in sets.items():
        run.manifest.setdefault("data", {})[k] = ps.describe()
    run.save()


def sets_from_dir(path: str | Path, shape: Any) -> dict[str, NeuronSet]:
    """Load ``ES``/``SAS``/``FULL`` (or whatever ``index.json`` lists) from a neurons directory."""
    from safeneurons.io import read_json

    p = Path(path)
    names = read_json(p / "index.json") if (p / "index.json").exists() else [q.stem for q in p.glob("*.json")]
    return {n: NeuronSet.load(p / f"{n}.json", shape=shape) for n in names}


def score_histograms(stats: ActivationStats, identify_cfg: IdentifyConfig, prov: dict[str, Any],
                     bins: int = 80) -> dict[str, Any]:
    """Histograms of the ES effect sizes and SAS z-scores of all neurons, with the thresholds used
    (so reports can draw the distributions without loading statistics or torch)."""
    import numpy as np

    from safeneurons.identify import safeneuron_scores

    sc = safeneuron_scores(stats, identify_cfg.params)
    out: dict[str, Any] = {"tau_es": prov.get("tau_es"), "tau_sas": prov.get("tau_sas"),
                           "statistic": prov.get("statistic")}
    for key, arr in (("effect_size", sc.effect), ("sas_z", sc.z)):
        vals = arr[np.abs(arr) < 1e5].ravel()
        lo, hi = float(np.percentile(vals, 0.01)), float(vals.max())
        counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
        out[key] = {"edges": edges.tolist(), "counts": counts.tolist(), "n": int(vals.size),
                    "max_per_layer": arr.max(axis=1).tolist()}
    return out
