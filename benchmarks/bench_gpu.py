"""The library's three heavy passes at 7B scale on one GPU, each against its baseline in the same process:
activation statistics vs a bare decoder forward, deactivation importance (exact batched ablations vs the
probe estimator vs one forward per neuron), and a SafeNeuron DPO step vs a plain TRL DPO step.

    python benchmarks/bench_gpu.py                                # qwen2.5-7b shape, bf16, cuda
    python benchmarks/bench_gpu.py --shape tiny --device cpu --dtype float32 --no-write   # smoke run

The model is a randomly initialised decoder with the published configuration of ``--shape`` (speed and
memory do not depend on the weights), built directly on the device; the tokenizer is the tiny BPE tokenizer
of the unit tests (ids fit any vocabulary; prompt lengths are set in tokens). Timings are wall-clock around
``torch.cuda.synchronize()``; memory is ``torch.cuda.max_memory_allocated`` over a pass minus what was
allocated before it (the model's weights), so it is what the pass itself adds.

* ``stats``: ``collect_stats`` on the MLP site, positions ``last`` and ``all_tokens``, against the decoder
  stack alone on the same padded batches (no LM head, ``use_cache=False``), alternating order over repeats;
  then ``last`` with ``n`` and ``4n`` prompts to show its memory does not grow with the prompt count.
* ``importance``: one layer (``--layer``), sites q,k,v,o: exact batched single-neuron ablations with the
  prefix cache, probe(k) for each ``--probes``, and ``naive`` (one forward per neuron) on a sample of
  neurons, extrapolated; Spearman and top-3 % overlap against exact. Then probe on every layer, with the
  exact time extrapolated from the measured layer.
* ``dpo``: ``train_safeneuron_dpo`` with the upper ``--train-layers`` layers trainable (a 7B model with
  AdamW states for every weight does not fit one 80 GB card beside its activations), ``plain`` (no frozen
  set), ``masked`` (2 % of the MLP neurons of every layer frozen and ablated while training) and
  ``masked_no_ablation``; the step time is the median interval between ``on_step_end`` events after a
  warm-up step, each variant run ``--rounds`` times in alternating order in this process.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# published configurations (config.json of each model); "tiny" is for smoke runs
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": dict(family="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, rope_theta=1e6,
                       max_position_embeddings=32768, tie_word_embeddings=False),
    "llama-3-8b": dict(family="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=5e5,
                       max_position_embeddings=8192, tie_word_embeddings=False),
    "tiny": dict(family="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, tie_word_embeddings=False),
}
SECTIONS = ("stats", "importance", "dpo")


def build_model(shape: str, device: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    spec = dict(SHAPES[shape])
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[spec.pop("family")]
    config = config_cls(**spec, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    return model.eval()


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measured(fn: Callable[[], Any], device: str) -> tuple[float, float | None]:
    """``(seconds, MiB the call allocated above what was allocated before it)``; memory on CUDA only."""
    import torch

    cuda = device.startswith("cuda")
    _sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t = time.perf_counter()
    fn()
    _sync(device)
    dt = time.perf_counter() - t
    return dt, ((torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None)


def bench_stats(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from safeneurons.models.layout import model_layout
    from safeneurons.stats.collect import StatsConfig, collect_stats, decoder_of
    from safeneurons.stats.encode import encode, length_sorted_batches, pad_batch, pad_token_id

    layout = model_layout(model)
    decoder = decoder_of(model)

    def prompts(n: int) -> list[str]:
        return common.padded_prompts(tok, n, args.tokens, seed=0)[0]

    def batches(texts: list[str]) -> list[tuple[Any, Any]]:
        enc = encode(tok, texts, None, True, None, args.tokens + 16)
        return [tuple(t.to(args.device) for t in pad_batch([enc[i] for i in idx], pad_token_id(tok), "right"))
                for idx in length_sorted_batches(enc, args.batch_size)]

    texts = prompts(args.n_prompts)
    padded = batches(texts)

    @torch.no_grad()
    def bare() -> None:
        for ids, mask in padded:
            decoder(input_ids=ids, attention_mask=mask, use_cache=False)

    def ours(position: str, these: list[str]) -> Callable[[], Any]:
        cfg = StatsConfig(position=position, sites=("mlp",), batch_size=args.batch_size, max_length=args.tokens + 16)
        return lambda: collect_stats(model, tok, {"bench": these}, cfg, layout=layout, progress=False)

    variants = {"bare": bare, "ours_last": ours("last", texts), "ours_all": ours("all_tokens", texts)}
    for fn in variants.values():  # warm-up: kernels, allocator pools
        measured(fn, args.device)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    memory: dict[str, list[float | None]] = {v: [] for v in variants}
    names = list(variants)
    for r in range(args.repeats):
        for v in names if r % 2 == 0 else names[::-1]:
            dt, mb = measured(variants[v], args.device)
            seconds[v].append(dt)
            memory[v].append(mb)
    out: dict[str, Any] = {"n_prompts": len(texts), "tokens_per_prompt": args.tokens, "batch_size": args.batch_size,
                           "total_tokens": int(sum(int(m.sum()) for _, m in padded)), "variants": {}}
    bare_s = common.median(seconds["bare"])
    for v in names:
        mem = [m for m in memory[v] if m is not None]
        out["variants"][v] = {"seconds": seconds[v], "median_seconds": common.median(seconds[v]),
                              "x_bare": common.median(seconds[v]) / bare_s,
                              "peak_added_mib": max(mem) if mem else None}
    small, large = args.n_prompts, 4 * args.n_prompts
    growth = {}
    for n in (small, large):
        fn = ours("last", prompts(n))
        measured(fn, args.device)
        growth[n] = measured(fn, args.device)[1]
    out["memory_scaling_ours_last"] = {"prompts": [small, large], "peak_added_mib": [growth[small], growth[large]],
                                       "growth_mib": (growth[large] - growth[small]) if growth[small] is not None
                                       else None}
    return out


def bench_importance(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from safeneurons.identify.importance import ImportanceConfig, compare_estimators, deactivation_importance
    from safeneurons.models.layout import model_layout

    n_layers = model.config.num_hidden_layers
    layer = args.layer + n_layers if args.layer < 0 else args.layer
    texts = common.padded_prompts(tok, args.importance_prompts, args.importance_tokens, seed=1)[0]
    sites = ("q", "k", "v", "o")
    base = dict(sites=sites, layers=(layer,), batch_size=args.importance_prompts, max_rows=args.max_rows,
                max_length=args.importance_tokens + 16)
    runs: dict[str, dict[str, Any]] = {}
    scores: dict[str, Any] = {}

    def run(label: str, cfg: Any, **kw: Any) -> Any:
        holder: dict[str, Any] = {}
        dt, mb = measured(lambda: holder.update(s=deactivation_importance(model, tok, texts, cfg, progress=False,
                                                                          **kw)), args.device)
        runs[label] = {"seconds": dt, "peak_added_mib": mb}
        return holder["s"]

    run("warm-up", ImportanceConfig(method="exact", **{**base, "sites": ("k",)}))  # kernels, allocator
    del runs["warm-up"]
    scores["exact"] = run("exact", ImportanceConfig(method="exact", **base))
    for k in args.probes:
        scores[f"probe(k={k})"] = run(f"probe(k={k})", ImportanceConfig(method="probe", n_probes=k, **base))
    narrowest = min(model_layout(model).site(s).width for s in sites)
    world = max(1, narrowest // args.naive_neurons)
    sample = run("naive", ImportanceConfig(method="naive", **base), neuron_shard=(0, world))
    done = sum(int((~np.isnan(v)).sum()) for v in sample.scores.values())
    total = sum(v.size for v in scores["exact"].scores.values())
    runs["naive"].update(neurons_measured=done, seconds_measured=runs["naive"]["seconds"],
                         seconds=runs["naive"]["seconds"] / done * total,
                         max_abs_diff_vs_exact=max(float(np.nanmax(np.abs(sample.scores[c] - scores["exact"].scores[c])))
                                                   for c in sample.cells()),
                         note=f"one forward per neuron, measured on neurons j % {world} == 0, extrapolated")
    for label, r in runs.items():
        r["speedup_vs_exact"] = runs["exact"]["seconds"] / r["seconds"]
        if label in scores and label != "exact":
            cmp = compare_estimators(scores["exact"], scores[label], p=0.03)
            r.update(spearman=cmp["pooled"]["spearman"], top3_overlap=cmp["pooled"]["top_overlap"])
    k0 = args.probes[0]
    whole = ImportanceConfig(method="probe", n_probes=k0, **{**base, "layers": None})
    dt, mb = measured(lambda: deactivation_importance(model, tok, texts, whole, progress=False), args.device)
    factor = sum(n_layers - x for x in range(n_layers)) / (n_layers - layer)  # exact re-runs layers l..L
    return {"layer": layer, "n_layers": n_layers, "n_prompts": len(texts), "tokens_per_prompt": args.importance_tokens,
            "sites": list(sites), "neurons": int(total), "max_rows": args.max_rows, "runs": runs,
            "whole_model": {"probe_k": k0, "probe_seconds": dt, "probe_peak_added_mib": mb,
                            "exact_seconds_extrapolated": runs["exact"]["seconds"] * factor,
                            "speedup_extrapolated": runs["exact"]["seconds"] * factor / dt,
                            "note": "exact on all layers = one-layer time x sum_l (L - l) / (L - layer)"}}


def bench_dpo(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    import itertools

    import torch

    import safeneurons.train.dpo as dpo_mod
    from bench_dpo_step import make_pairs, random_full_like
    from safeneurons.train import SafeNeuronDPOConfig, train_safeneuron_dpo

    marks: dict[str, Any] = {}
    cuda = args.device.startswith("cuda")

    class TimedLogCallback(dpo_mod.TrainLogCallback):
        def on_train_begin(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.update(step_end=[])
            if cuda:
                torch.cuda.reset_peak_memory_stats()
                marks["allocated_begin"] = torch.cuda.memory_allocated()

        def on_step_end(self, a: Any, state: Any, control: Any, **kw: Any) -> None:
            _sync(args.device)
            marks["step_end"].append(time.perf_counter())

    original = dpo_mod.TrainLogCallback
    dpo_mod.TrainLogCallback = TimedLogCallback  # benchmark-only: timestamps per step
    n_layers = model.config.num_hidden_layers
    pairs, source = make_pairs(args.n_pairs)
    frozen = random_full_like(model, 0.02)
    variants = ("plain", "masked", "masked_no_ablation")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    try:
        for r in range(args.rounds):
            for v in variants if r % 2 == 0 else variants[::-1]:
                cfg = SafeNeuronDPOConfig(
                    max_steps=1 + args.steps, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                    max_length=args.dpo_max_length, save_model=False, logging_steps=1, bf16=False,
                    train_layers=list(range(n_layers - args.train_layers, n_layers)),
                    ablate_frozen_during_training=v == "masked",
                    trainer_overrides={"use_cpu": not cuda})
                with tempfile.TemporaryDirectory(prefix="bench-gpu-dpo-") as out:
                    res = train_safeneuron_dpo(model, tok, pairs, None if v == "plain" else frozen, cfg,
                                               output_dir=out)
                steps = [b - a for a, b in itertools.pairwise(marks["step_end"])]
                peak = (torch.cuda.max_memory_allocated() - marks["allocated_begin"]) / 2**20 if cuda else None
                runs[v].append({"step_seconds": steps, "peak_added_mib": peak, "frozen_drift": res.frozen_drift,
                                "trainable_params": res.trainable_params, "held_params": res.held_params})
                print(f"[dpo] {v}: median step {common.median(steps):.3f} s", file=sys.stderr, flush=True)
    finally:
        dpo_mod.TrainLogCallback = original
    summary = {v: {"median_step_seconds": common.median([s for x in rs for s in x["step_seconds"]]),
                   "n_steps_timed": sum(len(x["step_seconds"]) for x in rs),
                   "peak_added_mib": max((x["peak_added_mib"] or 0) for x in rs) if cuda else None,
                   "frozen_drift": rs[0]["frozen_drift"], "trainable_params": rs[0]["trainable_params"]}
               for v, rs in runs.items()}
    for s in summary.values():
        s["x_plain"] = s["median_step_seconds"] / summary["plain"]["median_step_seconds"]
    return {"pairs": len(pairs), "pair_source": source, "frozen_neurons": len(frozen),
            "train_layers": args.train_layers, "max_length": args.dpo_max_length, "summary": summary, "runs": runs}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from safeneurons.models.tiny import tiny_tokenizer

    t = time.perf_counter()
    model = build_model(args.shape, args.device, args.dtype)
    build_s = time.perf_counter() - t
    tok = tiny_tokenizer()
    n_params = sum(p.numel() for p in model.parameters())
    result: dict[str, Any] = {"shape": args.shape, "config": SHAPES[args.shape], "params": n_params,
                              "dtype": args.dtype, "device": args.device, "build_seconds": build_s,
                              "weights_mib": (torch.cuda.memory_allocated() / 2**20
                                              if args.device.startswith("cuda") else None),
                              "sections": {}}
    benches = {"stats": bench_stats, "importance": bench_importance, "dpo": bench_dpo}
    for name in args.sections:
        t = time.perf_counter()
        print(f"[gpu] {name} ...", file=sys.stderr, flush=True)
        try:
            result["sections"][name] = benches[name](model, tok, args)
        except Exception as exc:  # one broken section must not cost the others' device time
            import traceback

            traceback.print_exc()
            result.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            continue
        result["sections"][name]["section_seconds"] = time.perf_counter() - t
        if not args.no_write:  # what is done survives a time-out
            common.write_result(f"{args.name}-partial", result, args.out_dir, args.tag)
    return result


def print_table(result: dict[str, Any]) -> str:
    lines = [f"{result['shape']} ({result['params'] / 1e9:.2f} B parameters, random weights), {result['dtype']}, "
             f"{result['device']}"]
    sec = result["sections"]
    mib = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
    if "stats" in sec:
        s = sec["stats"]
        lines += ["", f"activation statistics: {s['n_prompts']} prompts x {s['tokens_per_prompt']} tokens, "
                      f"batch {s['batch_size']}, MLP site"]
        lines.append(common.table([[v, common.fmt_seconds(r["median_seconds"]), common.fmt_ratio(r["x_bare"]),
                                    mib(r["peak_added_mib"])] for v, r in s["variants"].items()],
                                  ["variant", "s", "x bare", "MiB added"]))
        m = s["memory_scaling_ours_last"]
        lines.append(f"ours_last memory, {m['prompts'][0]} -> {m['prompts'][1]} prompts: "
                     f"{mib(m['peak_added_mib'][0])} -> {mib(m['peak_added_mib'][1])} MiB")
    if "importance" in sec:
        s = sec["importance"]
        lines += ["", f"deactivation importance: layer {s['layer']}/{s['n_layers']}, {s['neurons']} neurons "
                      f"(q,k,v,o), {s['n_prompts']} prompts x {s['tokens_per_prompt']} tokens"]
        lines.append(common.table(
            [[k, common.fmt_seconds(r["seconds"]), f"{r['speedup_vs_exact']:.1f}",
              "" if r.get("spearman") is None else f"{r['spearman']:.3f}",
              "" if r.get("top3_overlap") is None else f"{r['top3_overlap']:.3f}"] for k, r in s["runs"].items()],
            ["method", "s", "x faster", "Spearman", "top-3%"]))
        w = s["whole_model"]
        lines.append(f"all {s['n_layers']} layers: probe(k={w['probe_k']}) {w['probe_seconds']:.1f} s; exact "
                     f"extrapolated {w['exact_seconds_extrapolated']:.0f} s (x{w['speedup_extrapolated']:.0f})")
    if "dpo" in sec:
        s = sec["dpo"]
        lines += ["", f"DPO step: upper {s['train_layers']} layers trained, {s['frozen_neurons']} MLP neurons frozen, "
                      f"max_length {s['max_length']}, batch 2 x 2 accumulation"]
        lines.append(common.table([[v, common.fmt_seconds(r["median_step_seconds"]), str(r["n_steps_timed"]),
                                    common.fmt_ratio(r["x_plain"]), mib(r["peak_added_mib"]),
                                    "-" if r["frozen_drift"] is None else f"{r['frozen_drift']:g}"]
                                   for v, r in s["summary"].items()],
                                  ["variant", "s/step", "steps", "x plain", "MiB added", "frozen drift"]))
    lines += [f"{name}: FAILED ({err})" for name, err in result.get("errors", {}).items()]
    return "\n".join(lines)


def _sections(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    bad = [x for x in names if x not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--sections", default=",".join(SECTIONS), type=_sections, help=", ".join(SECTIONS))
    ap.add_argument("--n-prompts", type=int, default=64, help="stats: prompts (memory scaling: this and 4x)")
    ap.add_argument("--tokens", type=int, default=256, help="stats: templated tokens per prompt")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layer", type=int, default=-4, help="importance: the layer scored exactly")
    ap.add_argument("--importance-prompts", type=int, default=4)
    ap.add_argument("--importance-tokens", type=int, default=64)
    ap.add_argument("--max-rows", type=int, default=256, help="importance exact: rows per ablated forward")
    ap.add_argument("--probes", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    ap.add_argument("--naive-neurons", type=int, default=16, help="importance naive: neurons per site run")
    ap.add_argument("--train-layers", type=int, default=4, help="dpo: upper layers trained")
    ap.add_argument("--n-pairs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4, help="dpo: timed steps after one warm-up step")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dpo-max-length", type=int, default=256)
    common.add_output_args(ap, "gpu")
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
