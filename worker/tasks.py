"""The one task: ``run_job(job_id)``, sent by name (``service.broker.RUN_JOB_TASK``).

It takes an id, not an object, and everything it needs comes from the job store when
it runs (``worker.supervisor``). Acknowledgement is late (a job whose worker died is
delivered again); a duplicate delivery claims nothing and is acknowledged at once. A
job store that is briefly unreachable is retried with back-off by Celery itself.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.exc import InterfaceError, OperationalError

from service.broker import RUN_JOB_TASK, enqueue
from worker.app import app, device_label, settings
from worker.runner import current_slot
from worker.supervisor import STOP_GRACE_S, supervise_job

# Celery's hard limit is a backstop behind the supervisor's own (which stops the child
# cleanly and records the failure): it kills the pool process, and the child with it.
# A train job's task also runs the experiment's analyses (``inline_analyses``), started
# within one job limit: two limits bound the task.
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
    time_limit=2 * (settings.job_time_limit_s + STOP_GRACE_S) + TIME_LIMIT_MARGIN_S,
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


@worker_process_init.connect
def _warm_the_slot(**_kwargs: Any) -> None:
    """Each pool process is a slot: its job process starts warming up now, not when the
    first job arrives; meanwhile a thread here imports what this process needs once a
    job ends (the sweep report's modules, seconds of matplotlib), so that neither the
    first claim nor the first job's end waits for it."""
    current_slot(settings).prewarm()
    threading.Thread(target=_import_report_modules, name="imports", daemon=True).start()


def _import_report_modules() -> None:
    from service import reports, sweeps  # noqa: F401


@worker_process_shutdown.connect
def _stop_the_slot(**_kwargs: Any) -> None:
    current_slot(settings).shutdown()
