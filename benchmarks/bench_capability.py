"""Few-shot multiple-choice scoring: our log-likelihood scorer with the shared-context cache against the
same scorer without it and against lm-evaluation-harness, on ARC-Challenge k-shot (the SafeNeuron paper's
ARC@25 setting), same model, same questions.

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
    import numpy as np
    import torch

    from safeneurons.data import read_jsonl_file
    from safeneurons.evaluate import capability as cap

    common.set_threads(args.threads)
    model, tok, name = common.load(args.model)
    rows = read_jsonl_file(cap.ARC_FILE)
    first = rows[: args.n]
    docs = cap.arc_docs(rows, k_shot=args.k_shot, seed=0, indices=list(range(args.n)))
    n_tokens = [len(tok(d.context)["input_ids"]) for d in docs]
    cap.score_multiple_choice(model, tok, docs[:1], batch_size=args.batch_size)  # warm-up

    runs: dict[str, Any] = {}
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

    skipped: dict[str, str] = {}
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
    diff = float(np.max(np.abs(np.concatenate([np.subtract(x, y) for x, y in zip(a.loglikelihoods, b.loglikelihoods)]))))
    summary = {
        "speedup_shared_vs_full": runs["ours_full"]["seconds"] / runs["ours_shared"]["seconds"],
        "max_abs_loglikelihood_diff_shared_vs_full": diff,
        "same_predictions_shared_vs_full": a.correct("chars") == b.correct("chars") and a.correct() == b.correct(),
    }
    if "lmeval" in runs:
        summary["speedup_shared_vs_lmeval"] = runs["lmeval"]["seconds"] / runs["ours_shared"]["seconds"]
        summary["lmeval_vs_ours_full_time"] = runs["lmeval"]["seconds"] / runs["ours_full"]["seconds"]
    return {
        "config": vars(args),
        "model": name,
        "questions": [r.get("id") for r in first],
        "context_tokens": {"mean": float(np.mean(n_tokens)), "max": int(max(n_tokens))},
        "torch_threads": torch.get_num_threads(),
        "peak_rss_mb": common.peak_rss_mb(),
        "runs": runs,
        "skipped": skipped,
        "summary": summary,
    }


def print_table(result: dict[str, Any]) -> str:
    rows = [
        [v, common.fmt_seconds(r["seconds"]), f"{r['seconds_per_question']:.2f}", f"{r.get('acc', float('nan')):.3f}",
         f"{r.get('acc_norm', float('nan')):.3f}"]
        for v, r in result["runs"].items()
    ]
    s = result["summary"]
    lines = [
        common.table(rows, ["variant", "seconds", "s/question", "acc", "acc_norm"]),
        f"shared-context speed-up vs full passes: {s['speedup_shared_vs_full']:.2f}x; "
        f"max |loglik diff| {s['max_abs_loglikelihood_diff_shared_vs_full']:.2e}; "
        f"same predictions: {s['same_predictions_shared_vs_full']}",
    ]
    if "speedup_shared_vs_lmeval" in s:
        lines.append(f"speed-up vs lm-eval: {s['speedup_shared_vs_lmeval']:.2f}x")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="model spec ('tiny' for a smoke run)")
    ap.add_argument("--n", type=int, default=16, help="ARC-Challenge questions (the first n validation rows)")
    ap.add_argument("--k-shot", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    common.add_output_args(ap, "capability")
    return ap


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(argv, build_parser(), run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
