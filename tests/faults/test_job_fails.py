"""Jobs that fail on their own, on real workers: a diverging loss (NaN) and a job over
its time limit each fail once, with the reason, not retried; the analysis waiting on the
train job does not run; the one MLflow run ends FAILED with each epoch trained once."""

from __future__ import annotations

import re
import time

import pytest

from tests.faults.conftest import Outcome, assert_one_run_epochs_once
from tests.worker.conftest import FAST_SPEC, SLOW_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow

TIME_LIMIT_S = 6  # a few epochs of a warm job process


def wait_warm(cluster: Backend) -> None:
    """Until the worker's job process has imported its libraries (seconds on a busy
    machine), so that what is timed is the job."""
    cluster.wait(lambda: "warm in" in cluster.processes.log("worker"), 60, "a warm job process")


def test_a_diverging_job_fails_naming_epoch_and_step(
    faulty_cluster: Backend, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    spec = spec_with(FAST_SPEC, training={"lr": 1e12}, analyses=[{"kind": "calibration"}])
    cluster.start_worker()
    wait_warm(cluster)
    experiment_id = cluster.submit(spec)
    started = time.monotonic()
    jobs = cluster.wait_finished(experiment_id)
    failed_after = time.monotonic() - started
    train = jobs["train"]

    assert (train.state, train.attempt) == ("failed", 1), f"{train}\n{cluster.processes.logs()}"
    assert re.search(r"training diverged: loss is (nan|inf).* at epoch 1, step \d+", train.error)
    assert jobs["calibration"].state in ("failed", "cancelled"), jobs["calibration"]
    time.sleep(1)  # a retry, had one been sent, would have claimed it by now
    assert cluster.train(experiment_id).attempt == 1
    assert_one_run_epochs_once(cluster, experiment_id, "FAILED")
    reliability.record(
        "a diverging job (learning rate 1e12: NaN loss in epoch 1)",
        "failed at once, not retried, with the reason, epoch and step; its analysis "
        f"{jobs['calibration'].state}; one MLflow run, FAILED",
        failed_after,
    )


def test_a_job_over_its_time_limit_fails_with_the_reason(
    faulty_cluster: Backend, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    cluster.processes.env["REGBENCH_JOB_TIME_LIMIT_S"] = str(TIME_LIMIT_S)
    spec = spec_with(SLOW_SPEC, training={"epochs": 500}, analyses=[{"kind": "calibration"}])
    cluster.start_worker()
    wait_warm(cluster)  # the limit counts from the claim: a few epochs, then the stop
    experiment_id = cluster.submit(spec)
    cluster.wait(lambda: cluster.train(experiment_id).state == "running", 60, "the job to start")
    started = time.monotonic()
    jobs = cluster.wait_finished(experiment_id, timeout=60)
    stopped_after = time.monotonic() - started
    train = jobs["train"]

    assert (train.state, train.attempt) == ("failed", 1), f"{train}\n{cluster.processes.logs()}"
    assert f"time limit of {TIME_LIMIT_S} s exceeded" in train.error, train.error
    assert stopped_after < TIME_LIMIT_S + 15, f"stopped {stopped_after:.0f} s after its start"
    assert jobs["calibration"].state in ("failed", "cancelled"), jobs["calibration"]
    time.sleep(1)  # a retry, had one been sent, would have claimed it by now
    assert cluster.train(experiment_id).attempt == 1
    epochs = assert_one_run_epochs_once(cluster, experiment_id, "FAILED")
    assert len(epochs) < 500, epochs  # how many fit in the limit depends on the load
    reliability.record(
        f"a job over its time limit ({TIME_LIMIT_S} s, 500 epochs asked)",
        f"stopped and failed with the reason after {len(epochs)} epochs, not retried; its "
        f"analysis {jobs['calibration'].state}; one MLflow run, FAILED",
        stopped_after,
    )
