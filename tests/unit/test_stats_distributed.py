"""Two gloo processes give the same statistics as one process (float tolerance)."""

import os

import numpy as np
import torch
from gloo import gloo_group, run_ranks

TEXTS = [f"prompt {i} " + "word " * (i % 7) for i in range(11)]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world, port):
        from safeneurons.stats import StatsConfig
        from safeneurons.stats.distributed import collect_stats_distributed
        from tiny import make_tiny_model, tiny_tokenizer

        model = make_tiny_model("qwen2")
        stats = collect_stats_distributed(model, tiny_tokenizer(), {"g": TEXTS, "h": TEXTS[:5]},
                                          StatsConfig(sites=("mlp", "k"), batch_size=3, track_positive=True),
                                          progress=False)
        stats.save(os.path.join(out_dir, f"rank{rank}.safetensors"))


def test_two_gloo_processes_equal_single_process(tmp_path):
    from safeneurons.stats import ActivationStats, StatsConfig, collect_stats
    from tiny import make_tiny_model, tiny_tokenizer

    run_ranks(_worker, 2, str(tmp_path))
    single = collect_stats(make_tiny_model("qwen2"), tiny_tokenizer(), {"g": TEXTS, "h": TEXTS[:5]},
                           StatsConfig(sites=("mlp", "k"), batch_size=3, track_positive=True), progress=False)
    for rank in (0, 1):
        dist_stats = ActivationStats.load(tmp_path / f"rank{rank}.safetensors")
        for g in ("g", "h"):
            for key, m in single.moments[g].items():
                d = dist_stats.moments[g][key]
                assert d.n == m.n
                np.testing.assert_allclose(d.mean.numpy(), m.mean.numpy(), rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(d.var.numpy(), m.var.numpy(), rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(d.n_positive.numpy(), m.n_positive.numpy())
