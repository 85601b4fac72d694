"""The job's child process killed alone (SIGKILL, as the kernel's OOM killer does): the
job runs again in a fresh child from its checkpoint, up to the attempt limit; an
out-of-memory kill says so in the error."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from service.settings import Settings
from tests.faults.conftest import (
    Outcome,
    assert_one_run_epochs_once,
    assert_one_run_every_epoch_once,
)
from tests.worker.conftest import SLOW_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow


def kill_child_in_training(cluster: Backend, experiment_id: str, attempt: int) -> float:
    """SIGKILL the job's process (alone) once attempt ``attempt`` has trained an epoch."""

    def training() -> int | None:
        train = cluster.train(experiment_id)
        trained = train.attempt == attempt and "epoch" in (train.message or "")
        started = trained and not (train.message or "").startswith("training from")
        return cluster.job_child() if started else None

    child = cluster.wait(training, 120, f"attempt {attempt} to train an epoch")
    os.kill(child, signal.SIGKILL)
    return time.monotonic()


def test_a_child_killed_alone_resumes_from_its_checkpoint(
    faulty_cluster: Backend, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    epochs = 4
    experiment_id = cluster.submit(spec_with(SLOW_SPEC, training={"epochs": epochs}))
    cluster.start_worker()
    killed = kill_child_in_training(cluster, experiment_id, attempt=1)

    def second_attempt_or_end() -> bool:
        train = cluster.train(experiment_id)
        return train.attempt == 2 or train.state in ("succeeded", "failed")

    cluster.wait(second_attempt_or_end, 60, "the second attempt")
    recovered = time.monotonic() - killed
    train = cluster.wait_finished(experiment_id, timeout=120)["train"]

    assert (train.state, train.attempt) == ("succeeded", 2), f"{train}\n{cluster.processes.logs()}"
    assert "resumed from epoch" in (train.message or ""), train.message
    assert "retrying in a fresh job process" in cluster.processes.log("worker")
    assert cluster.experiment(experiment_id)["metrics"]["epochs"] == epochs
    assert_one_run_every_epoch_once(cluster, [experiment_id])
    reliability.record(
        "the job's child process SIGKILLed alone mid-training",
        "retried at once in a fresh child from its last checkpoint (attempt 2); succeeded; "
        "every epoch once in its MLflow run",
        recovered,
    )


def test_a_child_killed_at_every_attempt_fails_at_the_attempt_limit(
    faulty_cluster: Backend, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    cluster.processes.env["REGBENCH_MAX_ATTEMPTS"] = "2"
    experiment_id = cluster.submit(spec_with(SLOW_SPEC, training={"epochs": 20}))
    cluster.start_worker()
    kill_child_in_training(cluster, experiment_id, attempt=1)
    last = kill_child_in_training(cluster, experiment_id, attempt=2)
    train = cluster.wait_finished(experiment_id, timeout=60)["train"]
    failed_after = time.monotonic() - last

    assert (train.state, train.attempt) == ("failed", 2), f"{train}\n{cluster.processes.logs()}"
    assert "killed by SIGKILL" in train.error and "gave up after 2 attempts" in train.error
    assert_one_run_epochs_once(cluster, experiment_id, "FAILED")  # both attempts' one run
    reliability.record(
        "the job's child process SIGKILLed at every attempt (max_attempts 2)",
        "retried once from its checkpoint, then failed with the cause and the attempts",
        failed_after,
    )


def test_an_oom_kill_says_so(tmp_path: Path) -> None:
    """The OOM killer's counter of the child's memory cgroup (v1 or v2 layout) tells an
    out-of-memory kill from any other SIGKILL."""
    from worker.runner import memory_cgroup, oom_kills
    from worker.supervisor import JobRun

    root = tmp_path / "cgroup"
    for directory, name in ((root, "memory.events"), (root / "memory", "memory.oom_control")):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text("oom 0\noom_kill 0\n")
    cgroup = memory_cgroup(os.getpid(), root)
    assert cgroup is not None and oom_kills(cgroup) == 0
    run = JobRun(
        settings=Settings(data_dir=tmp_path),
        db=None,  # type: ignore[arg-type]  (not used to describe a kill)
        job_id="j",
        kind="train",
        experiment_id="e",
        attempt=1,
        worker="w",
        mlflow_run_id=None,
        time_limit_s=60,
        cgroup=cgroup,
        oom_kills_before=0,
        seen_rss_mb=1234.0,
    )
    plain = run._describe_kill(-signal.SIGKILL)
    assert "no OOM kill" in plain and "out of memory" not in plain

    for name in ("memory.events", "memory.oom_control"):
        for path in root.rglob(name):
            path.write_text("oom 1\noom_kill 1\n")
    oom = run._describe_kill(-signal.SIGKILL)
    assert "out of memory (the kernel's OOM killer" in oom and "1234 MB" in oom
