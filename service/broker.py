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
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import Engine, create_engine

from service.settings import Settings

RUN_JOB_TASK = "regbench.run_job"
SQLITE_TRANSPORT = "regbench-sqla"  # kombu's SQLAlchemy transport, minus one bug (below)

# kombu's SQLAlchemy channel hands every transport option to create_engine, which rejects
# the transport's own polling_interval (and Redis' visibility_timeout): keep those out.
_NOT_ENGINE_OPTIONS = frozenset(
    {
        "queue_tablename", "message_tablename", "callback", "errback", "max_retries",
        "interval_start", "interval_step", "interval_max", "retry_errors",
        "polling_interval", "visibility_timeout",
    }
)  # fmt: skip


class _SQLiteChannel(kombu_sqlalchemy.Channel):
    def _engine_from_config(self) -> Engine:
        conninfo = self.connection.client
        options = {
            key: value
            for key, value in conninfo.transport_options.items()
            if key not in _NOT_ENGINE_OPTIONS
        }
        return create_engine(conninfo.hostname, **options)


class SQLiteTransport(kombu_sqlalchemy.Transport):
    """``sqla+sqlite://`` that honours ``polling_interval`` (same tables, same messages)."""

    Channel = _SQLiteChannel


TRANSPORT_ALIASES[SQLITE_TRANSPORT] = f"{__name__}:SQLiteTransport"


class BrokerUnavailableError(RuntimeError):
    """The broker did not answer within the configured timeout."""


def make_celery(settings: Settings) -> Celery:
    url = settings.celery_broker_url
    transport_options: dict[str, float | int] = {
        "visibility_timeout": settings.visibility_timeout_s
    }
    if url.startswith("sqla+"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        transport_options["polling_interval"] = settings.broker_poll_interval_s
        url = f"{SQLITE_TRANSPORT}+{url.removeprefix('sqla+')}"
    app = Celery("regbench", broker=url)
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
            # kombu's retry policy takes no timeout: connecting is bounded by
            # broker_connection_timeout, publishing by the publish timeout.
            retry_policy={"max_retries": 1, "interval_start": 0},
            timeout=timeout_s,
        )
    except Exception as exc:  # kombu raises OperationalError, socket errors, timeouts...
        raise BrokerUnavailableError(f"broker unavailable: {exc}") from exc


def enqueue_many(app: Celery, jobs: Sequence[tuple[str, str]], timeout_s: float) -> None:
    for job_id, queue in jobs:
        enqueue(app, job_id, queue, timeout_s)
