"""Nothing is lost: jobs a flushed Redis lost are sent again by ``regbench reconcile
--once``. The cluster path: PostgreSQL and Redis. (A killed worker's job resuming
elsewhere: tests/faults/test_worker_killed.py.)"""

from __future__ import annotations

import sys

import pytest
import redis

from tests.worker.conftest import FAST_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow


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
