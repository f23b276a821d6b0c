"""``safeneurons train safeneuron``: SafeNeuron training and its robustness report (SafeNeuron §3.3, §4).

1. Identify safety neurons on the starting model (FULL = ES ∪ SAS).
2. Build preference pairs: on-policy safety pairs (chosen = the model's refusal, rejected = the compliant
   answer of its FULL-pruned version), optional HH-RLHF harmless-base pairs, and general helpfulness pairs
   (chosen = the model's answer to a benign prompt, rejected = its answer to a *different* benign prompt:
   fluent, off-topic, no length bias), mixed at ``safety_fraction`` (paper: 30 % safety / 70 % general).
3. Train each method from the same starting weights on the same pairs: ``safeneuron`` (DPO with FULL
   frozen and ablated while training; ``rounds > 1`` re-identifies and grows the frozen set), ``dpo``
   (plain DPO, the paper's "RLHF-Safety") and ``sn_tune`` (SFT of the safety neurons only).
4. Robustness: for the original and every trained model, the pruning attack with neurons re-identified on
   that model (the attacker's view), over-refusal on XSTest safe prompts, and capability.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from safeneurons import runformat as rf
from safeneurons.config import Moved, migrate_keys, require
from safeneurons.errors import ConfigError
from safeneurons.evaluate.generate import GenerationConfig
from safeneurons.evaluate.judges.base import check_judge_name
from safeneurons.neurons import NeuronSet
from safeneurons.pipelines.attack import CONDITIONS, AttackConfig, attack_eval_refs
from safeneurons.pipelines.common import (
    DataConfig,
    IdentifyConfig,
    ModelConfig,
    check_resumed_split,
    identification_stage,
    load_eval_data,
    load_identification_data,
    over_refusal_ref,
    over_refusal_stage,
    record_eval_sets,
    record_model,
)
from safeneurons.pipelines.ledger import EvalSetRef, check_writable, needs_ledger, open_look
from safeneurons.pipelines.rundir import RunDir, default_run_dir
from safeneurons.stats import StatsConfig
from safeneurons.train.dpo_config import SafeNeuronDPOConfig
from safeneurons.train.sft_config import MaskedSFTConfig

log = logging.getLogger("safeneurons.train")
METHODS = ("safeneuron", "dpo", "sn_tune")
GENERAL_CHOSEN = ("model", "correct", "reference")


@dataclass
class PairsExperimental:
    """Variants that lost; kept to reproduce docs/results.md §4b–§4i; may be removed. The defaults are the
    standing recipes' (configs/train-*.yaml)."""

    degrade: str = field(default="other_prompt", metadata={
        "help": "rejected general answer: other_prompt (the recipes'), truncate, pruned (neither run in the record), "
                "or anchor (= the chosen answer: the pair trains only through dpo.sft_weight's NLL term; with "
                "general_chosen: reference a wrong GSM8K answer is still the rejected side of its worked solution; "
                "hypothesis rejected, docs/results.md §4i)"})
    drop_unfinished: bool = field(default=True, metadata={
        "help": "drop pairs whose model-written chosen answer stopped at the token budget or loops (trained by DPO "
                "and sft_weight, a cut answer teaches stopping mid-sentence and a looping one loops; false: keep them, "
                "as the runs of docs/results.md §4b–§4i did)"})

    def __post_init__(self) -> None:
        from safeneurons.train.preference_data import DEGRADE_STRATEGIES

        if self.degrade not in DEGRADE_STRATEGIES:
            raise ConfigError(f"train.pairs.experimental.degrade {self.degrade!r}; choose from "
                              f"{', '.join(DEGRADE_STRATEGIES)}.")


PAIRS_MOVED = "variants that lost, kept to reproduce docs/results.md §4b–§4i"


@dataclass
class PairsConfig:
    KEY_CHANGES: ClassVar[dict[str, Moved]] = {"degrade": Moved("experimental.degrade", PAIRS_MOVED),
                                               "drop_unfinished": Moved("experimental.drop_unfinished", PAIRS_MOVED)}

    n_safety: int = field(default=64, metadata={"help": "harmful prompts for on-policy safety pairs"})
    n_general: int = field(default=150, metadata={"help": "benign prompts for helpfulness pairs"})
    hh_rlhf: int = field(default=0, metadata={"help": "HH-RLHF harmless-base pairs to add to the safety part"})
    safety_fraction: float = field(default=0.3, metadata={"help": "share of safety pairs in the mix (paper 0.3)"})
    general_dataset: str = field(default="self_instruct", metadata={
        "help": "benign prompts for helpfulness pairs; 'gsm8k' takes GSM8K questions outside those the capability "
                "check scores (reasoning-style answers, against the GSM8K loss of safety DPO); several joined by '+' "
                "('self_instruct+gsm8k') share n_general evenly"})
    general_max_new_tokens: int | None = field(default=None, metadata={
        "help": "length of the model's general answers (None: generation.max_new_tokens; GSM8K solutions need ~256)"})
    general_chosen: str = field(default="model", metadata={
        "help": "GSM8K pairs only: 'model' keeps the model's answers right or wrong; 'correct' drops the pairs whose "
                "answer's final number is not the reference answer; 'reference' puts the dataset's worked solution in "
                "place of a wrong answer"})
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=96, batch_size=16),
                                         metadata={"help": "decoding of the model's own answers in pairs"})
    judge: str = field(default="refusal", metadata={
        "help": "judge that labels the model's own replies when building on-policy safety pairs (a refusal is the "
                "chosen side); the recipes of docs/results used refusal. attack.judge scores the trained models"})
    experimental: PairsExperimental = field(default_factory=PairsExperimental, metadata={
        "help": "variants that lost (docs/results.md §4b–§4i); kept to reproduce those runs; may be removed"})

    def __post_init__(self) -> None:
        require("train.pairs.safety_fraction", self.safety_fraction, 0 <= self.safety_fraction <= 1,
                "a share in [0, 1]")
        for key in ("n_safety", "n_general", "hh_rlhf"):
            require(f"train.pairs.{key}", getattr(self, key), getattr(self, key) >= 0, "a count >= 0")
        if self.general_max_new_tokens is not None:
            require("train.pairs.general_max_new_tokens", self.general_max_new_tokens,
                    self.general_max_new_tokens >= 1, "a token count >= 1 (or null)")

    def general_datasets(self) -> dict[str, int]:
        """Each dataset of ``general_dataset`` with its share of ``n_general`` (the first ones take the
        remainder): ``self_instruct+gsm8k`` with 25 → {self_instruct: 13, gsm8k: 12}."""
        names = general_dataset_names(self.general_dataset)
        q, r = divmod(self.n_general, len(names))
        return {name: q + (i < r) for i, name in enumerate(names)}


def general_dataset_names(spec: str) -> list[str]:
    """The dataset names of ``pairs.general_dataset`` (several joined by '+')."""
    names = [n.strip() for n in spec.split("+")]
    if not all(names) or len(set(names)) != len(names):
        raise ConfigError(f"train.pairs.general_dataset {spec!r}: expected dataset names joined by '+', each once "
                          "(e.g. self_instruct+gsm8k).")
    return names


@dataclass
class TrainRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "the model to train (--model sets model.spec)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "identification prompts (the harmful ones also give the safety pairs), data_dir and seed; "
                "eval, n_eval and split are not used (the attack's are attack.data)"})
    stats: StatsConfig = field(default_factory=StatsConfig, metadata={
        "help": "activation statistics for identification (also each round's re-identification)"})
    identify: IdentifyConfig = field(default_factory=IdentifyConfig, metadata={
        "help": "identification of the safety neurons (FULL) frozen by safeneuron, tuned by sn_tune and "
                "pruned to find the safety pairs"})
    pairs: PairsConfig = field(default_factory=PairsConfig, metadata={
        "help": "preference pairs: on-policy safety pairs and helpfulness pairs, mixed"})
    methods: tuple[str, ...] = field(default=("safeneuron", "dpo"), metadata={"help": ", ".join(METHODS)})
    rounds: int = field(default=1, metadata={"help": "SafeNeuron iterative rounds (Eq. 13)"})
    dpo: SafeNeuronDPOConfig = field(default_factory=SafeNeuronDPOConfig, metadata={
        "help": "DPO settings of safeneuron and dpo (paper defaults)"})
    sft: MaskedSFTConfig = field(default_factory=MaskedSFTConfig, metadata={"help": "masked SFT settings of sn_tune"})
    attack: AttackConfig = field(default_factory=AttackConfig, metadata={
        "help": "pruning attack and capability check of the original and every trained model "
                "(attack.model is not read; --split sets attack.data.split)"})
    over_refusal_n: int = field(default=100, metadata={"help": "XSTest safe prompts for over-refusal (0 = skip)"})

    def __post_init__(self) -> None:
        check_judge_name(self.pairs.judge, "pairs.judge")
        self.methods = tuple(self.methods)
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"train.methods: unknown {bad}; choose from {', '.join(METHODS)}.")
        require("train.over_refusal_n", self.over_refusal_n, self.over_refusal_n >= 0, ">= 0 (0: skip)")
        if self.rounds < 1:
            raise ConfigError(f"train.rounds must be >= 1, got {self.rounds}.")
        if self.data.split != "dev":
            raise ConfigError(f"train: data.split = {self.data.split!r} is not read here (data picks the "
                              "identification and training prompts); the evaluation split is "
                              "attack.data.split, set with --split.")
        if self.pairs.general_chosen not in GENERAL_CHOSEN:
            raise ConfigError(f"train.pairs.general_chosen {self.pairs.general_chosen!r}; choose from "
                              f"{', '.join(GENERAL_CHOSEN)}.")
        if self.pairs.experimental.degrade == "anchor" and not self.dpo.sft_weight > 0:
            raise ConfigError("train.pairs.experimental.degrade: anchor makes each general pair's DPO term a constant; "
                              "the pairs then train only through the NLL term: set dpo.sft_weight > 0 (e.g. 1.0).")
        general = self.pairs.general_datasets()  # checks the '+' syntax
        if self.pairs.general_chosen != "model" and "gsm8k" not in general:
            raise ConfigError("train.pairs.general_chosen checks answers against GSM8K's reference answers: it needs "
                              f"pairs.general_dataset: gsm8k (got {self.pairs.general_dataset!r}).")


def general_prompts(cfg: TrainRunConfig) -> Any:
    """The ``n_general`` benign prompts of the helpfulness pairs (a seeded sample of each dataset of
    ``general_dataset``). When a dataset is also a capability task (``gsm8k``), the questions the capability
    check scores (the same seeded indices as :func:`safeneurons.evaluate.capability.split_indices`) are
    removed first, so no evaluated question is trained on. With evaluation splits (``attack.data.split`` dev
    or test) the whole test half and the dev questions scored are removed, whichever half this run scores, so
    the training data and the trained models do not depend on the split (``all``: as before splits)."""
    from safeneurons.data import PromptSet, load_prompts
    from safeneurons.evaluate.capability import scored_keys

    cap, parts = cfg.attack.capability, []
    split = "all" if cfg.attack.data.split == "all" else "dev"
    for task, n in cfg.pairs.general_datasets().items():
        ps = load_prompts(task, data_dir=cfg.data.data_dir)
        if task in cap.tasks:  # dataset ids "<task>-<question id>", capability keys "<task>:<question id>"
            pool, scored = scored_keys(task, cap.n_of(task), 0, split, cfg.data.data_dir)
            free = set(pool) - set(scored)
            note = f"without the {len(scored)} questions the capability check scores" + (
                "" if split == "all" else f" and the {len(ps) - len(pool)} of the test split")
            ps = ps.filter(lambda p: f"{task}:{p.id.rsplit('-', 1)[-1]}" in free, note)
            if not ps.prompts:
                raise ConfigError(f"train.pairs.general_dataset = {task!r}: no question is left to train on "
                                  f"({note}); lower attack.capability.n_per_task.{task}.")
        parts.append(ps.sample(n, cfg.data.seed + 1))
    if len(parts) == 1:
        return parts[0]
    return PromptSet(cfg.pairs.general_dataset, [p for ps in parts for p in ps.prompts],
                     origin=" + ".join(ps.origin for ps in parts), notes=[f"{ps.name}: {len(ps)}" for ps in parts])


def checked_gsm8k_pairs(pairs: list[Any], prompts: Any, mode: str,
                        data_dir: str | None = None) -> tuple[list[Any], dict[str, int]]:
    """GSM8K helpfulness pairs whose chosen answer is right: the final number of the model's answer
    (:func:`~safeneurons.evaluate.capability.extract_gsm8k_answer`) against the question's reference answer.
    Pairs from other datasets of a mix pass unchanged. A wrong answer's pair is dropped (``mode="correct"``)
    or gets the dataset's worked solution, ending "So the answer is N.", as its chosen answer
    (``mode="reference"``; the rejected answer is unchanged)."""
    from safeneurons.data.datasets import read_jsonl_file
    from safeneurons.evaluate.capability import GSM8K_FILE, extract_gsm8k_answer, normalize_number

    rows = read_jsonl_file(GSM8K_FILE, data_dir)
    row_of = {p.text: rows[int(p.id.rsplit("-", 1)[1])] for p in prompts.prompts if p.id.startswith("gsm8k-")}
    out, counts = [], {"right": 0, "wrong": 0}
    for pair in pairs:
        row = row_of.get(pair.prompt_text)
        if row is None:  # a pair from another general dataset of a mix: nothing to check
            out.append(pair)
            continue
        right = extract_gsm8k_answer(pair.chosen) == normalize_number(str(row["short_answer"]))
        counts["right" if right else "wrong"] += 1
        if right:
            out.append(pair)
        elif mode == "reference":
            meta = {k: v for k, v in pair.meta.items() if k != "chosen_finish"}  # the model's answer is gone
            out.append(replace(pair, chosen=row["choices"][0], meta={**meta, "chosen": "gsm8k reference"}))
    return out, counts


def build_pairs(run: RunDir, lm: Any, cfg: TrainRunConfig, harmful: Any, full: Any) -> list[Any]:
    from safeneurons.evaluate.cache import GenerationCache
    from safeneurons.evaluate.judges import make_judge
    from safeneurons.train.preference_data import (
        drop_unfinished,
        generate_fn_for,
        helpfulness_pairs,
        hh_rlhf_pairs,
        load_pairs,
        mix,
        onpolicy_safety_pairs,
        save_pairs,
    )

    path = run.file(rf.PAIRS)
    if run.done("pairs") and path.exists():
        return load_pairs(path)
    with run.stage("pairs") as info:
        cache = GenerationCache(run.file(rf.GENERATIONS))
        gen = generate_fn_for(lm.model, lm.tokenizer, cfg.pairs.generation, cache=cache, model_key=lm.checksum)
        judge = (make_judge(cfg.attack.judge, **cfg.attack.judge_params) if cfg.pairs.judge == cfg.attack.judge
                 else make_judge(cfg.pairs.judge))
        safety, rep_s = onpolicy_safety_pairs(harmful.texts()[: cfg.pairs.n_safety], gen, full, judge)
        if cfg.pairs.hh_rlhf:
            hh, _ = hh_rlhf_pairs(data_dir=cfg.data.data_dir, single_turn=True, limit=cfg.pairs.hh_rlhf)
            safety = list(safety) + list(hh)
        benign = general_prompts(cfg)
        if cfg.pairs.general_max_new_tokens is not None:
            gen_cfg = replace(cfg.pairs.generation, max_new_tokens=cfg.pairs.general_max_new_tokens)
            general_gen = generate_fn_for(lm.model, lm.tokenizer, gen_cfg, cache=cache, model_key=lm.checksum)
        else:
            general_gen = gen
        degrade = cfg.pairs.experimental.degrade
        general, rep_g = helpfulness_pairs(benign.texts(), general_gen, strategy=degrade,
                                           interventions=full if degrade == "pruned" else None)
        if cfg.pairs.general_chosen != "model":
            general, checked = checked_gsm8k_pairs(general, benign, cfg.pairs.general_chosen, cfg.data.data_dir)
            info.update(general_checked=checked)
        if not safety:
            raise ConfigError("no on-policy safety pairs: the model refused none of the harmful prompts that its "
                              "pruned version answered; add prompts or use pairs.hh_rlhf.")
        if cfg.pairs.experimental.drop_unfinished:
            safety, rep_su = drop_unfinished(safety)
            general, rep_gu = drop_unfinished(general)
            info.update(unfinished_dropped={"safety": rep_su.dropped, "general": rep_gu.dropped})
            log.info("pairs: dropped unfinished or degenerate chosen answers: safety %s, general %s",
                     rep_su.dropped, rep_gu.dropped)
            for kind, kept, rep, budget in (
                    ("safety", safety, rep_su, "pairs.generation.max_new_tokens"),
                    ("general", general, rep_gu, "pairs.general_max_new_tokens")):
                if not kept and rep.candidates and (kind == "safety" or cfg.pairs.safety_fraction < 1):
                    raise ConfigError(
                        f"no {kind} pairs left: all {rep.candidates} chosen answers were cut at the token budget or "
                        f"degenerate ({rep.dropped}); raise {budget} or set pairs.experimental.drop_unfinished=false.")
        pairs = mix(safety, general, safety_fraction=cfg.pairs.safety_fraction, seed=cfg.data.seed)
        save_pairs(path, pairs)
        info.update(n_safety=len(safety), n_general=len(general), n_mixed=len(pairs),
                    safety_report=getattr(rep_s, "__dict__", str(rep_s)), general_report=getattr(rep_g, "__dict__", str(rep_g)))
    return pairs


EVALUATION_ONLY = ("attack", "over_refusal_n")  # config sections that do not change what is trained


# the config sections that only some methods read: the other methods' models do not depend on them
METHOD_SECTIONS = {"rounds": ("safeneuron",), "dpo": ("safeneuron", "dpo"), "sft": ("sn_tune",)}


def _training_inputs(config: dict[str, Any], method: str | None = None) -> dict[str, Any]:
    """The part of a train config that decides the trained models (``method``'s alone when given: not the
    ``methods`` list nor the sections only other methods read): everything but the evaluation sections (and
    the checkpointing settings), except the judge, which labels the on-policy preference pairs."""
    out = {k: v for k, v in config.items() if k not in EVALUATION_ONLY}
    if method is not None:
        out = {k: v for k, v in out.items()
               if k != "methods" and method in METHOD_SECTIONS.get(k, (method,))}
    for section in ("dpo", "sft"):  # how often a run checkpoints does not change what it trains
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in ("save_steps", "keep_checkpoints")}
    attack = config.get("attack") or {}
    pair_judge = (config.get("pairs") or {}).get("judge", attack.get("judge"))  # runs before pairs.judge: attack's
    out["pair_judge"] = {"judge": pair_judge,
                         "judge_params": attack.get("judge_params") if pair_judge == attack.get("judge") else {}}
    if isinstance(out.get("pairs"), dict):
        out["pairs"] = {k: v for k, v in out["pairs"].items() if k != "judge"}  # counted once, in pair_judge
    general = (config.get("pairs") or {}).get("general_dataset")
    cap = attack.get("capability") or {}
    tasks, n_per_task = cap.get("tasks") or (), cap.get("n_per_task") or {}
    # a general dataset that is also a capability task: its scored questions decide the general prompts
    held_out = ({t: n_per_task.get(t, cap.get("n")) for t in general_dataset_names(general) if t in tasks}
                if general else {})
    if held_out:
        out["general_held_out"] = held_out
    return out


def reusable_training(source: str | Path, run: RunDir, cfg: TrainRunConfig, method: str,
                      frozen: NeuronSet | None) -> dict[str, Any] | None:
    """The finished ``train:<method>`` stage of an earlier run (``--reuse``) when it trained on exactly
    what this run would: the same training config (evaluation settings may differ), model checksum,
    preference pairs (``pairs.jsonl`` byte for byte) and starting neuron set; for SafeNeuron, ``rounds`` may
    be fewer than this run's (its rounds are then this run's first ones, see :func:`_adopt_rounds`). Otherwise
    ``None``, with the reason logged: the model is then trained again."""
    from safeneurons.io import read_json
    from safeneurons.pipelines.rundir import MANIFEST, _defaults, _same_config

    src = Path(source)
    try:
        manifest = read_json(src / MANIFEST)
    except (OSError, ValueError):
        return None
    info = manifest.get("stages", {}).get(f"train:{method}", {})
    # stored configs as the current keys read them (a key moved since is compared at its new place)
    stored = [migrate_keys(TrainRunConfig, c, str(where / MANIFEST), warn=False)
              for c, where in ((manifest.get("config") or {}, src), (run.manifest["config"], run.path))]
    inputs = [_training_inputs(c, method) for c in (*stored, _defaults(cfg) or {})]
    if method == "safeneuron":  # an earlier run's rounds are this run's first ones: compared below
        for d in inputs:
            d.pop("rounds", None)
    checks = {
        "the training stage finished": info.get("status") == "done",
        "same model": manifest.get("model", {}).get("checksum") == run.manifest.get("model", {}).get("checksum"),
        "same training config": _same_config(*inputs),
        f"at most {cfg.rounds} round(s)": method != "safeneuron" or rounds_trained(info) <= cfg.rounds,
        "same preference pairs": (src / rf.PAIRS).is_file()
        and (src / rf.PAIRS).read_bytes() == run.file(rf.PAIRS).read_bytes(),
        "same starting neurons": frozen is None or (
            (src / rf.neuron_set("FULL", rf.BASE)).is_file()
            and NeuronSet.load(src / rf.neuron_set("FULL", rf.BASE), shape=frozen.shape) == frozen),
    }
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        log.info("not reusing %s's %s model: not %s", src, method, "; not ".join(failed))
        return None
    return info


def rounds_trained(info: dict[str, Any]) -> int:
    """How many SafeNeuron rounds a finished ``train:safeneuron`` stage holds (a single-round run: 1)."""
    return len(info.get("rounds") or []) or 1


def _relocate(x: Any, method: str, dst_dir: Path, source: Path) -> Any:
    """``x`` (stage info or a training result of the earlier run ``source``) with every
    ``model_dir``/``directory``/``output_dir`` path "<earlier run>/<method>/<rest>" moved to
    "<dst_dir>/<rest>"."""
    def moved(path: str) -> str:
        parts = Path(path).parts
        if method not in parts:
            raise ConfigError(f"--reuse {source}: its manifest names {path}, which is not inside its "
                              f"{method}/ directory; that run cannot be adopted (drop it from --reuse).")
        last = len(parts) - 1 - parts[::-1].index(method)
        return str(dst_dir.joinpath(*parts[last + 1:]))

    if isinstance(x, dict):
        return {k: moved(v) if k in ("model_dir", "directory", "output_dir") and isinstance(v, str)
                else _relocate(v, method, dst_dir, source) for k, v in x.items()}
    return [_relocate(v, method, dst_dir, source) for v in x] if isinstance(x, list) else x


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (else copy) every file under ``src`` to the same relative path under ``dst``."""
    from safeneurons.pipelines.rundir import copy_missing

    copy_missing(sorted(p for p in src.rglob("*") if p.is_file()), src, dst, link=True)


def _adopt_training(source: Path, run: RunDir, method: str, info: dict[str, Any]) -> dict[str, Any]:
    """Hard-link (else copy) an earlier run's ``<method>/`` tree into this run and return its stage info
    with paths pointing here."""
    src_dir, dst_dir = source / rf.method_dir(method), run.path / rf.method_dir(method)
    _link_tree(src_dir, dst_dir)
    out = _relocate({k: v for k, v in info.items() if k not in ("status", "started", "finished", "seconds")},
                    method, dst_dir, source)
    out["reused_from"] = str(source.resolve())
    return out


def _adopt_rounds(source: Path, run: RunDir, info: dict[str, Any], first: NeuronSet) -> dict[str, Any]:
    """Start this run's SafeNeuron rounds from an earlier run's finished ones (``--reuse`` with more
    ``rounds``): their files hard-linked into ``safeneuron/round_<t>/`` with completion markers pointing here
    (a single-round run's ``safeneuron/`` becomes ``round_1``, ``first`` its identified set, and its attack's
    caches seed ``attack-safeneuron_T1``), so :func:`~safeneurons.train.dpo.iterate_rounds` resumes after
    them. Returns what was adopted, for the stage info."""
    from safeneurons.io import read_json, write_json_atomic
    from safeneurons.pipelines.rundir import seed_caches
    from safeneurons.train.dpo import mark_round_done, save_round_sets

    method = "safeneuron"
    src_dir, dst_dir = source / rf.method_dir(method), run.path / rf.method_dir(method)
    if info.get("rounds"):
        for r in info["rounds"]:
            rdir = run.path / rf.method_dir(method, r["round"])
            _link_tree(source / rf.method_dir(method, r["round"]), rdir)
            marker = read_json(rdir / rf.ROUND_MARKER)  # rewritten, not edited: the earlier run's link is kept
            write_json_atomic(rdir / rf.ROUND_MARKER, {**marker, "train": _relocate(marker["train"], method,
                                                                                     dst_dir, source)})
    else:
        rdir = run.path / rf.method_dir(method, 1)
        _link_tree(src_dir, rdir)
        identified, frozen = save_round_sets(rdir, 1, first, None)
        mark_round_done(rdir, 1, identified, frozen,
                        _relocate(read_json(source / rf.train_result(method)), method, rdir, source))
        if (source / rf.attack_dir(method) / rf.MANIFEST).is_file():
            seed_caches(source / rf.attack_dir(method), run.path / rf.attack_dir(f"{method}_T1"))
    return {"source": str(source.resolve()), "rounds": rounds_trained(info)}


def run_train(cfg: TrainRunConfig, out: str | Path | None = None, progress: bool = True,
              reuse: str | Path | Sequence[str | Path] | None = None) -> Path:
    """Identify, build preference pairs, train each method (and SafeNeuron rounds), then attack and
    evaluate every model. ``reuse``: earlier train runs (the first that fits wins) whose trained models are
    adopted where they trained on exactly the same inputs (see :func:`reusable_training`), so changing only
    evaluation settings re-evaluates without re-training."""
    from safeneurons.models import load_model
    from safeneurons.pipelines.attack import run_attack
    from safeneurons.stats import collect_stats
    from safeneurons.train.dpo import iterate_rounds, train_safeneuron_dpo
    from safeneurons.train.sft import sn_tune

    split = cfg.attack.data.split
    if needs_ledger(split):  # a test scoring: fail on an unwritable ledger before hours of training
        check_writable()
    check_resumed_split(out, "attack.data.split", split)
    run = RunDir(out or default_run_dir("train"), "train", cfg)
    sources = [] if reuse is None else [reuse] if isinstance(reuse, (str, Path)) else list(reuse)

    def fresh() -> Any:
        return cfg.model.load()

    lm = fresh()
    record_model(run, lm)
    harmful, harmless = load_identification_data(cfg.data)
    _, sets = identification_stage(run, lm, harmful, harmless, cfg.stats, cfg.identify, prefix="base/",
                                   progress=progress)
    pairs = build_pairs(run, lm, cfg, harmful, sets["FULL"])
    dpo_cfg = cfg.dpo
    models: dict[str, Path | str] = {"original": cfg.model.spec}
    for method in cfg.methods:
        mdir = run.path / rf.method_dir(method)
        if run.done(f"train:{method}"):
            models.update(_trained_models(method, run.manifest["stages"][f"train:{method}"]))
            continue
        start_set = None if method == "dpo" else sets["FULL"]
        adoptable = next(((Path(src), earlier) for src in sources
                          if (earlier := reusable_training(src, run, cfg, method, start_set)) is not None), None)
        extended = None
        if adoptable is not None and rounds_trained(adoptable[1]) < cfg.rounds and method == "safeneuron":
            log.info("%s trained %d of the %d rounds: continuing from them", adoptable[0],
                     rounds_trained(adoptable[1]), cfg.rounds)
            extended = _adopt_rounds(adoptable[0], run, adoptable[1], sets["FULL"])
            adoptable = None
        if adoptable is not None:
            with run.stage(f"train:{method}") as info:
                info.update(_adopt_training(adoptable[0], run, method, adoptable[1]))
            models.update(_trained_models(method, info))
            continue
        lm_m = fresh()
        with run.stage(f"train:{method}") as info:
            if method == "safeneuron" and cfg.rounds > 1:
                def identify_fn(model: Any) -> Any:
                    from safeneurons.identify import identify
                    from safeneurons.models import model_layout

                    st = collect_stats(model, lm_m.tokenizer, {"harmful": harmful, "harmless": harmless}, cfg.stats,
                                       progress=progress)
                    return identify(st, cfg.identify.method, cfg.identify.params,
                                    family=model_layout(model).adapter.family)["FULL"]

                rounds = iterate_rounds(lm_m.model, lm_m.tokenizer, identify_fn, pairs, cfg.rounds, dpo_cfg, mdir,
                                        first_identified=sets["FULL"])  # round 1 = the starting weights
                info["rounds"] = [r.__dict__ for r in rounds]
                if extended:
                    info["rounds_reused_from"] = extended
                model_dir = str(Path(rounds[-1].directory) / rf.MODEL_SUBDIR)
            elif method in ("safeneuron", "dpo"):
                res = train_safeneuron_dpo(lm_m.model, lm_m.tokenizer, pairs,
                                           sets["FULL"] if method == "safeneuron" else None, dpo_cfg, mdir)
                info.update(frozen_drift=res.frozen_drift, trainable_fraction=res.trainable_fraction,
                            train_loss=res.train_loss, steps=res.global_step)
                model_dir = res.model_dir or str(mdir / rf.MODEL_SUBDIR)
            else:
                res = sn_tune(lm_m.model, lm_m.tokenizer, harmful.texts(), sets["FULL"],
                              config=cfg.sft, output_dir=mdir)
                info.update(trainable_fraction=res.trainable_fraction, train_loss=res.train_loss)
                model_dir = res.model_dir or str(mdir / rf.MODEL_SUBDIR)
            info["model_dir"] = model_dir
        models.update(_trained_models(method, info))
        del lm_m
    refs = eval_refs(cfg)
    record_eval_sets(run, refs)
    # one look for every model: opened before the first held-out prompt is generated, closed with the table
    look = open_look(run.path, run.manifest["config"], lm.checksum, refs) if needs_ledger(split) else None
    robustness: dict[str, Any] = {}
    checksums: dict[str, str] = {}
    for name, spec in models.items():
        m = lm if name == "original" else load_model(str(spec), dtype=cfg.model.dtype, device=cfg.model.device)
        checksums[name] = m.checksum
        apath = run_attack(cfg.attack, run.path / rf.attack_dir(name), progress=progress, lm=m, look=look)
        robustness[name] = {"attack_dir": str(apath)}
        if cfg.over_refusal_n:
            robustness[name]["over_refusal"] = over_refusal_stage(
                run, rf.over_refusal(name), m.model, m.tokenizer, n=cfg.over_refusal_n,
                data_dir=cfg.data.data_dir, seed=cfg.data.seed, split=split, generation=cfg.attack.generation)
    table = _robustness_table(run.path, robustness, cfg.attack.capability.metric_of)
    run.write_json(rf.ROBUSTNESS, table)
    rounds = run.manifest["stages"].get("train:safeneuron", {}).get("rounds", [])
    from safeneurons.io import read_json

    notes = {read_json(Path(r["attack_dir"]) / rf.ASR).get("judge_note") for r in robustness.values()}
    run.write_text(rf.ROBUSTNESS_MD, robustness_markdown(table, rounds) + "".join(f"\n{n}\n" for n in sorted(
        n for n in notes if n)))
    if look is not None:
        headline = ("asr", "over_refusal", "capability")
        look.close(models=checksums, robustness={name: {k: row.get(k) for k in headline}
                                                 for name, row in table.items()})
    run.finish()
    return run.path


def eval_refs(cfg: TrainRunConfig) -> list[EvalSetRef]:
    """The evaluation sets every model of a train run is scored on (``attack.data.split``): the attack's
    held-out prompts and capability questions, and the XSTest over-refusal sample."""
    harmful, harmless = load_identification_data(cfg.attack.data)
    refs = attack_eval_refs(cfg.attack, load_eval_data(cfg.attack.data, [harmful, harmless]))
    if cfg.over_refusal_n:
        refs.append(over_refusal_ref(cfg.over_refusal_n, cfg.data.data_dir, cfg.data.seed,
                                     cfg.attack.data.split))
    return refs


def _trained_models(method: str, info: dict[str, Any]) -> dict[str, str]:
    """The models a finished training stage contributes to the robustness table: one per SafeNeuron
    round (``safeneuron_T1`` .. ``safeneuron_TT``, the iterative-round table) or the single final model."""
    if info.get("rounds"):
        return {f"{method}_T{r['round']}": str(Path(r["directory"]) / rf.MODEL_SUBDIR) for r in info["rounds"]}
    return {method: str(info["model_dir"])}


def _robustness_table(root: Path, robustness: dict[str, Any],
                      metric_of: Callable[[str], str] = lambda task: "acc") -> dict[str, Any]:
    """One row per model: ASR per attack condition, over-refusal, capability (each task in
    ``metric_of(task)``) and, against the original, the paired capability difference (same questions;
    see ``paired_difference``)."""
    from safeneurons.errors import DataError
    from safeneurons.evaluate.asr import paired_ratio_interval, successes
    from safeneurons.evaluate.capability import CapabilityResult, paired_difference
    from safeneurons.io import read_json

    rows: dict[str, rf.RobustnessRow] = {}
    results = {}
    full: dict[str, dict[str, int]] = {}  # FULL-attack successes per prompt, for the ratio to plain DPO
    for name, r in robustness.items():
        a = Path(r["attack_dir"])
        summary = read_json(a / rf.ASR)["summary"] if (a / rf.ASR).exists() else {}
        cap = read_json(a / rf.CAPABILITY) if (a / rf.CAPABILITY).exists() else {}
        results[name] = {t: CapabilityResult.from_dict(v) for t, v in cap.get("ORI", {}).get("tasks", {}).items()}
        verdicts = a / rf.VERDICTS
        if name != "original" and verdicts.exists():
            full[name] = successes(read_json(verdicts), "FULL")
        rows[name] = rf.RobustnessRow(
            asr={c: rf.AsrEntry.from_dict(s).asr for c, s in summary.items()},
            over_refusal=(r.get("over_refusal") or {}).get("refusal_rate"),
            capability={t: v.score(metric_of(t)) for t, v in results[name].items()},
            capability_metric={t: {"metric": metric_of(t), "k_shot": v.k_shot, "n": v.n} for t, v in results[name].items()},
            attack_dir=str(a.relative_to(root)) if a.is_relative_to(root) else str(a))
    for name, row in rows.items():
        if name not in ("original", "dpo") and full.get(name) and full.get("dpo"):
            row = rows[name] = replace(row, full_asr_ratio_vs_dpo=paired_ratio_interval(full[name], full["dpo"]))
        if name == "original":
            continue
        delta: dict[str, Any] = {}
        for task, res in results[name].items():
            try:
                delta[task] = paired_difference(results["original"][task], res, metric=metric_of(task))
            except (KeyError, DataError):  # no original result for the task, or results without per-question data
                continue
        rows[name] = replace(row, capability_delta=delta)
    return {name: row.to_dict() for name, row in rows.items()}


def robustness_markdown(table: dict[str, Any], rounds: list[dict[str, Any]] | None = None) -> str:
    """The robustness table (ASR per attack condition, over-refusal, capability per model) and, for an
    iterative run, the round table (neurons identified / frozen, FULL ASR), as Markdown."""
    def pct(x: Any) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    order = {c: i for i, c in enumerate(CONDITIONS)}  # RANDOM<seed> sorts after FULL, by seed
    conds = sorted({c for r in table.values() for c in r["asr"]}, key=lambda c: (order.get(c, len(order)), c))
    def delta(d: Any) -> str:
        return "–" if not d else f"{100 * d['delta']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]"

    tasks = sorted({t for r in table.values() for t in r["capability"]})
    label = {}
    for t in tasks:
        m = next((r["capability_metric"][t] for r in table.values() if t in r.get("capability_metric", {})), None)
        label[t] = t if m is None else f"{t} {m['metric']} {m['k_shot']}-shot"
    def ratio(d: Any) -> str:
        return "–" if not d or d["ratio"] is None else f"{d['ratio']:.2f} [{d['ci'][0]:.2f}, {d['ci'][1]:.2f}]"

    with_ratio = any("full_asr_ratio_vs_dpo" in r for r in table.values())
    head = ["model", *[f"ASR {c}" for c in conds], *(["FULL / plain DPO (95% CI)"] if with_ratio else []),
            "over-refusal", *[label[t] for t in tasks], *[f"Δ {t} (95% CI)" for t in tasks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in table.items():
        cells = [name, *[pct(r["asr"].get(c)) for c in conds],
                 *([ratio(r.get("full_asr_ratio_vs_dpo"))] if with_ratio else []), pct(r["over_refusal"]),
                 *[pct(r["capability"].get(t)) for t in tasks],
                 *[delta(r.get("capability_delta", {}).get(t)) for t in tasks]]
        lines.append("| " + " | ".join(cells) + " |")
    out = "All figures in %. ASR per pruning condition (neurons re-identified on each model); FULL-attack ASR " \
          "over plain DPO's with a paired bootstrap interval (same prompts); over-refusal on XSTest safe " \
          "prompts; capability and its paired difference from the original (same questions).\n\n" + \
          "\n".join(lines) + "\n"
    if rounds:
        out += "\n| round | identified | frozen (union) | ASR FULL |\n|---|---|---|---|\n"
        for r in rounds:
            full = table.get(f"safeneuron_T{r['round']}", {}).get("asr", {}).get("FULL")
            out += f"| T{r['round']} | {r['identified']} | {r['frozen']} | {pct(full)} |\n"
    return out
