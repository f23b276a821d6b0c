"""Helpers for the tests that run several gloo processes on the CPU (DDP, FSDP2, sharded statistics)."""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

TESTS_DIR = str(Path(__file__).resolve().parent)


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

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def run_ranks(worker: Callable[..., None], world: int, *args: Any) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` processes and wait for all (skip without gloo).
    Fork where the platform has it: the workers inherit the imported modules (spawn re-imports torch and
    transformers, ~20 s on 2 cores)."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, join=True, start_method=method)
