"""Masked training under ``accelerate launch``: the shipped DDP-on-CPU config runs the smoke check
(``safeneurons.train.smoke``) in 2 gloo processes, and the launch modes that would silently break frozen
slices are refused. What is tested where: docs/scale-out.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from safeneurons.errors import ConfigError
from safeneurons.train.dpo import check_launch

REPO = Path(__file__).resolve().parents[2]
DDP_CPU = REPO / "configs" / "accelerate" / "ddp-cpu.yaml"
_DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_smoke_runs_one_masked_dpo_step_under_accelerate_launch_ddp_cpu(tmp_path):
    pytest.importorskip("accelerate", reason="accelerate is not installed; `accelerate launch` cannot run")
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    env.update(
        ACCELERATE_USE_CPU="true",  # see the comment in ddp-cpu.yaml
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TQDM_DISABLE="1",
    )
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP_CPU),
        "--main_process_port", "0",  # a free port: CI may run other jobs on 29500
        "-m", "safeneurons.train.smoke", "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, log
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert report["ok"] and report["failures"] == [], log
    assert report["world_size"] == report["launched_world_size"] == 2
    assert (report["distributed_type"], report["backend"]) == ("MULTI_CPU", "gloo")
    assert report["global_step"] == 1
    assert report["frozen_max_abs_delta"] == 0.0 and report["frozen_max_abs_delta_per_step"] == 0.0
    assert report["other_max_abs_delta"] > 0.0
    assert report["restore_drift"] > 0.0  # weight decay reached the frozen slices: the restore was needed
    assert report["ranks_identical"] and report["rank_max_abs_diff"] == 0.0
    assert proc.stdout.count("safeneurons smoke (rank") == 2  # both ranks ran the checks


def _trainer(world: int = 1, fsdp: bool = False, zero_stage: int | None = None) -> SimpleNamespace:
    plugin = SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(
        args=SimpleNamespace(world_size=world),
        is_fsdp_enabled=fsdp,
        is_deepspeed_enabled=zero_stage is not None,
        accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)),
    )


FREEZER = object()  # check_launch only asks whether there is a freezer


def test_check_launch_refuses_processes_that_did_not_join(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=true"):
        check_launch(_trainer(world=1), None)
    check_launch(_trainer(world=2), FREEZER)
    monkeypatch.delenv("WORLD_SIZE")
    check_launch(_trainer(world=1), FREEZER)


@pytest.mark.parametrize(("fsdp", "zero_stage", "mode"), [(True, None, "FSDP"), (False, 3, "ZeRO-3")])
def test_check_launch_refuses_sharding_with_a_freezer(monkeypatch, fsdp, zero_stage, mode):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match=mode):
        check_launch(_trainer(fsdp=fsdp, zero_stage=zero_stage), FREEZER)
    check_launch(_trainer(fsdp=fsdp, zero_stage=zero_stage), None)  # nothing frozen: nothing to break


def test_check_launch_warns_that_zero_1_2_is_untested(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level("WARNING", logger="safeneurons.train"):
        check_launch(_trainer(zero_stage=2), FREEZER)
    assert "ZeRO-2 is untested" in caplog.text


def test_check_launch_names_the_fsdp_version_and_the_plain_loop_support(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    trainer = _trainer(fsdp=True)
    trainer.accelerator.state.fsdp_plugin = SimpleNamespace(fsdp_version=2)
    with pytest.raises(ConfigError, match=r"under FSDP2 is not supported in the masked trainers") as err:
        check_launch(trainer, FREEZER)
    assert "plain PyTorch loop" in str(err.value)  # the freezer alone does support FSDP2
