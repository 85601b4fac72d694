"""The Celery app's configuration and the one way jobs are sent to the broker.

The API and the reconciler only send job ids by task name (``RUN_JOB_TASK``); the
worker package registers the task under that name. Nothing here imports the worker.

Configuration follows DESIGN.md's rules: acks_late with reject_on_worker_lost (a job
whose worker died is redelivered), prefetch 1, a visibility timeout longer than the
longest job, a hard time limit per job. The embedded default uses kombu's SQLAlchemy
transport on SQLite, polled every ``broker_poll_interval_s`` (kombu's 1 s default
makes dispatch slow).
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from service.settings import Settings

RUN_JOB_TASK = "regbench.run_job"


class BrokerUnavailableError(RuntimeError):
    """The broker did not answer within the configured timeout."""


def make_celery(settings: Settings) -> Celery:
    app = Celery("regbench", broker=settings.celery_broker_url)
    transport_options: dict[str, float | int] = {
        "visibility_timeout": settings.visibility_timeout_s
    }
    if settings.celery_broker_url.startswith("sqla+"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        transport_options["polling_interval"] = settings.broker_poll_interval_s
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.job_time_limit_s,
        broker_transport_options=transport_options,
        broker_connection_timeout=settings.broker_timeout_s,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,  # results live in the job store and MLflow
        worker_hijack_root_logger=False,
        task_default_queue="cpu",
    )
    return app


def enqueue(app: Celery, job_id: str, queue: str, timeout_s: float) -> None:
    """Send one job id; raises BrokerUnavailableError when the broker does not answer.

    Blocking: the API calls it in a worker thread, never on the event loop.
    """
    try:
        app.send_task(
            RUN_JOB_TASK,
            args=[job_id],
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "timeout": timeout_s},
        )
    except Exception as exc:  # kombu raises OperationalError, socket errors, timeouts...
        raise BrokerUnavailableError(f"broker unavailable: {exc}") from exc


def enqueue_many(app: Celery, jobs: Sequence[tuple[str, str]], timeout_s: float) -> None:
    for job_id, queue in jobs:
        enqueue(app, job_id, queue, timeout_s)
