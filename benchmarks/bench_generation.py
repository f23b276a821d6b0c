"""Batched generation (our ``generate``, ``--batch-size`` prompts per ``model.generate`` call) against
one prompt at a time, on the same prompts with the same greedy settings, and vLLM where installed on a GPU.

    .venv/bin/python benchmarks/bench_generation.py --model smollm2-135m-instruct --n-prompts 16

Both modes call :func:`safeneurons.evaluate.generate.generate_detailed` (chat template, left padding,
length-sorted batches); only ``batch_size`` differs, so the ratio isolates batching. Throughput counts
the new tokens each prompt really produced (up to and including its end-of-turn token), not the padding
a finished row keeps receiving while the rest of its batch goes on. ``same_text`` is the fraction of
prompts whose greedy text is identical in both modes (padding may change floating-point rounding).
The model is loaded once; a short warm-up generation runs before the timed ones.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from safeneurons.evaluate.generate import GenerationConfig, generate_detailed

    common.set_threads(args.threads)
    model, tok, name = common.load(args.model)
    prompts, source = common.real_prompts(args.n_prompts, seed=args.seed)
    rss_loaded = common.rss_mb()
    generate_detailed(
        model, tok, prompts[:2], GenerationConfig(max_new_tokens=4, batch_size=2), progress=False
    )

    modes = {"batched": args.batch_size, "one_by_one": 1}
    runs: dict[str, Any] = {}
    texts: dict[str, list[str]] = {}
    for mode, bs in modes.items():
        cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=bs, do_sample=False)
        secs, toks = [], []
        for _ in range(args.repeats):
            print(
                f"[generation] {mode} (batch {bs}): {len(prompts)} prompts x "
                f"{args.max_new_tokens} new tokens ...",
                file=sys.stderr,
                flush=True,
            )
            t = time.perf_counter()
            gens = generate_detailed(model, tok, prompts, cfg, progress=False)
            secs.append(time.perf_counter() - t)
            toks.append(sum(g.n_new_tokens for g in gens))
            texts[mode] = [g.text for g in gens]
        med = common.median(secs)
        runs[mode] = {
            "batch_size": bs,
            "seconds": secs,
            "median_seconds": med,
            "new_tokens": toks,
            "tokens_per_second": toks[0] / med,
            "finish_reasons": {r: sum(g.finish_reason == r for g in gens) for r in ("eos", "stop", "length")},
        }
        print(
            f"[generation] {mode}: {med:.2f} s, {runs[mode]['tokens_per_second']:.1f} tokens/s",
            file=sys.stderr,
        )
    same = sum(a == b for a, b in zip(texts["batched"], texts["one_by_one"])) / len(prompts)
    speedup = runs["batched"]["tokens_per_second"] / runs["one_by_one"]["tokens_per_second"]
    runs["vllm"] = run_vllm(model, tok, prompts, args)
    return {
        "config": vars(args),
        "model": name,
        "prompt_source": source,
        "n_prompts": len(prompts),
        "torch_threads": torch.get_num_threads(),
        "rss_loaded_mb": rss_loaded,
        "peak_rss_mb": common.peak_rss_mb(),
        "runs": runs,
        "same_text_fraction": same,
        "summary": {
            "batched_tokens_per_second": runs["batched"]["tokens_per_second"],
            "one_by_one_tokens_per_second": runs["one_by_one"]["tokens_per_second"],
            "throughput_ratio_batched_vs_one_by_one": speedup,
            "wall_ratio_one_by_one_vs_batched": runs["one_by_one"]["median_seconds"]
            / runs["batched"]["median_seconds"],
        },
    }


def run_vllm(model: Any, tok: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """vLLM (``generate_vllm``) on the same prompts, when vLLM and a CUDA GPU are present; otherwise the
    reason it was skipped. Its time includes the engine start-up (``generate_vllm`` starts one per call);
    new tokens are counted by re-tokenising the texts."""
    import importlib.util

    import torch

    why = ("vllm is not installed" if importlib.util.find_spec("vllm") is None
           else "no CUDA GPU" if not torch.cuda.is_available() else None)
    if why:
        print(f"[generation] vllm: skipped ({why})", file=sys.stderr)
        return {"skipped": why}
    from safeneurons.evaluate.generate import GenerationConfig, generate_vllm

    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False)
    t = time.perf_counter()
    outs = generate_vllm(model, prompts, cfg, tokenizer=tok)
    secs = time.perf_counter() - t
    toks = sum(len(tok(o, add_special_tokens=False).input_ids) for o in outs)
    return {"batch_size": "engine", "seconds": [secs], "median_seconds": secs, "new_tokens": [toks],
            "tokens_per_second": toks / secs, "includes_engine_start": True}


def print_table(result: dict[str, Any]) -> str:
    rows = [
        [
            m,
            str(r["batch_size"]),
            common.fmt_seconds(r["median_seconds"]),
            str(r["new_tokens"][0]),
            f"{r['tokens_per_second']:.1f}",
        ]
        if "skipped" not in r
        else [m, "-", f"skipped: {r['skipped']}", "-", "-"]
        for m, r in result["runs"].items()
    ]
    s = result["summary"]
    return "\n".join(
        [
            common.table(rows, ["mode", "batch", "seconds", "new tokens", "tokens/s"]),
            (
                f"throughput batched / one-by-one: {s['throughput_ratio_batched_vs_one_by_one']:.2f}x; "
                f"identical greedy texts: {result['same_text_fraction']:.0%}"
            ),
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="qwen2.5-coder-0.5b-instruct", help="model spec ('tiny' for a smoke run)"
    )
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    common.add_output_args(ap, "generation")
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
