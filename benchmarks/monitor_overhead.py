"""Cost of the safety-neuron monitor on the prefill: a bare prefill against the same prefill with the monitor's
hooks attached and the batch scored, in one process, paired and repeated.

    .venv/bin/python benchmarks/monitor_overhead.py --model qwen2.5-coder-0.5b-instruct
    .venv/bin/python benchmarks/monitor_overhead.py --model tiny --no-write          # smoke run

The prefill is what ``generate`` runs first (and what :func:`safeneurons.evaluate.monitor.guarded_generate`
reads): the chat-templated prompts, left-padded into one batch, through the whole model with ``use_cache=True``
and ``logits_to_keep=1``, under ``torch.inference_mode``. ``monitor`` adds what guarded generation adds to that
pass: the :class:`~safeneurons.evaluate.monitor.PrefillCapture` hooks (attached once per timed sample, as
guarded generation attaches them once per call), a ``reset`` before the pass, and after it the captured
activations copied to the host and turned into scores (``Monitor.probabilities``). The monitor reads a
random neuron set (``--n-neurons`` spread over every layer's MLP, default 1 % of them; ``--monitor DIR`` reads
a fitted monitor instead) with random weights: the cost does not depend on the weights.

Timing: each sample runs ``--inner`` prefills back to back, each timed on its own (the monitor's hooks are
attached before the first and removed after the last, which counts); each of ``--repeats`` pairs times both
variants, the order alternating between pairs, after a warm-up of both. A pair's ratio is the median prefill
time with the monitor over the median without; the headline is the median of the pairs' ratios, the spread
their interquartile range and extremes; the ratios of each pair's fastest prefills and of its totals are
reported too (on a shared machine the fastest are the least disturbed). Target: <= 1.02.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def _monitor(model: Any, args: argparse.Namespace) -> Any:
    import numpy as np

    from safeneurons.evaluate.monitor import Monitor
    from safeneurons.models import model_layout
    from safeneurons.neurons import NeuronSet

    if args.monitor:
        return Monitor.load(args.monitor)
    shape = model_layout(model).shape()
    rng = np.random.default_rng(args.seed)
    width = shape.site_sizes["mlp"]
    total = shape.n_layers * width
    k = args.n_neurons or max(shape.n_layers, round(0.01 * total))
    flat = np.sort(rng.choice(total, size=min(k, total), replace=False))
    ns = NeuronSet.from_triples(shape, [(int(i // width), "mlp", int(i % width)) for i in flat], name="random")
    return Monitor(ns, mean=np.zeros(len(ns)), scale=np.ones(len(ns)), weight=rng.normal(size=len(ns)), bias=0.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from safeneurons.evaluate.monitor import PrefillCapture
    from safeneurons.stats.encode import Encoded, pad_batch, pad_token_id, render_prompt

    common.set_threads(args.threads)
    model, tok, name = common.load(args.model, dtype=args.dtype)
    if args.device:
        model.to(args.device)
    device = next(model.parameters()).device
    prompts, source = common.real_prompts(args.n_prompts, seed=args.seed)
    texts = [render_prompt(tok, p) for p in prompts]
    encoded = [Encoded(ids, len(ids)) for ids in (tok(t, add_special_tokens=False)["input_ids"] for t in texts)]
    ids, mask = pad_batch(encoded, pad_token_id(tok), side="left")
    ids, mask = ids.to(device), mask.to(device)
    monitor = _monitor(model, args)
    capture = PrefillCapture(model, monitor.neurons)

    def prefill() -> None:
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

    def bare() -> list[float]:
        times = []
        with torch.inference_mode():
            for _ in range(args.inner):
                t = time.perf_counter()
                prefill()
                _sync(device)
                times.append(time.perf_counter() - t)
        return times

    def monitored() -> list[float]:
        times = []
        t = time.perf_counter()
        with torch.inference_mode(), capture.attached():
            for _ in range(args.inner):
                capture.reset()
                prefill()
                monitor.probabilities(capture.features())  # copies to the host: waits for the device
                times.append(time.perf_counter() - t)
                t = time.perf_counter()
        times[-1] += time.perf_counter() - t  # detaching the hooks counts too
        return times

    for _ in range(args.warmup):
        bare()
        monitored()
    pairs = []
    for r in range(args.repeats):
        print(f"[monitor] pair {r + 1}/{args.repeats}", file=sys.stderr, flush=True)
        if r % 2 == 0:
            b, m = bare(), monitored()
        else:
            m, b = monitored(), bare()
        pairs.append({"bare": b, "monitor": m, "monitor_first": r % 2 == 1,
                      "ratio": statistics.median(m) / statistics.median(b), "ratio_of_min": min(m) / min(b),
                      "ratio_of_sum": sum(m) / sum(b)})
    ratios = [p["ratio"] for p in pairs]
    lo, hi = _quartiles(ratios)
    # the same activations as the monitor's own scoring pass (right padding, decoder only): a sanity check
    with torch.inference_mode(), capture.attached():
        capture.reset()
        model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        hooked = monitor.probabilities(capture.features())
    scored = monitor.score(model, tok, prompts, batch_size=len(prompts))
    return {
        "config": vars(args),
        "model": name,
        "device": str(device),
        "prompt_source": source,
        "n_prompts": len(prompts),
        "prompt_tokens": int(mask.sum()),
        "padded_width": int(ids.shape[1]),
        "n_neurons": len(monitor.neurons),
        "layers_read": len(monitor.neurons.layers()),
        "torch_threads": torch.get_num_threads(),
        "pairs": pairs,
        "max_abs_score_diff_vs_monitor_score": float(abs(hooked - scored).max()),
        "summary": {
            "bare_median_seconds": statistics.median(t for p in pairs for t in p["bare"]),
            "monitor_median_seconds": statistics.median(t for p in pairs for t in p["monitor"]),
            "ratio_median": statistics.median(ratios),
            "ratio_of_min_median": statistics.median(p["ratio_of_min"] for p in pairs),
            "ratio_of_sum_median": statistics.median(p["ratio_of_sum"] for p in pairs),
            "ratio_iqr": [lo, hi],
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "target": 1.02,
        },
    }


def print_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = [["bare prefill", common.fmt_seconds(s["bare_median_seconds"]), "1.000"],
            ["prefill + monitor", common.fmt_seconds(s["monitor_median_seconds"]), f"{s['ratio_median']:.3f}"]]
    head = (f"{result['model']} on {result['device']}: {result['n_prompts']} prompts, {result['prompt_tokens']} "
            f"tokens (padded width {result['padded_width']}), monitor of {result['n_neurons']} neurons in "
            f"{result['layers_read']} layers, {len(result['pairs'])} pairs x {result['config']['inner']} prefills")
    ratio = (f"monitor / bare (median of paired ratios): {s['ratio_median']:.3f}x, IQR {s['ratio_iqr'][0]:.3f}-"
             f"{s['ratio_iqr'][1]:.3f}, range {s['ratio_min']:.3f}-{s['ratio_max']:.3f} (target <= {s['target']}); "
             f"per pair from the fastest prefills {s['ratio_of_min_median']:.3f}x, from the totals "
             f"{s['ratio_of_sum_median']:.3f}x")
    check = (f"scores from the hooked prefill vs Monitor.score: max |diff| "
             f"{result['max_abs_score_diff_vs_monitor_score']:.2e}")
    return "\n".join([head, common.table(rows, ["variant", "median s / prefill", "ratio"]), ratio, check])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model spec ('tiny' for a smoke run)")
    ap.add_argument("--monitor", default=None, help="a fitted monitor folder (default: random set and weights)")
    ap.add_argument("--n-neurons", type=int, default=0, help="random MLP neurons read (0: 1%% of all)")
    ap.add_argument("--n-prompts", type=int, default=8, help="prompts in the prefill batch")
    ap.add_argument("--repeats", type=int, default=30, help="timed pairs")
    ap.add_argument("--inner", type=int, default=5, help="prefills per timed sample")
    ap.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default=None, help="move the model there (default: where it loads)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--seed", type=int, default=0)
    common.add_output_args(ap, "monitor_overhead")
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
