"""Run every benchmark, one after another, and print the ratios they measured in this run.

    .venv/bin/python benchmarks/run_all.py            # full: qwen2.5-coder-0.5b-instruct where it matters
    .venv/bin/python benchmarks/run_all.py --quick    # smollm2-135m-instruct, small N (minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --only stats,dpo

Each benchmark runs as its own process (never two at once) and writes
``benchmarks/results/<name>-<machine>.json`` (``<name>-quick`` with ``--quick``) with the machine facts
(``safeneurons.io.environment_info()`` plus CPU model, memory, torch threads, load average), the exact
command line and the raw timings. This script then writes ``run_all[-quick]-<machine>.json`` with the
table below and the paths of those files. See benchmarks/README.md for what each ratio means.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCHES = ("stats", "generation", "dpo", "importance", "capability")

# (script, result name, args) per mode; every number a benchmark reports comes from these settings
SETTINGS: dict[str, dict[str, tuple[str, str, list[str]]]] = {
    "full": {
        "stats": (
            "bench_stats.py",
            "stats",
            [
                "--model",
                "qwen2.5-coder-0.5b-instruct",
                "--n-prompts",
                "32",
                "--tokens",
                "128",
                "--batch-size",
                "8",
                "--repeats",
                "6",
                "--scale",
                "16,64",
            ],
        ),
        "generation": (
            "bench_generation.py",
            "generation",
            [
                "--model",
                "qwen2.5-coder-0.5b-instruct",
                "--n-prompts",
                "32",
                "--batch-size",
                "16",
                "--max-new-tokens",
                "64",
            ],
        ),
        "dpo": (
            "bench_dpo_step.py",
            "dpo_step",
            ["--model", "smollm2-135m-instruct", "--steps", "3", "--rounds", "2"],
        ),
        "importance": (
            "importance/run.py",
            "importance",
            [
                "--model",
                "smollm2-135m-instruct",
                "--layer",
                "-10",
                "--n-prompts",
                "4",
                "--sites",
                "k,v",
                "--ablate-positions",
                "last",
                "--methods",
                "exact,probe,heuristic",
                "--probes",
                "8,32",
            ],
        ),
        "capability": (
            "bench_capability.py",
            "capability",
            ["--model", "qwen2.5-coder-0.5b-instruct", "--n", "8", "--k-shot", "25"],
        ),
    },
    "quick": {
        "stats": (
            "bench_stats.py",
            "stats-quick",
            [
                "--model",
                "smollm2-135m-instruct",
                "--n-prompts",
                "16",
                "--tokens",
                "128",
                "--batch-size",
                "8",
                "--repeats",
                "2",
                "--scale",
                "8,32",
            ],
        ),
        "generation": (
            "bench_generation.py",
            "generation-quick",
            [
                "--model",
                "smollm2-135m-instruct",
                "--n-prompts",
                "16",
                "--batch-size",
                "16",
                "--max-new-tokens",
                "32",
            ],
        ),
        "dpo": (
            "bench_dpo_step.py",
            "dpo_step-quick",
            [
                "--model",
                "smollm2-135m-instruct",
                "--steps",
                "3",
                "--rounds",
                "1",
                "--variants",
                "plain,masked",
            ],
        ),
        "importance": (
            "importance/run.py",
            "importance-quick",
            [
                "--model",
                "smollm2-135m-instruct",
                "--layer",
                "-10",
                "--n-prompts",
                "2",
                "--sites",
                "v",
                "--ablate-positions",
                "last",
                "--methods",
                "exact,probe,heuristic",
                "--probes",
                "8",
            ],
        ),
        "capability": (
            "bench_capability.py",
            "capability-quick",
            ["--model", "smollm2-135m-instruct", "--n", "4", "--k-shot", "25", "--gsm8k-n", "8"],
        ),
    },
}


def command_for(
    bench: str, mode: str, tag: str, out_dir: Path, threads: int, model: str | None
) -> tuple[list[str], Path]:
    script, name, extra = SETTINGS[mode][bench]
    extra = list(extra)
    if model and bench != "importance":  # importance/run.py loads through load_model only
        extra[extra.index("--model") + 1] = model
    path = common.result_path(name, out_dir, tag)
    cmd = [sys.executable, str(common.BENCH_DIR / script), *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    if bench == "importance":  # its own writer: only --out
        cmd += ["--out", str(path)]
    else:
        cmd += ["--name", name, "--out-dir", str(out_dir), "--tag", tag]
    return cmd, path


def _row(
    bench: str, what: str, value: float | None, target: str = "", met: bool | None = None, fmt: str = "{:.2f}"
) -> dict[str, Any]:
    return {
        "benchmark": bench,
        "measure": what,
        "value": value,
        "shown": "-" if value is None else fmt.format(value),
        "target": target,
        "met": None if met is None else bool(met),
    }


def rows_for(bench: str, res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if bench == "stats":
        s, model = res.get("summary", {}), res.get("runs", {}).get("bare", {}).get("model", "?")
        b = f"stats ({model})"
        for v, tgt in (("ours_last", 1.05), ("ours_all", 1.10)):  # bench_stats.TIME_TARGETS
            if v in s:
                paired = s[v].get("paired_time_ratio_vs_bare")
                rows.append(
                    _row(
                        b,
                        f"{v}: time / bare forward (paired in-process)",
                        paired,
                        f"<= {tgt:.2f}",
                        paired is not None and paired <= tgt,
                    )
                )
                rows.append(
                    _row(b, f"{v}: time / bare forward (separate processes)", s[v].get("time_ratio_vs_bare"))
                )
                peak = s[v].get("peak_ratio_vs_bare")
                rows.append(_row(b, f"{v}: peak RSS / bare peak RSS", peak, "<= 1.05",
                                 peak is not None and peak <= 1.05))
        for v in ("tl", "nnsight"):
            if v in s:
                rows.append(_row(b, f"{v}: time / bare forward", s[v].get("time_ratio_vs_bare")))
                rows.append(_row(b, f"{v}: peak RSS / bare peak RSS", s[v].get("peak_ratio_vs_bare")))
                if "ours_last" in s:
                    r = s[v]["median_seconds"] / s["ours_last"]["median_seconds"]
                    rows.append(_row(b, f"{v} time / ours_last time", r, ">= 1", r >= 1))
        for v, why in res.get("skipped", {}).items():
            rows.append(_row(b, f"{v}: skipped ({why})", None))
        for v, m in res.get("memory_scaling", {}).items():
            ns = m["n_prompts"]
            tol = res.get("config", {}).get("memory_tolerance_mb", 32)
            met = m["peak_growth_mb"] <= tol if v.startswith("ours") else None
            rows.append(
                _row(
                    b,
                    f"{v}: peak RSS growth {ns[0]} -> {ns[-1]} prompts (MiB)",
                    m["peak_growth_mb"],
                    f"<= {tol:g} MiB" if v.startswith("ours") else "",
                    met,
                    "{:+.0f}",
                )
            )
    elif bench == "generation":
        s = res.get("summary", {})
        b = f"generation ({res.get('model', '?')})"
        rows.append(
            _row(
                b,
                f"tokens/s batched (batch {res['runs']['batched']['batch_size']}) / one-by-one",
                s.get("throughput_ratio_batched_vs_one_by_one"),
                "> 1",
                (s.get("throughput_ratio_batched_vs_one_by_one") or 0) > 1,
            )
        )
        rows.append(_row(b, "tokens/s batched", s.get("batched_tokens_per_second"), fmt="{:.1f}"))
        rows.append(_row(b, "tokens/s one-by-one", s.get("one_by_one_tokens_per_second"), fmt="{:.1f}"))
        rows.append(_row(b, "identical greedy texts (fraction)", res.get("same_text_fraction")))
        vllm = res["runs"].get("vllm", {"skipped": "not measured"})
        if "skipped" in vllm:
            rows.append(_row(b, f"vLLM tokens/s (skipped: {vllm['skipped']})", None))
        else:
            rows.append(_row(b, "tokens/s vLLM (incl. engine start) / batched",
                             vllm["tokens_per_second"] / s["batched_tokens_per_second"], fmt="{:.2f}"))
    elif bench == "dpo":
        s = res.get("summary", {})
        model = next((r[0]["model"] for r in res.get("runs", {}).values() if r and "model" in r[0]), "?")
        b = f"dpo step ({model})"
        for v in ("masked", "masked_no_ablation"):
            if v in s:
                r = s[v].get("step_ratio_vs_plain")
                rows.append(
                    _row(
                        b,
                        f"{v}: s/step / plain DPO s/step",
                        r,
                        "<= 1.05" if v == "masked" else "",
                        (r <= 1.05) if v == "masked" and r else None,
                    )
                )
                rows.append(_row(b, f"{v}: peak RSS in training / plain", s[v].get("peak_ratio_vs_plain")))
        if "plain" in s:
            rows.append(_row(b, "plain DPO seconds per step", s["plain"]["median_step_seconds"]))
    elif bench == "importance":
        sites = ",".join(res.get("sites", []))
        b = f"importance ({res.get('model', '?')}, layer {res.get('layer')}, {sites})"
        for label, r in res.get("runs", {}).items():
            if label == "exact" or "speedup_vs_exact" not in r:
                continue
            rows.append(
                _row(b, f"{label}: speed-up vs exact ablations", r.get("speedup_vs_exact"), fmt="{:.1f}")
            )
            if r.get("spearman") is not None:
                rows.append(_row(b, f"{label}: Spearman vs exact", r.get("spearman"), fmt="{:.3f}"))
        if "exact" in res.get("runs", {}):
            rows.append(_row(b, "exact ablations, seconds", res["runs"]["exact"]["seconds"], fmt="{:.1f}"))
    elif bench == "capability":
        s = res.get("summary", {})
        k = res.get("config", {}).get("k_shot")
        b = f"capability ({res.get('model', '?')}, ARC {k}-shot, {res.get('config', {}).get('n')} questions)"
        if "speedup_shared_vs_full" in s:  # ARC ran (--n > 0)
            r = s["speedup_shared_vs_full"]
            rows.append(_row(b, "shared-context scoring: speed-up vs full passes", r, "> 1", r > 1))
            rows.append(_row(b, "max |log-likelihood diff| shared vs full",
                             s.get("max_abs_loglikelihood_diff_shared_vs_full"), fmt="{:.1e}"))
            rows.append(_row(b, "same predictions shared vs full", float(bool(s.get("same_predictions_shared_vs_full"))),
                             "1", bool(s.get("same_predictions_shared_vs_full")), fmt="{:.0f}"))
        if "speedup_shared_vs_lmeval" in s:
            r = s["speedup_shared_vs_lmeval"]
            rows.append(_row(b, "lm-eval time / ours (shared)", r, "> 1", r > 1))
        for key, r in s.items():
            if key.startswith("speedup_gsm8k"):  # GSM8K generation variants against every prompt in full
                variant = key.removeprefix("speedup_").removesuffix("_vs_full")
                same = bool(s.get(f"same_outputs_{variant}_vs_full"))
                rows.append(_row(f"capability ({res.get('model', '?')}, GSM8K 8-shot)",
                                 f"{variant}: speed-up vs full prompts (same text: {'yes' if same else 'NO'})",
                                 r, "> 1, same text", r > 1 and same))
        for v, why in res.get("skipped", {}).items():
            rows.append(_row(b, f"{v}: skipped ({why})", None))
    return rows


def print_rows(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            r["benchmark"],
            r["measure"],
            r["shown"],
            r["target"],
            "" if r["met"] is None else ("yes" if r["met"] else "NO"),
        ]
        for r in rows
    ]
    return common.table(body, ["benchmark", "ratio / measure", "value", "target", "met"], left=(0, 1, 3, 4))


def markdown_rows(rows: list[dict[str, Any]]) -> str:
    out = ["| benchmark | ratio / measure | value | target | met |", "|---|---|---|---|---|"]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        out.append(f"| {r['benchmark']} | {r['measure']} | {r['shown']} | {r['target']} | {met} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smollm2-135m-instruct and small N (minutes)")
    ap.add_argument(
        "--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}"
    )
    ap.add_argument(
        "--model",
        default=None,
        help="override the model of the stats, generation and dpo benchmarks ('tiny': smoke test)",
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads in every benchmark (0: torch default)"
    )
    ap.add_argument(
        "--tag", default=None, help="machine tag in result names (default: detected, e.g. x86_64-2cpu)"
    )
    ap.add_argument("--out-dir", default=str(common.RESULTS_DIR))
    ap.add_argument(
        "--summarise",
        action="store_true",
        help="do not run anything: rebuild the table from the result files already written",
    )
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    tag = args.tag or common.machine_tag()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [b for b in args.only.split(",") if b]
    unknown = sorted(set(wanted) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for bench in wanted:
        cmd, path = command_for(bench, mode, tag, out_dir, args.threads, args.model)
        entry: dict[str, Any] = {"command": shlex.join(cmd), "result_file": str(path)}
        if not args.summarise:
            print(f"\n=== {bench} ({mode}) ===\n$ {shlex.join(cmd)}", file=sys.stderr, flush=True)
            t = time.perf_counter()
            rc = subprocess.run(cmd, check=False, cwd=common.ROOT).returncode
            entry.update(returncode=rc, wall_seconds=round(time.perf_counter() - t, 1))
            if rc != 0:
                print(f"[run_all] {bench} exited with {rc}", file=sys.stderr)
        if path.exists() and (args.summarise or entry.get("returncode") == 0):
            res = json.loads(path.read_text())
            entry["rows"] = rows_for(bench, res)
            rows += entry["rows"]
        else:
            rows.append(_row(bench, "no result (failed or not run)", None))
        runs[bench] = entry
    text = print_rows(rows)
    print("\n" + text)
    if args.markdown:
        print("\n" + markdown_rows(rows))
    doc = {"mode": mode, "started_utc": started, "benches": runs, "table": rows}
    name = "run_all-quick" if args.quick else "run_all"
    if set(wanted) != set(BENCHES):  # a subset must not replace the summary of a full run
        name += "-only-" + "-".join(wanted)
    p = common.write_result(
        name,
        doc,
        out_dir,
        tag,
        argv=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
    )
    print(f"\nwrote {p}", file=sys.stderr)
    failed = [b for b, e in runs.items() if e.get("returncode") not in (0, None)]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
