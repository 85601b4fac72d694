"""The one task: ``run_job(job_id)``, sent by name (``service.broker.RUN_JOB_TASK``).

It takes an id, not an object, and everything it needs comes from the job store when
it runs (``worker.supervisor``). Acknowledgement is late (a job whose worker died is
delivered again); a duplicate delivery claims nothing and is acknowledged at once. A
job store that is briefly unreachable is retried with back-off by Celery itself.
"""

from __future__ import annotations

import os
import socket

from celery import Task
from sqlalchemy.exc import InterfaceError, OperationalError

from service.broker import RUN_JOB_TASK, enqueue
from worker.app import app, device_label, settings
from worker.supervisor import STOP_GRACE_S, supervise_job

# Celery's hard limit is a backstop behind the supervisor's own (which stops the child
# cleanly and records the failure): it kills the pool process, and the child with it.
TIME_LIMIT_MARGIN_S = 60


@app.task(
    name=RUN_JOB_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=5,
    time_limit=settings.job_time_limit_s + STOP_GRACE_S + TIME_LIMIT_MARGIN_S,
)
def run_job(self: Task, job_id: str) -> str:
    """Claim job ``job_id`` and run it in a supervised child process; returns its state."""
    node = self.request.hostname or socket.gethostname()
    return supervise_job(
        job_id,
        settings=settings,
        worker=f"{node}:{os.getpid()}",
        device=device_label(),
        enqueue=lambda dependent, queue: enqueue(
            self.app, dependent, queue, settings.broker_timeout_s
        ),
    )
