"""PostgreSQL stopped just as a job finishes: the worker keeps the result until the job
store takes it; the job never runs again, and its run logs every metric once. Stopped
mid-training: the job resumes from its checkpoint once the job store is back."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Outcome, PostgresServer, assert_one_run_every_epoch_once
from tests.worker.conftest import SLOW_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow

EPOCHS = 4
OUTAGE_S = 15.0  # longer than the heartbeat's staleness: the reaper could take the job
STALE_S = 8.0


def test_postgres_down_as_the_job_finishes_keeps_the_result(
    faulty_cluster: Backend, own_postgres: PostgresServer, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    # Staleness long enough for the last epoch to end while the job store is down (the
    # supervisor stops a job whose heartbeat it cannot write for that long).
    cluster.processes.env["REGBENCH_HEARTBEAT_STALE_S"] = str(STALE_S)
    spec = spec_with(SLOW_SPEC, training={"epochs": EPOCHS})
    experiment_id = cluster.submit(spec)
    cluster.start_worker()
    cluster.start_reconciler()  # its reaper runs as soon as the job store is back
    last_but_one = f"epoch {EPOCHS - 1}/{EPOCHS}"
    cluster.wait(
        lambda: last_but_one in (cluster.train(experiment_id).message or ""), 120, last_but_one
    )
    run_id = cluster.train(experiment_id).mlflow_run_id
    own_postgres.stop()
    stopped = time.monotonic()
    # The job ends meanwhile: the child closes its MLflow run (a local store, up) and
    # reports; the supervisor cannot record the result.
    mlflow = cluster.mlflow()
    cluster.wait(lambda: mlflow.get_run(run_id).info.status == "FINISHED", 30, "the job's end")
    assert time.monotonic() - stopped < STALE_S, "the job ended too late: make epochs shorter"
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
    own_postgres.start()
    restarted = time.monotonic()
    train = cluster.wait_finished(experiment_id, timeout=90)["train"]
    recovered = time.monotonic() - restarted

    assert (train.state, train.attempt) == ("succeeded", 1), train
    assert "resumed" not in (train.message or "")
    assert cluster.experiment(experiment_id)["metrics"]["epochs"] == EPOCHS
    time.sleep(2)  # a re-run, had one been started, would show now
    assert cluster.train(experiment_id).attempt == 1
    assert_one_run_every_epoch_once(cluster, [experiment_id])
    assert "keeping its result" in cluster.processes.log("worker")
    reliability.record(
        f"PostgreSQL stopped for {OUTAGE_S:.0f} s as a job finished",
        "result kept by the worker and recorded when PostgreSQL returned; not re-run; "
        "every epoch once in its MLflow run",
        recovered,
    )


def test_postgres_down_mid_training_resumes_from_the_checkpoint(
    faulty_cluster: Backend, own_postgres: PostgresServer, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    epochs = 30  # far from done when the supervisor gives the job up (3 s without a beat)
    experiment_id = cluster.submit(spec_with(SLOW_SPEC, training={"epochs": epochs}))
    cluster.start_worker()
    cluster.start_reconciler()
    cluster.wait(lambda: "epoch 1/" in (cluster.train(experiment_id).message or ""), 120,
                 "epoch 1")  # fmt: skip
    own_postgres.stop()
    time.sleep(OUTAGE_S)  # past the heartbeat's staleness: the worker stops the job
    own_postgres.start()
    restarted = time.monotonic()
    train = cluster.wait_finished(experiment_id, timeout=120)["train"]
    recovered = time.monotonic() - restarted

    assert (train.state, train.attempt) == ("succeeded", 2), f"{train}\n{cluster.processes.logs()}"
    assert "resumed from epoch" in (train.message or ""), train.message
    assert cluster.experiment(experiment_id)["metrics"]["epochs"] == epochs
    assert_one_run_every_epoch_once(cluster, [experiment_id])
    reliability.record(
        f"PostgreSQL stopped for {OUTAGE_S:.0f} s mid-training",
        "job stopped when its heartbeat went stale, requeued by the reaper when "
        "PostgreSQL returned, resumed from its checkpoint (attempt 2); "
        "every epoch once in its MLflow run",
        recovered,
    )
