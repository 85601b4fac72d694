"""The worker SIGTERMed mid-training (as a service manager stops it): a warm shutdown.
The running job trains to its end and is recorded, the worker exits cleanly, and the
job queued behind it stays in the queue for the next worker: nothing lost, nothing
run twice."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Outcome, RedisServer, assert_one_run_every_epoch_once
from tests.worker.conftest import FAST_SPEC, SLOW_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow

EPOCHS = 5


def test_a_sigtermed_worker_finishes_its_job_and_leaves_the_queue_intact(
    faulty_cluster: Backend, own_redis: RedisServer, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    running_id = cluster.submit(spec_with(SLOW_SPEC, training={"epochs": EPOCHS}))
    waiting_id = cluster.submit(spec_with(FAST_SPEC, training={"seed": 7}))
    cluster.start_worker("first")
    cluster.wait(lambda: "epoch 1/" in (cluster.train(running_id).message or ""), 90, "epoch 1")
    stopped = time.monotonic()
    exit_status = cluster.processes.stop("first", timeout=90)  # SIGTERM, waits for the exit
    drained = time.monotonic() - stopped

    assert exit_status == 0, cluster.processes.log("first")
    running = cluster.train(running_id)
    assert (running.state, running.attempt) == ("succeeded", 1), (
        f"{running}\n{cluster.processes.logs()}"
    )
    assert "resumed" not in (running.message or "")
    waiting = cluster.train(waiting_id)
    assert (waiting.state, waiting.attempt) == ("queued", 0), waiting
    assert own_redis.queue_length("cpu") == 1, "the waiting job's message is not in the queue"

    cluster.start_worker("second")
    waiting = cluster.wait_finished(waiting_id, timeout=90)["train"]
    assert (waiting.state, waiting.attempt) == ("succeeded", 1), cluster.processes.logs()
    assert cluster.train(running_id).attempt == 1  # not run again by the second worker
    assert cluster.experiment(running_id)["metrics"]["epochs"] == EPOCHS
    assert_one_run_every_epoch_once(cluster, [running_id, waiting_id])
    reliability.record(
        "the worker SIGTERMed mid-training (warm shutdown), a second job queued",
        "the running job trained to its end and was recorded (attempt 1), the worker "
        "exited 0, the queued job stayed queued and ran once on the next worker; "
        "every epoch once in each MLflow run",
        drained,
    )
