"""Few-shot multiple-choice scoring: our log-likelihood scorer with the shared-context cache against the
same scorer without it and against lm-evaluation-harness, on ARC-Challenge k-shot (the SafeNeuron paper's
ARC@25 setting), same model, same questions; and GSM8K 8-shot generation with the shared few-shot prefix
run once against every prompt run in full.

    .venv/bin/python benchmarks/bench_capability.py                                   # 0.5B, 25-shot, 16 questions
    .venv/bin/python benchmarks/bench_capability.py --model smollm2-135m-instruct --n 8

Variants (one process, the model loaded once, a one-question warm-up first):

* ``ours_shared``: :func:`safeneurons.evaluate.capability.evaluate_arc` (default ``share_prefix=64``: the
  choices of a question run after one cached pass over their common context);
* ``ours_full``: the same with ``share_prefix=None``: every choice is a full pass (lm-eval's method);
* ``lmeval``: ``lm_eval.simple_evaluate`` through :func:`safeneurons.evaluate.lmeval_bridge.run_lm_eval`
  on the local ARC validation file (``write_local_arc_task``), ``num_fewshot=k``, ``limit=n``,
  ``bootstrap_iters=0``, the same batch size, after a one-question warm-up call (its time includes lm-eval's
  task building, as a user pays it).

* ``gsm8k_full`` / ``gsm8k_shared`` / ``gsm8k_shared_bs<B>``: :func:`safeneurons.evaluate.capability.evaluate_gsm8k`
  on the same ``--gsm8k-n`` seeded questions, every prompt in full at ``--batch-size`` (the baseline), with
  ``share_prefix=64`` (the 8-shot prefix runs once, every batch decodes from copies of its key/value cache),
  and the shared prefix at the wider ``--gsm8k-wide`` batch sizes (decoding on a CPU reads every weight once
  per step whatever the batch, so wider batches should cost little more per step); the benchmark reports
  whether each variant's greedy texts are identical to the baseline's.

Questions: the first ``n`` rows of the validation file for every variant (lm-eval's ``limit``). Few-shot
examples: ours draws them (seeded) per question from the other validation rows, lm-eval with its own
sampler, so their accuracies may differ by sampling; ``ours_shared`` and ``ours_full`` see identical
inputs, and the benchmark reports the largest difference between their log-likelihoods and whether their
predictions agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    common.set_threads(args.threads)
    model, tok, name = common.load(args.model)
    result: dict[str, Any] = {"config": vars(args), "model": name, "runs": {}, "skipped": {}, "summary": {}}
    if args.n:
        run_arc(args, model, tok, result)
    if args.gsm8k_n:
        run_gsm8k(args, model, tok, result)
    result.update(torch_threads=torch.get_num_threads(), peak_rss_mb=common.peak_rss_mb())
    return result


def run_arc(args: argparse.Namespace, model: Any, tok: Any, result: dict[str, Any]) -> None:
    import numpy as np

    from safeneurons.data import read_jsonl_file
    from safeneurons.evaluate import capability as cap

    runs, skipped, summary = result["runs"], result["skipped"], result["summary"]
    rows = read_jsonl_file(cap.ARC_FILE)
    docs = cap.arc_docs(rows, k_shot=args.k_shot, seed=0, indices=list(range(args.n)))
    n_tokens = [len(tok(d.context)["input_ids"]) for d in docs]
    result["questions"] = [r.get("id") for r in rows[: args.n]]
    result["context_tokens"] = {"mean": float(np.mean(n_tokens)), "max": int(max(n_tokens))}
    cap.score_multiple_choice(model, tok, docs[:1], batch_size=args.batch_size)  # warm-up

    scores: dict[str, Any] = {}
    for variant, share in (("ours_shared", 64), ("ours_full", None)):
        print(f"[capability] {variant}: {args.n} questions, {args.k_shot}-shot ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        reqs = [(d.context, d.target_delimiter + c) for d in docs for c in d.choices]
        flat = cap.loglikelihoods(model, tok, reqs, batch_size=args.batch_size, share_prefix=share)
        secs = time.perf_counter() - t
        lls, k = [], 0
        for d in docs:
            lls.append([flat[k + j][0] for j in range(len(d.choices))])
            k += len(d.choices)
        s = cap.MCScores(lls, docs)
        scores[variant] = s
        runs[variant] = {"seconds": secs, "seconds_per_question": secs / args.n, **s.metrics()}
        print(f"[capability] {variant}: {secs:.1f} s, acc_norm {runs[variant]['acc_norm']:.3f}", file=sys.stderr)

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        skipped["lmeval"] = "lm_eval is not installed"
    if "lmeval" not in skipped:
        from safeneurons.evaluate.lmeval_bridge import run_lm_eval, summarize, write_local_arc_task

        with tempfile.TemporaryDirectory() as tmp:
            tasks = write_local_arc_task(Path(tmp) / "tasks", cache_dir=Path(tmp) / "hf")
            kwargs = dict(num_fewshot=args.k_shot, include_path=tasks, batch_size=args.batch_size, bootstrap_iters=0)
            run_lm_eval(model, tok, ["arc_challenge_local"], limit=1, **kwargs)  # warm-up: dataset cache, task set-up
            print(f"[capability] lmeval: {args.n} questions, {args.k_shot}-shot ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            res = run_lm_eval(model, tok, ["arc_challenge_local"], limit=args.n, **kwargs)
            secs = time.perf_counter() - t
        m = summarize(res).get("arc_challenge_local", {})
        runs["lmeval"] = {"seconds": secs, "seconds_per_question": secs / args.n, **m}
        print(f"[capability] lmeval: {secs:.1f} s, acc_norm {m.get('acc_norm', float('nan')):.3f}", file=sys.stderr)

    a, b = scores["ours_shared"], scores["ours_full"]
    summary["speedup_shared_vs_full"] = runs["ours_full"]["seconds"] / runs["ours_shared"]["seconds"]
    summary["max_abs_loglikelihood_diff_shared_vs_full"] = float(np.max(np.abs(np.concatenate(
        [np.subtract(x, y) for x, y in zip(a.loglikelihoods, b.loglikelihoods)]))))
    summary["same_predictions_shared_vs_full"] = a.correct("chars") == b.correct("chars") and a.correct() == b.correct()
    if "lmeval" in runs:
        summary["speedup_shared_vs_lmeval"] = runs["lmeval"]["seconds"] / runs["ours_shared"]["seconds"]
        summary["lmeval_vs_ours_full_time"] = runs["lmeval"]["seconds"] / runs["ours_full"]["seconds"]


def run_gsm8k(args: argparse.Namespace, model: Any, tok: Any, result: dict[str, Any]) -> None:
    """The baseline ``gsm8k_full`` (every prompt in full, ``--batch-size``), then the shared prefix at
    ``--batch-size`` and at each ``--gsm8k-wide`` batch size; greedy, so every variant should give the same text."""
    from safeneurons.evaluate import capability as cap

    runs, summary = result["runs"], result["summary"]
    cap.evaluate_gsm8k(model, tok, n=1, seed=1, batch_size=args.batch_size, progress=False)  # warm-up
    variants = [("gsm8k_full", None, args.batch_size), ("gsm8k_shared", 64, args.batch_size)]
    variants += [(f"gsm8k_shared_bs{b}", 64, b) for b in args.gsm8k_wide]
    outputs: dict[str, list[str]] = {}
    for variant, share, batch in variants:
        print(f"[capability] {variant}: {args.gsm8k_n} questions, 8-shot, batch {batch} ...", file=sys.stderr,
              flush=True)
        r = cap.evaluate_gsm8k(model, tok, n=args.gsm8k_n, batch_size=batch, share_prefix=share, progress=False)
        outputs[variant] = r.meta["outputs"]
        runs[variant] = {"seconds": r.seconds, "seconds_per_question": r.seconds / r.n, "acc": r.acc,
                         "batch_size": batch, "share_prefix": share}
        print(f"[capability] {variant}: {r.seconds:.1f} s, acc {r.acc:.3f}", file=sys.stderr)
    base = runs["gsm8k_full"]["seconds"]
    for variant, _, _ in variants[1:]:
        summary[f"speedup_{variant}_vs_full"] = base / runs[variant]["seconds"]
        summary[f"same_outputs_{variant}_vs_full"] = outputs[variant] == outputs["gsm8k_full"]


def print_table(result: dict[str, Any]) -> str:
    rows = [
        [v, common.fmt_seconds(r["seconds"]), f"{r['seconds_per_question']:.2f}", f"{r.get('acc', float('nan')):.3f}",
         f"{r.get('acc_norm', float('nan')):.3f}"]
        for v, r in result["runs"].items()
    ]
    s = result["summary"]
    lines = [common.table(rows, ["variant", "seconds", "s/question", "acc", "acc_norm"])]
    if "speedup_shared_vs_full" in s:
        lines.append(f"shared-context speed-up vs full passes: {s['speedup_shared_vs_full']:.2f}x; "
                     f"max |loglik diff| {s['max_abs_loglikelihood_diff_shared_vs_full']:.2e}; "
                     f"same predictions: {s['same_predictions_shared_vs_full']}")
    for key in s:
        if key.startswith("speedup_gsm8k"):
            variant = key[len("speedup_"):-len("_vs_full")]
            lines.append(f"{variant} speed-up vs gsm8k_full: {s[key]:.2f}x; "
                         f"same outputs: {s[f'same_outputs_{variant}_vs_full']}")
    if "speedup_shared_vs_lmeval" in s:
        lines.append(f"speed-up vs lm-eval: {s['speedup_shared_vs_lmeval']:.2f}x")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model spec ('tiny' for a smoke run)")
    ap.add_argument("--n", type=int, default=16, help="ARC-Challenge questions (the first n validation rows; 0: skip)")
    ap.add_argument("--k-shot", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--gsm8k-n", type=int, default=16, help="GSM8K questions (seeded sample; 0: skip)")
    ap.add_argument("--gsm8k-wide", type=lambda t: [int(x) for x in t.split(",") if x], default=[16],
                    help="more batch sizes for the shared-prefix GSM8K variant, comma-separated ('' for none)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    common.add_output_args(ap, "capability")
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
