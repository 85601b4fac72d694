"""The Celery app of the workers: ``celery -A worker.app worker -Q cpu`` (or ``regbench worker``).

Its configuration is ``service.broker.make_celery`` (acks_late, reject_on_worker_lost,
prefetch 1, visibility timeout, time limit); the one task lives in ``worker.tasks``.
A small bootstep refuses to start on an outdated job store and keeps this worker's
row in the ``workers`` table fresh (queues, device) for ``GET /api/v1/queue``.

Nothing here imports torch: the pool processes fork from this one, and the jobs run in
fresh child processes (``worker.child``), so CUDA is never initialised before a fork.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import bootsteps
from sqlalchemy.exc import SQLAlchemyError

from service import jobstore
from service.broker import make_celery
from service.db import Database
from service.redact import install_log_redaction
from service.schema import assert_schema_current
from service.settings import Settings

log = logging.getLogger(__name__)

settings = Settings()
install_log_redaction(settings.secrets)  # Celery's and our log lines never show them
app = make_celery(settings)
app.conf.imports = ("worker.tasks",)


def device_label() -> str:
    """``cuda:<physical index>`` for a worker pinned to GPUs, else ``cpu``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible or visible == "-1":
        return "cpu"
    return f"cuda:{visible}"


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Checks the schema at start-up, then records this worker as alive every heartbeat."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.tref: Any = None
        self.db: Database | None = None

    def start(self, worker: Any) -> None:
        self.db = Database(settings.job_store_url)
        assert_schema_current(self.db.engine)  # refuse to serve an outdated job store
        self.db.engine.dispose()
        self.beat(worker)
        self.tref = worker.timer.call_repeatedly(
            settings.heartbeat_interval_s, self.beat, (worker,), priority=10
        )

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.db is not None:
            self.db.dispose()

    def beat(self, worker: Any) -> None:
        if self.db is None:
            return
        queues = ",".join(sorted(worker.app.amqp.queues.consume_from))
        try:
            with self.db.session() as session:
                jobstore.worker_heartbeat(
                    session,
                    worker.hostname,
                    socket.gethostname(),
                    queues,
                    device_label(),
                    slots=worker.concurrency or 1,
                )
                session.commit()
        except SQLAlchemyError as exc:  # the job store is down: the worker keeps serving
            log.warning("worker heartbeat failed: %s", exc)
        finally:
            # No connection stays open between beats: pool processes forked later must
            # not inherit (and later close) a socket this process still uses.
            self.db.engine.dispose()


app.steps["worker"].add(WorkerHeartbeat)
