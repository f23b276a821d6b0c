"""The GPU benchmark script runs end to end on the tiny shape on the CPU (its numbers mean nothing there);
this keeps the script working between the rare sessions that have a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def bench_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_gpu as module

    yield module
    sys.modules.pop("bench_gpu", None)


def test_bench_gpu_smoke_run_on_cpu(bench_gpu):
    args = bench_gpu.build_parser().parse_args([
        "--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--no-write", "--n-prompts", "4",
        "--tokens", "32", "--repeats", "1", "--importance-prompts", "2", "--importance-tokens", "16",
        "--probes", "8", "--naive-neurons", "4", "--train-layers", "1", "--n-pairs", "8", "--steps", "1",
        "--rounds", "1", "--dpo-max-length", "256"])
    result = bench_gpu.run(args)
    assert "errors" not in result, result.get("errors")
    stats, imp, dpo = (result["sections"][k] for k in ("stats", "importance", "dpo"))
    assert set(stats["variants"]) == {"bare", "ours_last", "ours_all"}
    assert all(v["median_seconds"] > 0 for v in stats["variants"].values())
    assert imp["runs"]["naive"]["max_abs_diff_vs_exact"] < 1e-4  # one-at-a-time equals batched exact
    assert -1 <= imp["runs"]["probe(k=8)"]["spearman"] <= 1
    assert dpo["summary"]["masked"]["frozen_drift"] == 0.0
    assert dpo["summary"]["plain"]["x_plain"] == 1.0
    assert "DPO step" in bench_gpu.print_table(result)


def test_bench_gpu_refuses_unknown_sections(bench_gpu, capsys):
    with pytest.raises(SystemExit):
        bench_gpu.build_parser().parse_args(["--sections", "stats,speed"])
    assert "unknown section(s) ['speed']" in capsys.readouterr().err
