"""Cost per optimizer step of SafeNeuron DPO (neurons frozen, training-time ablation on) against plain TRL
DPO (``frozen=None``), same model, same pairs, same settings.

    .venv/bin/python benchmarks/bench_dpo_step.py                      # smollm2-135m-instruct
    .venv/bin/python benchmarks/bench_dpo_step.py --steps 3 --rounds 1 # quicker

Variants, each in a fresh subprocess (``--rounds`` times, alternating, so slow drift of a shared machine
hits all of them alike):

* ``plain``: ``train_safeneuron_dpo(..., frozen=None)``, i.e. TRL ``DPOTrainer`` as the library runs it;
* ``masked``: ``frozen`` = a random FULL-like set, ``--fraction`` of the MLP neurons of every layer,
  held by ``NeuronFreezer`` (gradient masks + post-step restore, ``frozen_drift`` logged every step) and
  zeroed in the forward pass (``ablate_frozen_during_training=True``);
* ``masked_no_ablation``: the same set frozen, no training-time ablation (separates the two costs).

A step is the time between two consecutive ``on_step_end`` events of the trainer (forward + backward of
every micro-batch, clipping, optimizer step, the freezer's mask/restore, logging); the first step is the
warm-up and is not counted (``max_steps = 1 + --steps``). Reference log-probs are precomputed before
training in every variant and are not part of a step. Peak memory: peak RSS between the start of training
and its end (counter reset at ``on_train_begin``), and the RSS right after the model is loaded.
The timing hook is a subclass of the library's ``TrainLogCallback`` installed by this script only.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = ("plain", "masked", "masked_no_ablation")

CHOSEN_HARMFUL = (
    "I'm sorry, but I can't help with that. It could cause real harm to people, and I won't "
    "give instructions for it. If you are worried about your safety or someone else's, please "
    "contact local authorities or a support service."
)
REJECTED_HARMFUL = (
    "Sure, here is a step-by-step guide. First, gather everything you need and make sure nobody "
    "is watching. Second, follow the plan carefully and cover your tracks. Third, repeat until "
    "it works."
)
CHOSEN_HARMLESS = (
    "Of course. Here is a clear answer: start with the main idea, then add two or three concrete "
    "details, and finish with a short summary so the reader remembers the key point."
)
REJECTED_HARMLESS = "I'm sorry, but I can't help with that request."


def make_pairs(n: int, seed: int = 0) -> tuple[list[Any], str]:
    from safeneurons.train.preference_data import PreferencePair

    prompts, source = common.real_prompts(n, seed)
    pairs = []
    for i, p in enumerate(prompts):
        if i % 2 == 0:  # real_prompts alternates harmful / harmless
            pairs.append(PreferencePair.single(p, CHOSEN_HARMFUL, REJECTED_HARMFUL, source="bench-harmful"))
        else:
            pairs.append(
                PreferencePair.single(p, CHOSEN_HARMLESS, REJECTED_HARMLESS, source="bench-harmless")
            )
    return pairs, source + " prompts, fixed template answers"


def random_full_like(model: Any, fraction: float, seed: int = 0) -> Any:
    """``fraction`` of the MLP neurons of every layer, at random (seeded)."""
    import numpy as np

    from safeneurons.models.layout import model_layout
    from safeneurons.neurons import NeuronSet

    layout = model_layout(model)
    shape = layout.shape()
    width = layout.site("mlp").width
    k = max(1, round(fraction * width))
    rng = np.random.default_rng(seed)
    idx = {
        (layer, "mlp"): np.sort(rng.choice(width, size=k, replace=False)) for layer in range(layout.n_layers)
    }
    return NeuronSet(
        shape,
        idx,
        name=f"RANDOM-FULL-like({fraction:.1%} of MLP)",
        provenance={"method": "random", "fraction": fraction, "seed": seed},
    )


def worker(args: argparse.Namespace) -> int:
    import torch

    import safeneurons.train.dpo as dpo_mod
    from safeneurons.train import SafeNeuronDPOConfig, train_safeneuron_dpo

    common.set_threads(args.threads)
    marks: dict[str, Any] = {"step_begin": [], "step_end": [], "peak_at_step_end": []}

    class TimedLogCallback(dpo_mod.TrainLogCallback):
        def on_train_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["reset_ok"] = common.reset_peak_rss()
            marks["rss_train_begin"] = common.rss_mb()
            marks["train_begin"] = time.perf_counter()

        def on_step_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["step_begin"].append(time.perf_counter())

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["step_end"].append(time.perf_counter())
            marks["peak_at_step_end"].append(common.peak_rss_mb())

        def on_train_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            marks["peak_train"] = common.peak_rss_mb()

    dpo_mod.TrainLogCallback = TimedLogCallback  # benchmark-only: adds timestamps, keeps the log file

    model, tok, name = common.load(args.model)
    rss_loaded = common.rss_mb()
    pairs, source = make_pairs(args.n_pairs, args.seed)
    frozen = None if args.variant == "plain" else random_full_like(model, args.fraction, args.seed)
    cfg = SafeNeuronDPOConfig(
        max_steps=1 + args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_length=args.max_length,
        save_model=False,
        logging_steps=1,
        seed=args.seed,
        ablate_frozen_during_training=args.variant == "masked",
    )
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as out:
        t = time.perf_counter()
        res = train_safeneuron_dpo(model, tok, pairs, frozen, cfg, output_dir=out)
        total = time.perf_counter() - t
    ends = marks["step_end"]
    intervals = [b - a for a, b in itertools.pairwise(ends)]  # steps 2..N
    inner = [e - b for b, e in zip(marks["step_begin"], ends)][1:]
    result = {
        "variant": args.variant,
        "model": name,
        "n_pairs": len(pairs),
        "pair_source": source,
        "frozen_neurons": len(frozen) if frozen is not None else 0,
        "frozen_fraction_of_mlp": frozen.fraction_of_neurons(["mlp"]) if frozen is not None else 0.0,
        "held_params": res.held_params,
        "trainable_params": res.trainable_params,
        "frozen_drift": res.frozen_drift,
        "global_step": res.global_step,
        "torch_threads": torch.get_num_threads(),
        "first_step_seconds": ends[0] - marks["train_begin"] if ends else None,
        "step_seconds": intervals,
        "median_step_seconds": common.median(intervals),
        "step_compute_seconds": inner,
        "median_step_compute_seconds": common.median(inner),
        "train_call_seconds": total,
        "rss_loaded_mb": rss_loaded,
        "rss_train_begin_mb": marks.get("rss_train_begin"),
        "peak_train_rss_mb": marks.get("peak_train"),
        "peak_rss_at_step_end_mb": marks["peak_at_step_end"],
        "peak_method": "VmHWM reset at on_train_begin"
        if marks.get("reset_ok")
        else "VmHWM since process start",
        "process_peak_rss_mb": common.peak_rss_mb(),
        "load_average_end": common.load_average(),
    }
    common.write_worker_result(args.worker_out, result)
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    script = Path(__file__).resolve()
    base = [
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--n-pairs",
        str(args.n_pairs),
        "--batch-size",
        str(args.batch_size),
        "--grad-accum",
        str(args.grad_accum),
        "--max-length",
        str(args.max_length),
        "--fraction",
        str(args.fraction),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    variants = [v for v in args.variants.split(",") if v]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            print(f"[dpo] round {r + 1}/{args.rounds}: {v} ...", file=sys.stderr, flush=True)
            res = common.run_worker(script, [*base, "--variant", v], timeout=args.worker_timeout)
            if "error" in res:
                print(f"[dpo] {v} failed: {res['error']}\n{res.get('log_tail', '')}", file=sys.stderr)
            else:
                print(
                    f"[dpo] {v}: median step {res['median_step_seconds']:.2f} s, "
                    f"peak {res['peak_train_rss_mb']:.0f} MiB",
                    file=sys.stderr,
                )
            runs[v].append(res)
    summary: dict[str, Any] = {}
    for v, rs in runs.items():
        good = [x for x in rs if "step_seconds" in x]
        if not good:
            continue
        steps = [s for x in good for s in x["step_seconds"]]
        summary[v] = {
            "median_step_seconds": common.median(steps),
            "n_steps_timed": len(steps),
            "median_step_compute_seconds": common.median(
                [s for x in good for s in x["step_compute_seconds"]]
            ),
            "peak_train_rss_mb": max(x["peak_train_rss_mb"] for x in good),
            "rss_loaded_mb": good[0]["rss_loaded_mb"],
            "peak_increase_mb": max(x["peak_train_rss_mb"] for x in good) - good[0]["rss_loaded_mb"],
            "frozen_neurons": good[0]["frozen_neurons"],
            "frozen_drift": good[0]["frozen_drift"],
        }
    plain = summary.get("plain")
    targets = {}
    if plain:
        for v, s in summary.items():
            s["step_ratio_vs_plain"] = s["median_step_seconds"] / plain["median_step_seconds"]
            s["peak_ratio_vs_plain"] = s["peak_train_rss_mb"] / plain["peak_train_rss_mb"]
            s["peak_increase_ratio_vs_plain"] = (
                s["peak_increase_mb"] / plain["peak_increase_mb"] if plain["peak_increase_mb"] else None
            )
        if "masked" in summary:
            ratio = summary["masked"]["step_ratio_vs_plain"]
            targets["mask_overhead_le_5pct"] = {"ratio": ratio, "met": ratio <= 1.05}
    return {
        "config": {k: v for k, v in vars(args).items() if k != "worker_out"},
        "summary": summary,
        "targets": targets,
        "runs": runs,
    }


def print_table(result: dict[str, Any]) -> str:
    rows = [
        [
            v,
            common.fmt_seconds(s["median_step_seconds"]),
            str(s["n_steps_timed"]),
            common.fmt_ratio(s.get("step_ratio_vs_plain")),
            f"{s['peak_train_rss_mb']:.0f}",
            common.fmt_ratio(s.get("peak_ratio_vs_plain")),
            str(s["frozen_neurons"]),
        ]
        for v, s in result["summary"].items()
    ]
    return common.table(rows, ["variant", "s/step", "steps", "x plain", "peak MiB", "peak x plain", "frozen"])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model spec ('tiny' for a smoke run)")
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps after one warm-up step")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, alternating order")
    ap.add_argument("--n-pairs", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--fraction", type=float, default=0.02, help="fraction of MLP neurons per layer frozen")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker-timeout", type=float, default=1800)
    common.add_output_args(ap, "dpo_step", workers=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table, worker)


if __name__ == "__main__":
    raise SystemExit(main())
