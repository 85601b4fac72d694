"""Nothing is lost: a killed worker's job resumes elsewhere; jobs a flushed Redis lost
are sent again. The cluster path: PostgreSQL and Redis."""

from __future__ import annotations

import re
import sys

import pytest
import redis

from tests.worker.conftest import FAST_SPEC, SLOW_SPEC, Backend, alive, spec_with

pytestmark = pytest.mark.slow


def test_killed_worker_job_resumes_from_its_checkpoint_with_one_run(cluster: Backend) -> None:
    epochs = SLOW_SPEC["training"]["epochs"]
    experiment_id = cluster.submit(SLOW_SPEC)
    cluster.start_worker("first")
    cluster.wait(lambda: cluster.train(experiment_id).progress >= 2 / epochs, 90, "epoch 2")
    child = cluster.job_child("first")
    assert child is not None, "no job process under the first worker"
    cluster.processes.kill("first")  # SIGKILL to the worker's whole process group
    cluster.wait(lambda: not alive(child), 5, "the orphaned job process to die with its worker")
    killed = cluster.train(experiment_id)
    assert killed.state == "running", (
        f"training ended before the kill: make epochs slower\n{killed}"
    )
    assert killed.attempt == 1

    cluster.start_worker("second")
    cluster.start_reconciler()  # its reaper requeues the job once its heartbeat is stale
    train = cluster.wait_finished(experiment_id, timeout=120)["train"]
    assert train.state == "succeeded", f"{train}\n{cluster.processes.logs()}"
    assert train.attempt == 2 and train.worker.startswith("cpu@")
    resumed = re.search(r"resumed from epoch (\d+)", train.message or "")
    assert resumed is not None, train.message
    assert 2 <= int(resumed.group(1)) <= epochs
    metrics = cluster.experiment(experiment_id)["metrics"]

    client = cluster.mlflow()
    mlflow_experiment = client.get_experiment_by_name(cluster.settings.mlflow_experiment)
    runs = client.search_runs([mlflow_experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [train.mlflow_run_id]  # one run, reopened
    assert runs[0].data.tags["regbench.resumed_from_epoch"] == resumed.group(1)
    logged = [m.step for m in client.get_metric_history(train.mlflow_run_id, "train/loss")]
    assert logged == list(range(1, epochs + 1))  # every epoch logged exactly once

    # The same spec, never interrupted, ends with exactly the same numbers.
    reference_id = cluster.submit(SLOW_SPEC, force=True)
    reference = cluster.wait_finished(reference_id, timeout=120)["train"]
    assert reference.state == "succeeded" and reference.attempt == 1
    assert "resumed" not in (reference.message or "")
    expected = cluster.experiment(reference_id)["metrics"]
    for key in ("test_accuracy", "test_loss", "train_loss", "val_loss"):
        assert metrics[key] == expected[key], key


def test_jobs_lost_by_a_flushed_redis_are_enqueued_again(cluster: Backend) -> None:
    experiments = [cluster.submit(spec_with(FAST_SPEC, training={"seed": seed})) for seed in (1, 2)]
    assert cluster.redis_url is not None
    with redis.Redis.from_url(cluster.redis_url) as client:
        assert client.llen("cpu") == 2
        client.flushdb()  # Redis restarted without persistence: the messages are gone

    # `regbench reconcile --once` sends every queued job whose enqueue is older than --grace.
    code = "from service.worker_commands import reconcile; reconcile()"
    done = cluster.processes.start(
        "reconcile-once", [sys.executable, "-c", code, "--once", "--grace", "0"]
    )
    assert done.wait(timeout=60) == 0, cluster.processes.log("reconcile-once")
    assert "enqueued 2 queued jobs" in cluster.processes.log("reconcile-once")

    cluster.start_worker()
    for experiment_id in experiments:
        train = cluster.wait_finished(experiment_id)["train"]
        assert (train.state, train.attempt) == ("succeeded", 1), cluster.processes.logs()
