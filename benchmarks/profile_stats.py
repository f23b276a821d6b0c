"""Where the statistics pass spends its time: torch.profiler op shares of a bare decoder forward and of
``collect_stats`` (last token, all tokens) on the same batches, and paired in-process ratios.

    PYTHONPATH=src nice -n 5 .venv/bin/python benchmarks/profile_stats.py             # 0.5B, 8 x 128 tokens
    PYTHONPATH=src .venv/bin/python benchmarks/profile_stats.py --layers 6 --rounds 9 # first 6 layers only
    PYTHONPATH=src .venv/bin/python benchmarks/profile_stats.py --model tiny --no-write

One process, model loaded once. Each variant runs once as a warm-up, then once under ``torch.profiler``
(CPU activities): the report lists each variant's top ops by self CPU time and the ops whose self time
exceeds the bare forward's, i.e. what the statistics add. Then ``--rounds`` rounds time every variant once,
in an order rotated every round, and the ratio to the same round's bare pass is reported as a median with its
min-max: on a shared machine the absolute times mean little, the paired ratios and the op shares less so.
``--layers N`` keeps the first N decoder layers (the overhead per layer is what is compared; it makes a
round N/L as long). For the end-to-end numbers in separate processes use ``bench_stats.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def _variants(model: Any, tok: Any, texts: list[str], batches: list[Any], batch_size: int) -> dict[str, Any]:
    import torch

    from safeneurons.models.layout import model_layout
    from safeneurons.stats.collect import StatsConfig, collect_stats, decoder_of

    decoder, layout = decoder_of(model), model_layout(model)

    @torch.no_grad()
    def bare() -> None:
        for ids, mask in batches:
            decoder(input_ids=ids, attention_mask=mask, use_cache=False)

    def ours(position: str) -> Any:
        cfg = StatsConfig(position=position, sites=("mlp",), batch_size=batch_size)
        return lambda: collect_stats(model, tok, {"g": texts}, cfg, layout=layout, progress=False)

    return {"bare": bare, "ours_last": ours("last"), "ours_all": ours("all_tokens")}


def _profile(fn: Any) -> tuple[dict[str, list[float]], float]:
    """``({op: [calls, self CPU µs]}, wall seconds)`` of one call under the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    return {e.key: [e.count, e.self_cpu_time_total] for e in prof.key_averages()}, wall


def run(args: argparse.Namespace) -> dict[str, Any]:
    from safeneurons.stats.encode import encode, length_sorted_batches, pad_batch, pad_token_id

    common.set_threads(args.threads)
    model, tok, name = common.load(args.model)
    if args.layers:
        layers = model.get_submodule(_layers_path(model))
        del layers[args.layers :]
        model.config.num_hidden_layers = len(layers)
    texts, source = common.padded_prompts(tok, args.n_prompts, args.tokens, seed=args.seed)
    enc = encode(tok, texts, None, True, None, 1024)
    batches = [pad_batch([enc[i] for i in idx], pad_token_id(tok), "right")
               for idx in length_sorted_batches(enc, args.batch_size)]
    fns = _variants(model, tok, texts, batches, args.batch_size)
    load_start = common.load_average()
    for fn in fns.values():  # warm-up
        fn()
    profiles: dict[str, Any] = {}
    if args.profile:
        for v, fn in fns.items():
            ops, wall = _profile(fn)
            profiles[v] = {"wall_seconds": wall, "ops": ops}
    seconds: dict[str, list[float]] = {v: [] for v in fns}
    names = list(fns)
    for r in range(args.rounds):
        for v in names[r % len(names):] + names[: r % len(names)]:
            seconds[v].append(common.timed(fns[v])[0])
    ratios = {v: [s / b for s, b in zip(seconds[v], seconds["bare"])] for v in names[1:]}
    return {
        "config": vars(args),
        "model": name,
        "layers": model.config.num_hidden_layers,
        "prompt_source": source,
        "lengths": [len(e.ids) for e in enc],
        "cpu_model": common.cpu_model(),
        "load_average_start": load_start,
        "load_average_end": common.load_average(),
        "profiles": profiles,
        "seconds": seconds,
        "paired_ratios": ratios,
        "paired": {v: {"median": common.median(x), "min": min(x), "max": max(x)} for v, x in ratios.items()}
        if args.rounds else {},
    }


def _layers_path(model: Any) -> str:
    from safeneurons.models.layout import model_layout

    return model_layout(model).adapter.layers


def print_table(result: dict[str, Any]) -> str:
    out = [(f"{result['model']}, {result['layers']} layers, {len(result['lengths'])} prompts, "
            f"{sum(result['lengths'])} tokens; CPU {result['cpu_model']}; load average "
            f"{result['load_average_start']} -> {result['load_average_end']}")]
    profs = result["profiles"]
    if "bare" in profs:
        bare = profs["bare"]["ops"]
        bare_total = sum(t for _, t in bare.values())
        for v, p in profs.items():
            total = sum(t for _, t in p["ops"].values())
            out.append(f"\n{v}: self CPU {total / 1e6:.2f} s ({total / bare_total:.3f} x bare), top ops:")
            top = sorted(p["ops"].items(), key=lambda kv: -kv[1][1])[:6]
            out += [f"  {k:42s} {c:6d} calls {t / 1e3:9.1f} ms {100 * t / total:5.1f} %"
                    for k, (c, t) in top]
            if v == "bare":
                continue
            extra = sorted(((k, t - bare.get(k, [0, 0])[1], c - bare.get(k, [0, 0])[0])
                            for k, (c, t) in p["ops"].items()), key=lambda x: -x[1])
            out.append("  above bare:")
            out += [f"  {k:42s} {dc:+6d} calls {dt / 1e3:+9.1f} ms {100 * dt / bare_total:+6.2f} % of bare"
                    for k, dt, dc in extra[:8] if dt > 0]
    for v, p in result["paired"].items():
        rounds = len(result["paired_ratios"][v])
        out.append(f"{v} / bare, paired over {rounds} rounds: median {p['median']:.3f} "
                   f"(min {p['min']:.3f}, max {p['max']:.3f})")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct",
                    help="model spec ('tiny' for a smoke run)")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128, help="templated tokens per prompt (approximate)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=0, help="keep the first N decoder layers (0: all)")
    ap.add_argument("--rounds", type=int, default=9, help="timed rounds of every variant after the profile")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiled passes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    common.add_output_args(ap, "profile_stats")
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
