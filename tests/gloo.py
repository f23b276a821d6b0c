"""Helpers for the tests that run several gloo processes on the CPU (DDP, FSDP2, sharded statistics)."""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

TESTS_DIR = str(Path(__file__).resolve().parent)
COLLECTIVE_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gloo_group(rank: int, world: int, port: int) -> Iterator[Any]:
    """Inside a worker: join a gloo group on ``127.0.0.1:port`` with one torch thread, the hub offline and
    the test helpers importable; yields ``torch.distributed`` and always leaves the group."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    torch.set_num_threads(1)
    import torch.distributed as dist

    # a bounded wait: a rank that never arrives fails the test instead of blocking the suite
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def run_ranks(worker: Callable[..., None], world: int, *args: Any) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` fresh processes and wait for all (skip without gloo).
    Spawned, not forked: forking the test process, which by then runs native thread pools (OpenMP, tokenizers),
    once left a rank hung in the full suite; spawning costs ~20 s of imports per test on 2 cores."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, join=True, start_method="spawn")
