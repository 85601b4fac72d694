"""``regbench worker``: the Celery command lines it builds (GPUs, CPU, reconciler)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.worker_commands import reconcile, worker
from worker import launcher, reconciler


def test_one_worker_per_gpu_with_its_device_queue_and_node_name() -> None:
    plans = launcher.plan_workers(launcher.parse_gpus("0,1"), cores=16)
    assert [p.name for p in plans] == ["gpu0", "gpu1"]
    shared = {"REGBENCH_SLOTS": "1", "REGBENCH_TORCH_THREADS": "8"}  # 16 cores, 2 slots in all
    assert [p.env for p in plans] == [
        {"CUDA_VISIBLE_DEVICES": "0", **shared},
        {"CUDA_VISIBLE_DEVICES": "1", **shared},
    ]
    for gpu, plan in zip("01", plans, strict=True):
        argv = plan.argv
        assert argv[:6] == [sys.executable, "-m", "celery", "-A", "worker.app", "worker"]
        options = dict(zip(argv[6::2], argv[7::2], strict=False))
        assert options["--pool"] == "prefork"
        assert options["--concurrency"] == "1"
        assert options["--queues"] == "gpu"
        assert options["--hostname"] == f"gpu{gpu}@%h"


def test_without_gpus_one_worker_serves_the_cpu_queue() -> None:
    (plan,) = launcher.plan_workers([], slots=2, queues=None, cores=2)
    # Never touches a GPU; each of the 2 slots' job processes gets one of the 2 cores.
    assert plan.env == {
        "CUDA_VISIBLE_DEVICES": "",
        "REGBENCH_SLOTS": "2",
        "REGBENCH_TORCH_THREADS": "1",
    }
    options = dict(zip(plan.argv[6::2], plan.argv[7::2], strict=False))
    assert (options["--queues"], options["--hostname"], options["--concurrency"]) == (
        "cpu", "cpu@%h", "2",
    )  # fmt: skip


def test_slots_share_the_cores_unless_threads_are_set() -> None:
    (plan,) = launcher.plan_workers([], slots=3, cores=12)
    assert plan.env["REGBENCH_TORCH_THREADS"] == "4"
    (plan,) = launcher.plan_workers([], slots=8, cores=4)
    assert plan.env["REGBENCH_TORCH_THREADS"] == "1"  # never fewer than one
    (plan,) = launcher.plan_workers([], slots=2, cores=12, torch_threads=5)
    assert plan.env["REGBENCH_TORCH_THREADS"] == "5"


def test_a_worker_asked_for_a_gpu_that_is_not_there_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal cannot be shown here")
    monkeypatch.setenv("REGBENCH_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(worker, ["--gpus", "0"])
    assert result.exit_code == 2, result.output
    assert "asked for GPU 0 but torch sees no CUDA device" in result.output
    assert "--cpu" in result.output


def test_queues_and_events_can_be_chosen() -> None:
    (plan,) = launcher.plan_workers(["3"], queues="gpu,cpu", events=True)
    assert "--task-events" in plan.argv
    assert plan.argv[plan.argv.index("--queues") + 1] == "gpu,cpu"


@pytest.mark.parametrize("text", ["0,x", "1,1", "-1"])
def test_bad_gpu_lists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--gpus"):
        launcher.parse_gpus(text)


def test_cli_dry_run_prints_the_command_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGBENCH_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("REGBENCH_BROKER_URL", raising=False)
    result = CliRunner().invoke(worker, ["--gpus", "0,1", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 3  # two GPU workers and, with the embedded broker, the reconciler
    assert lines[0].startswith("CUDA_VISIBLE_DEVICES=0 ") and "--queues gpu" in lines[0]
    assert lines[1].startswith("CUDA_VISIBLE_DEVICES=1 ") and "gpu1@%h" in lines[1]
    assert "-m worker.reconciler" in lines[2]

    monkeypatch.setenv("REGBENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
    result = CliRunner().invoke(worker, ["--cpu", "--dry-run"])
    assert result.exit_code == 0, result.output
    (line,) = result.output.strip().splitlines()  # a cluster runs its reconciler apart
    assert "--queues cpu" in line and "--task-events" in line

    result = CliRunner().invoke(worker, ["--gpus", "0,zero", "--dry-run"])
    assert result.exit_code == 2 and "GPU indices" in result.output


def test_cli_help_states_the_reconciler_defaults() -> None:
    help_text = CliRunner().invoke(reconcile, ["--help"]).output
    assert f"[{reconciler.DEFAULT_INTERVAL_S:g}]" in help_text
    assert f"[{reconciler.DEFAULT_GRACE_S:g}]" in help_text
