"""Redis flushed, or killed and restarted without persistence, with jobs queued: the
reconciler notices the loss and sends them again in its next round, not after its
grace period (300 s by default)."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Outcome, RedisServer, assert_one_run_every_epoch_once
from tests.worker.conftest import FAST_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow

RESENT_WITHIN_S = 60.0  # the promise: lost messages are sent again within a minute


@pytest.mark.parametrize("fault", ["flushed", "restarted"])
def test_messages_lost_by_redis_are_sent_again_within_a_minute(
    faulty_cluster: Backend, own_redis: RedisServer, reliability: Outcome, fault: str
) -> None:
    cluster = faulty_cluster
    # The reconciler as deployed (its default grace), checking often for a short test.
    cluster.start_reconciler(interval=1.0, grace=300)
    experiments = [cluster.submit(spec_with(FAST_SPEC, training={"seed": s})) for s in (1, 2)]
    cluster.wait(lambda: "reconciling every" in cluster.processes.log("reconciler"), 60,
                 "the reconciler to start")  # fmt: skip
    time.sleep(2)  # a round or two with the messages in Redis
    assert own_redis.queue_length("cpu") == len(experiments)  # nothing sent twice so far
    if fault == "flushed":
        own_redis.flush()
    else:
        own_redis.kill()
        time.sleep(2)  # a round with the broker down
        own_redis.start()
    returned = time.monotonic()

    def queued_again() -> bool:
        return own_redis.queue_length("cpu") >= len(experiments)

    cluster.wait(queued_again, RESENT_WITHIN_S, "the lost messages to be sent again")
    resent = time.monotonic() - returned
    cluster.start_worker()
    for experiment_id in experiments:
        train = cluster.wait_finished(experiment_id, timeout=90)["train"]
        assert (train.state, train.attempt) == ("succeeded", 1), cluster.processes.logs()
    assert_one_run_every_epoch_once(cluster, experiments)
    reliability.record(
        f"Redis {'flushed' if fault == 'flushed' else 'killed and restarted empty'} "
        "with 2 jobs queued",
        "the reconciler saw its mark gone and sent both jobs again; both succeeded once",
        resent,
    )
