"""Activation-collection cost: our ``collect_stats`` against a bare decoder forward, TransformerLens and
nnsight, on the same batches of the same model, plus peak memory and its growth with the number of prompts.

    .venv/bin/python benchmarks/bench_stats.py                                  # qwen2.5-coder-0.5b-instruct
    .venv/bin/python benchmarks/bench_stats.py --model smollm2-135m-instruct --n-prompts 16 --repeats 2

Variants (each in a fresh subprocess, so its peak RSS is its own):

* ``bare``: the decoder stack only (``decoder_of(model)``, no LM head, ``use_cache=False``), under
  ``torch.no_grad``, on exactly the batches ``collect_stats`` builds (chat template, length-sorted,
  right-padded, ``--batch-size`` prompts each);
* ``ours_last`` / ``ours_all``: ``collect_stats`` on the MLP site (input of ``down_proj``), position
  ``last`` / ``all_tokens`` (float64 running moments; tokenisation included in the time);
* ``tl``: TransformerLens ``TransformerBridge.boot_transformers(name, hf_model=model, tokenizer=tok)`` then
  ``run_with_cache(ids, attention_mask=mask, names_filter=<the blocks.*.mlp.hook_post names>,
  return_type=None, logits_to_keep=1)`` per batch; the cached activations are reduced to the same
  last-token moments (the bridge switches the model to eager attention: that is part of its cost);
* ``nnsight``: ``LanguageModel(model, tokenizer=tok).trace(batch, logits_to_keep=1)`` saving every
  ``down_proj`` input, then the same reduction.

Time: median of ``--repeats`` (default 6) full passes after a one-batch warm-up. For every variant but
``bare`` each repeat also runs a bare pass in the same process (alternating which goes first), and
``paired_ratio`` is the median of the per-repeat ratios, given with their min-max and quartiles
(``paired_spread``): less sensitive to a noisy machine than the ratio of medians from two processes (on the
2-core VM one pass of the same work takes 16-32 s from one minute to the next). TransformerLens's paired bare
pass runs on the model after the bridge booted, so with the eager attention it switched to
(``paired_bare_attn``): its ratio is the cost of its caching over the forward it rides on, as ours is. Every
worker records the CPU model and the load average before and after its passes; the result file's ``machine``
block has both for the run.

Targets (issue 40; ``targets`` in the JSON): paired medians ``ours_last`` <= 1.05 and ``ours_all`` <= 1.10
times a bare forward; ``ours_*`` no slower than TransformerLens and nnsight: its paired ratio no larger than
theirs (the medians of separate processes are recorded beside it but decide nothing: the spread between
processes is larger than the differences measured); and the peak RSS of ``ours_*`` <= 1.05 times the bare
forward's.
Memory: peak RSS during the passes (the peak counter is reset after the model is loaded), and the
increase over the RSS of the loaded model. The scaling runs repeat some variants with ``--scale`` prompt
counts (one pass each) to show whether peak memory grows with the number of prompts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = ("bare", "ours_last", "ours_all", "tl", "nnsight")
TIME_TARGETS = {"ours_last": 1.05, "ours_all": 1.10}  # paired median, time / bare forward
PEAK_TARGET = 1.05  # peak RSS / bare forward's peak RSS
LABELS = {
    "bare": "bare decoder forward (no LM head)",
    "ours_last": "safeneurons collect_stats, mlp, last token",
    "ours_all": "safeneurons collect_stats, mlp, all tokens",
    "tl": "TransformerLens run_with_cache(mlp.hook_post)",
    "nnsight": "nnsight trace, save every down_proj input",
}
IMPORT_OF = {"tl": "transformer_lens", "nnsight": "nnsight"}


# ------------------------------------------------------------------------------------------------
# worker (one variant, fresh process)


def _tl_name(model: Any, spec: str) -> str:
    """The Hugging Face id TransformerLens is given (it reuses ``hf_model``'s config; the name is a label)."""
    try:
        from safeneurons.models.offline import find_offline_model

        off = find_offline_model(spec)
        if off is not None:
            return off.hf_id
    except Exception:  # noqa: BLE001 - a label only
        pass
    name = str(getattr(model.config, "_name_or_path", "") or "")
    return name if name and not Path(name).exists() else "Qwen/Qwen2-0.5B"


def _last_rows(mask: Any) -> tuple[Any, Any]:
    import torch

    last = mask.sum(1) - 1  # right padding: the last real token
    return torch.arange(mask.shape[0]), last


def _setup(
    variant: str,
    model: Any,
    tok: Any,
    texts: list[str],
    batches: list[tuple[Any, Any]],
    args: argparse.Namespace,
) -> tuple[Callable[[], Any], Callable[[], float | None], dict[str, Any]]:
    """``(one_pass, check, info)`` for a variant. ``check()`` sums |mean| of the last-token moments over
    layers, so variants that measure the same thing can be compared."""
    import torch

    from safeneurons.models.layout import model_layout
    from safeneurons.stats.collect import StatsConfig, collect_stats, decoder_of
    from safeneurons.stats.moments import RunningMoments

    layout = model_layout(model)
    n_layers, width = layout.n_layers, layout.site("mlp").width
    info: dict[str, Any] = {}
    holder: dict[str, Any] = {}

    if variant == "bare":
        decoder = decoder_of(model)

        @torch.no_grad()
        def one_pass() -> None:
            for ids, mask in batches:
                decoder(input_ids=ids, attention_mask=mask, use_cache=False)

        return one_pass, lambda: None, info

    if variant in ("ours_last", "ours_all"):
        cfg = StatsConfig(
            position="last" if variant == "ours_last" else "all_tokens",
            sites=("mlp",),
            batch_size=args.batch_size,
            max_length=args.max_length,
        )

        def one_pass() -> None:
            holder["stats"] = collect_stats(model, tok, {"bench": texts}, cfg, layout=layout, progress=False)

        def check() -> float | None:
            st = holder["stats"]
            return float(sum(st.get("bench", i, "mlp").mean.abs().sum() for i in range(n_layers)))

        info["config"] = {"position": cfg.position, "batch_size": cfg.batch_size, "sites": list(cfg.sites)}
        return one_pass, check, info

    def reduce_last(acts: list[Any], mask: Any, cells: list[Any]) -> None:
        rows, last = _last_rows(mask)
        for i, a in enumerate(acts):
            cells[i].add(a[rows, last])

    def check_cells() -> float:
        return float(sum(c.mean.abs().sum() for c in holder["cells"]))

    if variant == "tl":
        from transformer_lens.model_bridge import TransformerBridge

        t = time.perf_counter()
        bridge = TransformerBridge.boot_transformers(
            _tl_name(model, args.model), hf_model=model, tokenizer=tok
        )
        info["setup_seconds"] = time.perf_counter() - t
        info["attn_implementation_after_boot"] = getattr(model.config, "_attn_implementation", None)
        names = [f"blocks.{i}.mlp.hook_post" for i in range(n_layers)]
        missing = [n for n in names if n not in bridge.hook_dict]
        if missing:
            raise RuntimeError(f"TransformerLens bridge has no hook points {missing[:3]}")
        wanted = set(names)

        @torch.no_grad()
        def one_pass() -> None:
            cells = [RunningMoments(width) for _ in range(n_layers)]
            for ids, mask in batches:
                _, cache = bridge.run_with_cache(
                    ids,
                    attention_mask=mask,
                    names_filter=lambda n: n in wanted,
                    return_type=None,
                    logits_to_keep=1,
                )
                reduce_last([cache[n] for n in names], mask, cells)
                del cache
            holder["cells"] = cells

        return one_pass, check_cells, info

    if variant == "nnsight":
        import nnsight
        from nnsight import LanguageModel

        t = time.perf_counter()
        lm = LanguageModel(model, tokenizer=tok)
        info["setup_seconds"] = time.perf_counter() - t
        env = lm
        for part in layout.adapter.layers.split("."):
            env = getattr(env, part)
        site_path = layout.site("mlp").module.split(".")

        def site_env(i: int) -> Any:
            e = env[i]
            for part in site_path:
                e = getattr(e, part)
            return e

        @torch.no_grad()
        def one_pass() -> None:
            cells = [RunningMoments(width) for _ in range(n_layers)]
            for ids, mask in batches:
                saved: list[Any] = []
                with lm.trace({"input_ids": ids, "attention_mask": mask}, logits_to_keep=1):
                    for i in range(n_layers):
                        saved.append(nnsight.save(site_env(i).input))
                reduce_last(saved, mask, cells)
                del saved
            holder["cells"] = cells

        return one_pass, check_cells, info
    raise ValueError(f"unknown variant {variant!r}")


def worker(args: argparse.Namespace) -> int:
    import torch

    from safeneurons.stats.collect import decoder_of
    from safeneurons.stats.encode import encode, length_sorted_batches, pad_batch, pad_token_id

    common.set_threads(args.threads)
    load_avg_start = common.load_average()
    t = time.perf_counter()
    model, tok, name = common.load(args.model)
    load_s = time.perf_counter() - t
    texts, source = common.padded_prompts(tok, args.n_prompts, args.tokens, seed=args.seed)
    encoded = encode(tok, texts, None, True, None, args.max_length)
    batches = [
        pad_batch([encoded[i] for i in idx], pad_token_id(tok), "right")
        for idx in length_sorted_batches(encoded, args.batch_size)
    ]
    lengths = [len(e.ids) for e in encoded]
    rss_loaded = common.rss_mb()
    reset_ok = common.reset_peak_rss()
    one_pass, check, info = _setup(args.variant, model, tok, texts, batches, args)
    rss_ready = common.rss_mb()

    paired = args.variant != "bare" and args.paired
    decoder = decoder_of(model)
    if paired:
        info["paired_bare_attn"] = getattr(model.config, "_attn_implementation", None)

    @torch.no_grad()
    def bare_pass() -> None:
        for ids, mask in batches:
            decoder(input_ids=ids, attention_mask=mask, use_cache=False)

    # warm-up: one batch through the variant's code path (and the bare path when paired)
    first = batches[:1]
    saved_batches = list(batches)
    batches[:] = first
    if args.variant.startswith("ours"):
        warm_texts = [texts[i] for i in length_sorted_batches(encoded, args.batch_size)[0]]
        texts_backup = list(texts)
        texts[:] = warm_texts
        one_pass()
        texts[:] = texts_backup
    else:
        one_pass()
    if paired:
        bare_pass()
    batches[:] = saved_batches
    # the steady-state peak: the warm-up already paged the weights in and filled the allocator's pools, so
    # what the timed passes add on top is what the prompts themselves cost (the scaling check uses it)
    peak_warmup = common.peak_rss_mb()
    steady_ok = common.reset_peak_rss()
    rss_warm = common.rss_mb()

    seconds, bare_seconds = [], []
    for r in range(args.repeats):
        if paired and r % 2 == 0:
            bare_seconds.append(common.timed(bare_pass)[0])
        seconds.append(common.timed(one_pass)[0])
        if paired and r % 2 == 1:
            bare_seconds.append(common.timed(bare_pass)[0])
    steady_peak = common.peak_rss_mb()
    peak = max(peak_warmup, steady_peak) if steady_ok else steady_peak
    res: dict[str, Any] = {
        "variant": args.variant,
        "cpu_model": common.cpu_model(),
        "label": LABELS[args.variant],
        "model": name,
        "n_prompts": len(texts),
        "prompt_source": source,
        "tokens_per_prompt": {"mean": sum(lengths) / len(lengths), "min": min(lengths), "max": max(lengths)},
        "total_tokens": sum(lengths),
        "batch_size": args.batch_size,
        "n_batches": len(batches),
        "torch_threads": torch.get_num_threads(),
        "load_seconds": load_s,
        "seconds": seconds,
        "median_seconds": common.median(seconds),
        "rss_loaded_mb": rss_loaded,
        "rss_ready_mb": rss_ready,
        "peak_rss_mb": peak,
        "peak_increase_mb": peak - rss_loaded if rss_loaded else None,
        "rss_after_warmup_mb": rss_warm,
        "steady_peak_rss_mb": steady_peak if steady_ok else None,
        "peak_method": "VmHWM reset after model load"
        if reset_ok
        else "VmHWM since process start (reset refused)",
        "check_sum_abs_mean_last": check(),
        "load_average_start": load_avg_start,
        "load_average_end": common.load_average(),
        **info,
    }
    if paired:
        res["paired_bare_seconds"] = bare_seconds
        res["paired_ratios"] = [s / b for s, b in zip(seconds, bare_seconds)]
        res["paired_ratio"] = common.median(res["paired_ratios"])
        res["paired_spread"] = spread(res["paired_ratios"])
    common.write_worker_result(args.worker_out, res)
    return 0


# ------------------------------------------------------------------------------------------------
# driver


def available(variant: str) -> str | None:
    """None if the variant can run here, else the reason it is skipped."""
    mod = IMPORT_OF.get(variant)
    if mod is None:
        return None
    import importlib.util

    if importlib.util.find_spec(mod) is None:
        return f"{mod} is not installed (pip install -r requirements/bench.txt)"
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    script = Path(__file__).resolve()
    base = [
        "--model",
        args.model,
        "--tokens",
        str(args.tokens),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--max-length",
        str(args.max_length),
        "--seed",
        str(args.seed),
    ]
    if not args.paired:
        base.append("--no-paired")
    variants = [v for v in args.variants.split(",") if v]
    runs: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for v in variants:
        why = available(v)
        if why:
            skipped[v] = why
            print(f"[stats] skip {v}: {why}", file=sys.stderr)
            continue
        print(
            f"[stats] {v}: {args.n_prompts} prompts x ~{args.tokens} tokens, {args.repeats} repeats ...",
            file=sys.stderr,
            flush=True,
        )
        r = common.run_worker(
            script,
            [*base, "--variant", v, "--n-prompts", str(args.n_prompts), "--repeats", str(args.repeats)],
            timeout=args.worker_timeout,
        )
        if "error" in r:
            skipped[v] = f"failed: {r['error']}"
            print(f"[stats] {v} failed: {r['error']}\n{r.get('log_tail', '')}", file=sys.stderr)
        runs[v] = r
        if "median_seconds" in r:
            print(
                f"[stats] {v}: {r['median_seconds']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MiB",
                file=sys.stderr,
            )

    scaling: dict[str, dict[str, Any]] = {}
    counts = [int(x) for x in args.scale.split(",") if x]
    for v in [x for x in args.scale_variants.split(",") if x] if counts else []:
        if available(v):
            continue
        scaling[v] = {}
        for n in counts:
            print(f"[stats] scaling {v}: {n} prompts ...", file=sys.stderr, flush=True)
            r = common.run_worker(
                script,
                [*base, "--variant", v, "--n-prompts", str(n), "--repeats", "1", "--no-paired"],
                timeout=args.worker_timeout,
            )
            scaling[v][str(n)] = r
    return summarise(runs, skipped, scaling, args)


def summarise(
    runs: dict[str, Any], skipped: dict[str, str], scaling: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    ok = {v: r for v, r in runs.items() if "median_seconds" in r}
    bare = ok.get("bare")
    summary: dict[str, Any] = {}
    for v, r in ok.items():
        s: dict[str, Any] = {
            "label": r["label"],
            "median_seconds": r["median_seconds"],
            "peak_rss_mb": r["peak_rss_mb"],
            "peak_increase_mb": r["peak_increase_mb"],
        }
        if bare:
            s["time_ratio_vs_bare"] = r["median_seconds"] / bare["median_seconds"]
            s["peak_ratio_vs_bare"] = r["peak_rss_mb"] / bare["peak_rss_mb"]
            if bare["peak_increase_mb"] and r["peak_increase_mb"] is not None:
                s["peak_increase_ratio_vs_bare"] = r["peak_increase_mb"] / bare["peak_increase_mb"]
        if "paired_ratio" in r:
            s["paired_time_ratio_vs_bare"] = r["paired_ratio"]
            s["paired_spread"] = r.get("paired_spread") or spread(r["paired_ratios"])
        summary[v] = s
    # the last-token statistics must agree between the tools that compute them
    ref = ok.get("ours_last", {}).get("check_sum_abs_mean_last")
    agreement = {}
    for v in ("tl", "nnsight"):
        c = ok.get(v, {}).get("check_sum_abs_mean_last")
        if ref and c is not None:
            agreement[v] = abs(c - ref) / abs(ref)
    scale_summary = {}
    for v, by_n in scaling.items():
        good = {int(n): r for n, r in by_n.items() if "peak_rss_mb" in r}
        if len(good) >= 2:
            lo, hi = min(good), max(good)
            # steady-state peaks (after the warm-up) when every run has them: one pass's page-in and
            # allocator noise is ~100 MiB on a 2 GiB process, more than the tolerance being checked
            key = "steady_peak_rss_mb" if all(r.get("steady_peak_rss_mb") for r in good.values()) else "peak_rss_mb"
            grow = good[hi][key] - good[lo][key]
            scale_summary[v] = {
                "n_prompts": sorted(good),
                "measure": key,
                "steady_peak_rss_mb": {str(n): good[n].get("steady_peak_rss_mb") for n in sorted(good)},
                "peak_rss_mb": {str(n): good[n]["peak_rss_mb"] for n in sorted(good)},
                "peak_increase_mb": {str(n): good[n]["peak_increase_mb"] for n in sorted(good)},
                "seconds": {str(n): good[n]["median_seconds"] for n in sorted(good)},
                "peak_growth_mb": grow,
                "peak_growth_fraction": grow / good[lo]["peak_rss_mb"],
            }
    targets = {}
    tol = args.memory_tolerance_mb
    for v in ("ours_last", "ours_all"):
        s = summary.get(v)
        if not s or "time_ratio_vs_bare" not in s:
            continue
        paired = s.get("paired_time_ratio_vs_bare")
        t: dict[str, Any] = {
            "overhead": {
                "target": TIME_TARGETS[v],
                "ratio_of_medians": s["time_ratio_vs_bare"],
                "paired_ratio": paired,
                "paired_spread": s.get("paired_spread"),
                "met": (paired if paired is not None else s["time_ratio_vs_bare"]) <= TIME_TARGETS[v],
            },
            "peak_memory": {
                "target": PEAK_TARGET,
                "peak_ratio_vs_bare": s.get("peak_ratio_vs_bare"),
                "met": s.get("peak_ratio_vs_bare") is not None and s["peak_ratio_vs_bare"] <= PEAK_TARGET,
            },
        }
        for other in ("tl", "nnsight"):
            if other in summary:
                mine, theirs = paired, summary[other].get("paired_time_ratio_vs_bare")
                by_pairs = mine is not None and theirs is not None
                t[f"no_slower_than_{other}"] = {
                    "paired_ratio": mine,
                    f"{other}_paired_ratio": theirs,
                    "seconds": s["median_seconds"],
                    f"{other}_seconds": summary[other]["median_seconds"],
                    "decided_by": "paired ratios" if by_pairs else "medians of separate processes",
                    "met": mine <= theirs if by_pairs else s["median_seconds"] <= summary[other]["median_seconds"],
                }
        if v in scale_summary:
            g = scale_summary[v]["peak_growth_mb"]
            t["memory_independent_of_prompts"] = {"peak_growth_mb": g, "tolerance_mb": tol, "met": g <= tol}
        targets[v] = t
    cpus = sorted({r["cpu_model"] for r in ok.values() if r.get("cpu_model")})
    loads = {v: [r.get("load_average_start"), r.get("load_average_end")] for v, r in ok.items()}
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("worker_out",)},
        "cpu_models": cpus,
        "load_average_per_variant": loads,
        "summary": summary,
        "skipped": skipped,
        "agreement_rel_diff_vs_ours_last": agreement,
        "memory_scaling": scale_summary,
        "targets": targets,
        "runs": runs,
        "scaling_runs": scaling,
    }


def spread(xs: list[float]) -> dict[str, float]:
    """min, quartiles and max of the per-repeat ratios."""
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"min": min(xs), "q1": q[0], "median": q[1], "q3": q[2], "max": max(xs), "n": len(xs)}


def _paired_cell(s: dict[str, Any]) -> str:
    p, sp = s.get("paired_time_ratio_vs_bare"), s.get("paired_spread")
    if p is None:
        return "-"
    return f"{p:.3f} ({sp['min']:.3f}-{sp['max']:.3f})" if sp else f"{p:.3f}"


def print_table(result: dict[str, Any]) -> str:
    rows = []
    for v, s in result["summary"].items():
        rows.append(
            [
                v,
                common.fmt_seconds(s["median_seconds"]),
                common.fmt_ratio(s.get("time_ratio_vs_bare")),
                _paired_cell(s),
                f"{s['peak_rss_mb']:.0f}",
                common.fmt_ratio(s.get("peak_ratio_vs_bare")),
                f"{s['peak_increase_mb']:.0f}",
            ]
        )
    out = [
        common.table(
            rows,
            [
                "variant",
                "seconds",
                "x bare",
                "x bare (paired, min-max)",
                "peak MiB",
                "peak x bare",
                "peak - loaded MiB",
            ],
        )
    ]
    for v, why in result["skipped"].items():
        out.append(f"skipped {v}: {why}")
    out.append(f"CPU: {', '.join(result.get('cpu_models') or ['?'])}; load average (1/5/15 min) at start/end "
               "of each variant: " + "; ".join(f"{v} {a} / {b}" for v, (a, b) in
                                                result.get("load_average_per_variant", {}).items()))
    for v, t in result.get("targets", {}).items():
        out.append(f"target {v}: " + ", ".join(f"{k} {'met' if d['met'] else 'NOT met'}"
                                               for k, d in t.items()))
    for v, s in result["memory_scaling"].items():
        ns = s["n_prompts"]
        measure = s.get("measure", "peak_rss_mb")
        peaks = " / ".join(f"{s[measure][str(n)]:.0f}" for n in ns)
        what = "steady-state peak" if measure == "steady_peak_rss_mb" else "peak"
        out.append(
            f"memory vs prompts, {v}: {what} {peaks} MiB at {' / '.join(map(str, ns))} prompts "
            f"(growth {s['peak_growth_mb']:+.0f} MiB)"
        )
    for v, d in result["agreement_rel_diff_vs_ours_last"].items():
        out.append(f"last-token means, {v} vs ours: relative difference {d:.2e}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model",
        default="qwen2.5-coder-0.5b-instruct",
        help="model spec (offline registry name, directory, hub id; 'tiny' for a smoke run)",
    )
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128, help="templated tokens per prompt (approximate)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--repeats", type=int, default=6,
        help="timed passes per variant after a one-batch warm-up (>= 5 for a reported number: the paired "
        "ratio is a median over repeats)"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--scale", default="16,64", help="prompt counts of the memory-scaling runs ('' to skip)")
    ap.add_argument("--scale-variants", default="ours_last,ours_all")
    ap.add_argument(
        "--memory-tolerance-mb",
        type=float,
        default=32.0,
        help="largest peak-RSS growth between the scaling counts that still counts as flat",
    )
    ap.add_argument(
        "--no-paired",
        dest="paired",
        action="store_false",
        help="do not time bare passes inside the ours_* workers",
    )
    ap.add_argument("--worker-timeout", type=float, default=1800)
    common.add_output_args(ap, "stats", workers=True)
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table, worker)


if __name__ == "__main__":
    raise SystemExit(main())
