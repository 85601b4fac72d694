"""The worker SIGKILLed mid-training (its whole process group, job child included): the
reconciler's reaper requeues the job once its heartbeat is stale, another worker resumes
it from its last checkpoint into the same MLflow run, and it ends with the numbers of an
uninterrupted run."""

from __future__ import annotations

import re
import time

import pytest

from tests.faults.conftest import Outcome, assert_one_run_every_epoch_once
from tests.worker.conftest import SLOW_SPEC, Backend, alive

pytestmark = pytest.mark.slow


def test_a_killed_worker_s_job_resumes_from_its_checkpoint_with_one_run(
    faulty_cluster: Backend, reliability: Outcome
) -> None:
    cluster = faulty_cluster
    epochs = SLOW_SPEC["training"]["epochs"]
    experiment_id = cluster.submit(SLOW_SPEC)
    cluster.start_worker("first")
    cluster.wait(lambda: cluster.train(experiment_id).progress >= 2 / epochs, 90, "epoch 2")
    child = cluster.job_child("first")
    assert child is not None, "no job process under the first worker"
    cluster.processes.kill("first")  # SIGKILL to the worker's whole process group
    killed_at = time.monotonic()
    cluster.wait(lambda: not alive(child), 5, "the orphaned job process to die with its worker")
    killed = cluster.train(experiment_id)
    assert killed.state == "running", (
        f"training ended before the kill: make epochs slower\n{killed}"
    )
    assert killed.attempt == 1

    cluster.start_worker("second")
    cluster.start_reconciler()  # its reaper requeues the job once its heartbeat is stale
    cluster.wait(lambda: cluster.train(experiment_id).attempt == 2, 60, "the second attempt")
    recovered = time.monotonic() - killed_at
    train = cluster.wait_finished(experiment_id, timeout=120)["train"]
    assert train.state == "succeeded", f"{train}\n{cluster.processes.logs()}"
    assert train.attempt == 2 and train.worker.startswith("cpu@")
    resumed = re.search(r"resumed from epoch (\d+)", train.message or "")
    assert resumed is not None, train.message
    assert 2 <= int(resumed.group(1)) <= epochs
    metrics = cluster.experiment(experiment_id)["metrics"]
    assert metrics["epochs"] == epochs
    assert_one_run_every_epoch_once(cluster, [experiment_id])  # one run, reopened
    run = cluster.mlflow().get_run(train.mlflow_run_id)
    assert run.data.tags["regbench.resumed_from_epoch"] == resumed.group(1)

    # The same spec, never interrupted, ends with exactly the same numbers.
    reference_id = cluster.submit(SLOW_SPEC, force=True)
    reference = cluster.wait_finished(reference_id, timeout=120)["train"]
    assert (reference.state, reference.attempt) == ("succeeded", 1)
    assert "resumed" not in (reference.message or "")
    expected = cluster.experiment(reference_id)["metrics"]
    for key in ("test_accuracy", "test_loss", "train_loss", "val_loss"):
        assert metrics[key] == expected[key], key
    assert_one_run_every_epoch_once(cluster, [experiment_id, reference_id])
    reliability.record(
        "the worker SIGKILLed mid-training (its process group, job child included)",
        f"requeued by the reaper once its heartbeat was stale, resumed from epoch "
        f"{resumed.group(1)} on another worker (attempt 2); succeeded with the numbers of "
        "an uninterrupted run; every epoch once in its one MLflow run",
        recovered,
    )
