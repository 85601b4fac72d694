"""Shares of a GPU among slots: small jobs side by side, a whole-device job alone, and a
job waiting for its share keeps its heartbeat and can be cancelled."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.worker.conftest import FAST_SPEC, Backend
from worker.shares import DeviceShares
from worker.supervisor import supervise_job


@pytest.fixture
def sleepers() -> Iterator[list[int]]:
    """Live processes to hold shares (a share belongs to a process)."""
    started = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(3)
    ]
    yield [process.pid for process in started]
    for process in started:
        process.kill()
        process.wait()


def test_jobs_share_a_device_up_to_one_whole_device(tmp_path: Path, sleepers: list[int]) -> None:
    first, second, third = sleepers
    shares = DeviceShares("cuda:0", tmp_path)
    assert shares.try_acquire(0.5, first) and shares.try_acquire(0.5, second)
    assert not shares.try_acquire(0.1, third)  # full
    assert shares.in_use() == pytest.approx(1.0)
    shares.release(first)
    assert shares.try_acquire(0.3, third) and shares.in_use() == pytest.approx(0.8)
    tenths = DeviceShares("cuda:1", tmp_path)  # another device: its own ledger
    assert all(tenths.try_acquire(0.1, pid) for pid in sleepers)
    assert not tenths.try_acquire(1.0, sleepers[0] + 10**6)


def test_a_share_held_by_a_dead_process_is_free_again(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    shares = DeviceShares("cuda:0", tmp_path)
    assert shares.try_acquire(1.0, gone.pid)
    assert shares.try_acquire(1.0)  # the dead process's share is dropped


def test_a_job_waiting_for_its_share_heartbeats_and_can_be_cancelled(embedded: Backend) -> None:
    experiment_id = embedded.submit(FAST_SPEC, send=False)
    train = embedded.train(experiment_id)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    device = f"cuda:test-{experiment_id[:8]}"
    try:
        assert DeviceShares(device).try_acquire(1.0, holder.pid)  # another job has it all
        outcome: list[str] = []
        waiting = threading.Thread(
            target=lambda: outcome.append(
                supervise_job(train.id, settings=embedded.settings, worker="me:1", device=device)
            )
        )
        waiting.start()
        embedded.wait(
            lambda: "waiting for 1 of" in (embedded.train(experiment_id).message or ""),
            30,
            "the job to say it waits for its share",
        )
        assert embedded.train(experiment_id).state == "running"
        embedded.cancel(experiment_id)
        waiting.join(timeout=30)
        assert outcome == ["cancelled"]
        assert embedded.train(experiment_id).state == "cancelled"
    finally:
        holder.kill()
        holder.wait()
        DeviceShares(device).path.unlink(missing_ok=True)


def test_stacks_form_on_gpus_by_default_and_on_the_cpu_when_asked() -> None:
    from service.settings import GPU_STACK_SIZE, Settings

    default = Settings(_env_file=None)
    assert (default.stack_limit("cpu"), default.stack_limit("cuda:3")) == (1, GPU_STACK_SIZE)
    asked = Settings(_env_file=None, stack_size=5)
    assert (asked.stack_limit("cpu"), asked.stack_limit("cuda:0")) == (5, 5)
