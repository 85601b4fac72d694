"""Cancel: a running job's process stops within 10 s; a queued job never runs."""

from __future__ import annotations

import time

import pytest

from tests.worker.conftest import FAST_SPEC, SLOW_SPEC, Backend, alive, spec_with

pytestmark = pytest.mark.slow

CANCEL_WITHIN_S = 10.0


def test_cancel_stops_a_running_job_and_a_queued_one_never_runs(backend: Backend) -> None:
    queued = backend.submit(spec_with(FAST_SPEC, analyses=[{"kind": "calibration"}]))
    backend.cancel(queued)  # no worker runs yet: cancelled at once, but still in the broker
    running = backend.submit(spec_with(SLOW_SPEC, training={"epochs": 500}))
    backend.start_worker()

    backend.wait(lambda: backend.train(running).progress > 0, 90, "the long job to train")
    child = backend.job_child()
    assert child is not None, "no job process under the worker"
    requested = time.monotonic()
    backend.cancel(running)
    backend.wait(
        lambda: backend.train(running).state == "cancelled" and not alive(child),
        CANCEL_WITHIN_S,
        "the cancelled job's process to stop",
        every=0.05,
    )
    stopped_after = time.monotonic() - requested
    train = backend.train(running)
    assert train.attempt == 1 and train.error is None
    assert stopped_after < CANCEL_WITHIN_S
    client = backend.mlflow()
    backend.wait(
        lambda: client.get_run(train.mlflow_run_id).info.status == "KILLED",
        30,
        "the MLflow run to be marked KILLED",
    )

    # The queued experiment's message came first; the worker took it, claimed nothing.
    for job in backend.jobs(queued).values():
        assert (job.state, job.attempt, job.started_at) == ("cancelled", 0, None)
    train_id = backend.train(queued).id
    assert f"job {train_id}: nothing to claim" in backend.processes.log("worker")
