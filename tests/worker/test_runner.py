"""Warm job runners: one job process per slot runs job after job, and is replaced after a
crash, a cancel, a memory limit or its job quota; slots run jobs side by side."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest

from tests.worker.conftest import FAST_SPEC, SLOW_SPEC, Backend, alive, spec_with

pytestmark = pytest.mark.slow

COMPARED = ("test_accuracy", "test_loss", "train_accuracy", "train_loss", "epochs")


def runner_pids(backend: Backend, job_ids: list[str]) -> list[int]:
    """The job process of each job, from the ``[job <pid>]`` prefix of its log."""
    pids = []
    for job_id in job_ids:
        (log_file,) = backend.settings.runs_dir.glob(f"*/logs/*-{job_id}-*.log")
        found = set(re.findall(r"\[job (\d+)\]", log_file.read_text()))
        assert len(found) == 1, f"{log_file}: {found}"
        pids.append(int(found.pop()))
    return pids


def metrics_of(backend: Backend, experiment_id: str) -> dict[str, Any]:
    metrics = backend.experiment(experiment_id)["metrics"]
    return {key: metrics[key] for key in COMPARED}


def test_a_warm_runner_runs_jobs_in_a_row_with_the_numbers_of_cold_runs(
    embedded: Backend,
) -> None:
    specs = [
        spec_with(FAST_SPEC, training={"seed": 0}, analyses=[{"kind": "calibration"}]),
        spec_with(FAST_SPEC, training={"seed": 1}, regularizers=[{"name": "l2", "weight": 1e-3}]),
        spec_with(
            FAST_SPEC, training={"seed": 2}, model={"name": "mlp", "hidden": [16], "dropout": 0.2}
        ),
    ]
    warm = [embedded.submit(spec) for spec in specs]
    embedded.start_worker("warm")
    for experiment_id in warm:
        jobs = embedded.wait_finished(experiment_id, timeout=120)
        assert {job.state for job in jobs.values()} == {"succeeded"}, embedded.processes.logs()
    job_ids = [job.id for experiment_id in warm for job in embedded.jobs(experiment_id).values()]
    assert len(job_ids) == 4  # three trainings and one analysis ...
    assert len(set(runner_pids(embedded, job_ids))) == 1  # ... all in one warm process
    calibration = embedded.jobs(warm[0])["calibration"]
    assert calibration.started_at >= embedded.train(warm[0]).finished_at

    # The same specs, each in a fresh interpreter (the cold start), give the same numbers.
    embedded.processes.stop_all()
    embedded.processes.started.clear()
    embedded.processes.env["REGBENCH_WARM_RUNNERS"] = "false"
    cold = [embedded.submit(spec, force=True) for spec in specs]
    embedded.start_worker("cold")
    for experiment_id in cold:
        embedded.wait_finished(experiment_id, timeout=120)
    cold_jobs = [embedded.train(experiment_id).id for experiment_id in cold]
    assert len(set(runner_pids(embedded, cold_jobs))) == 3  # one process per job
    for warm_id, cold_id in zip(warm, cold, strict=True):
        assert metrics_of(embedded, warm_id) == metrics_of(embedded, cold_id)


def test_a_crashed_cancelled_or_oversized_job_replaces_the_runner_and_the_next_runs(
    embedded: Backend,
) -> None:
    slow = spec_with(SLOW_SPEC, training={"epochs": 500})
    crashed = embedded.submit(slow)
    cancelled = embedded.submit(spec_with(slow, training={"seed": 4}))
    oversized = embedded.submit(
        spec_with(slow, training={"seed": 5}, resources={"memory_gb": 0.01})
    )
    after = embedded.submit(FAST_SPEC)
    # One attempt: a killed job would otherwise be retried from its checkpoint.
    embedded.processes.env["REGBENCH_MAX_ATTEMPTS"] = "1"
    embedded.start_worker()

    # A crash (the kernel's out-of-memory killer, say): the job fails, the slot goes on.
    embedded.wait(lambda: embedded.train(crashed).progress > 0, 90, "the first job to train")
    child = embedded.job_child()
    assert child is not None
    os.kill(child, signal.SIGKILL)
    train = embedded.wait_finished(crashed)["train"]
    assert train.state == "failed" and "killed by SIGKILL" in (train.error or "")

    embedded.wait(lambda: embedded.train(cancelled).progress > 0, 90, "the second job to train")
    second = embedded.job_child()
    assert second is not None and second != child
    embedded.cancel(cancelled)
    assert embedded.wait_finished(cancelled)["train"].state == "cancelled"
    embedded.wait(lambda: not alive(second), 10, "the cancelled job's process to stop")

    train = embedded.wait_finished(oversized)["train"]
    assert train.state == "failed", embedded.processes.logs()
    assert "over its memory limit of 10 MB (resources.memory_gb)" in (train.error or "")

    train = embedded.wait_finished(after)["train"]
    assert train.state == "succeeded", embedded.processes.logs()
    pids = runner_pids(embedded, [embedded.train(e).id for e in (crashed, cancelled, after)])
    assert len(set(pids)) == 3  # every job that did not succeed took its process with it


def test_a_runner_is_replaced_after_its_job_quota_and_past_its_memory_threshold(
    embedded: Backend,
) -> None:
    embedded.processes.env["REGBENCH_RUNNER_MAX_JOBS"] = "2"
    experiments = [embedded.submit(spec_with(FAST_SPEC, training={"seed": s})) for s in range(4)]
    embedded.start_worker()
    for experiment_id in experiments:
        assert embedded.wait_finished(experiment_id)["train"].state == "succeeded"
    pids = runner_pids(embedded, [embedded.train(e).id for e in experiments])
    assert pids[0] == pids[1] != pids[2] == pids[3]

    embedded.processes.stop_all()
    embedded.processes.started.clear()
    embedded.processes.env["REGBENCH_RUNNER_MAX_JOBS"] = "100"
    embedded.processes.env["REGBENCH_RUNNER_MAX_MEMORY_MB"] = "64"  # below any torch process
    experiments = [embedded.submit(spec_with(FAST_SPEC, training={"seed": s})) for s in (5, 6)]
    embedded.start_worker("small")
    for experiment_id in experiments:
        assert embedded.wait_finished(experiment_id)["train"].state == "succeeded"
    pids = runner_pids(embedded, [embedded.train(e).id for e in experiments])
    assert pids[0] != pids[1]
    assert "over runner_max_memory_mb" in embedded.processes.log("small")


def test_two_slots_run_two_jobs_at_once_on_one_worker(backend: Backend) -> None:
    slow = spec_with(SLOW_SPEC, training={"epochs": 500})
    experiments = [backend.submit(spec_with(slow, training={"seed": s})) for s in (7, 8)]
    backend.start_launcher("--slots", "2", "--no-reconcile")

    def both_running() -> list[Any] | None:
        trains = [backend.train(e) for e in experiments]
        return trains if all(t.state == "running" and t.progress > 0 for t in trains) else None

    trains = backend.wait(both_running, 120, "both jobs to train at the same time")
    nodes = {train.worker.rsplit(":", 1)[0] for train in trains}
    slots = {train.worker for train in trains}
    assert len(nodes) == 1 and len(slots) == 2  # one worker, two of its slots
    for experiment_id in experiments:
        backend.cancel(experiment_id)
    for experiment_id in experiments:
        assert backend.wait_finished(experiment_id)["train"].state == "cancelled"
