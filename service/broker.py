"""The Celery app's configuration and the one way jobs are sent to the broker.

The API and the reconciler only send job ids by task name (``RUN_JOB_TASK``); the
worker package registers the task under that name. Nothing here imports the worker.

Configuration follows DESIGN.md's rules: acks_late with reject_on_worker_lost (a job
whose worker died is redelivered), prefetch 1, a visibility timeout longer than the
longest job, a hard time limit per job. The embedded default uses kombu's SQLAlchemy
transport on SQLite, polled every ``broker_poll_interval_s`` (kombu's 1 s default
makes dispatch slow).

Many jobs at once (a sweep) go through ``enqueue_many``: one producer, kombu's publish
batches (``Producer.batch``): a Redis pipeline, and on the SQLite transport one commit per
batch instead of one commit (and one fsync) per message. The first job of each queue goes
through Celery's ``send_task`` (which declares the queue, with the retry policy); the
message Celery published for it is the template of the others, which differ from it only
in their task id (headers ``id``, ``root_id``, ``argsrepr``, the ``correlation_id``) and
their argument, and are published with kombu's ``Producer.publish`` as Celery publishes
them (protocol 2): Celery's per-message routing, option merging and signals cost more than
the publishing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Producer
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from kombu.utils.uuid import uuid
from sqlalchemy import Engine, create_engine, insert

from service.settings import Settings

RUN_JOB_TASK = "regbench.run_job"
BATCH_SIZE = 500  # messages per publish batch: one Redis pipeline, one SQLite commit
# kombu's retry policy takes no timeout: connecting is bounded by broker_connection_timeout,
# publishing by the publish timeout.
RETRY_POLICY = {"max_retries": 1, "interval_start": 0}
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

    def create_publish_batch(self, max_size: int) -> _SQLitePublishBatch:
        """kombu's hook for ``Producer.batch()`` (as its Redis transport has)."""
        return _SQLitePublishBatch(self, max_size)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        batch = kwargs.pop("_publish_batch", None)
        if batch is None:
            super()._put(queue, payload, **kwargs)
        else:
            batch.add(queue, payload)


class _SQLitePublishBatch:
    """A publish batch on the SQLite transport: its messages are inserted together and
    committed once at ``flush`` (kombu adds and commits each message on its own). The rows
    are the ones kombu writes: visible, version 1, no timestamp (read in id order)."""

    def __init__(self, channel: _SQLiteChannel, max_size: int) -> None:
        self.channel = channel
        self.max_size = max_size
        self._rows: list[dict[str, Any]] = []
        self._queue_ids: dict[str, int] = {}  # queue name -> its kombu_queue id, looked up once

    def publish(self, message: dict[str, Any], **kwargs: Any) -> None:
        self.channel.basic_publish(message, _publish_batch=self, **kwargs)
        if len(self._rows) >= self.max_size:
            self.flush()

    def add(self, queue: str, payload: Any) -> None:
        """One message routed to ``queue`` (the channel's ``_put``)."""
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            queue_id = self._queue_ids[queue] = self.channel._get_or_create(queue).id
        row = {"payload": kombu_sqlalchemy.dumps(payload), "queue_id": queue_id}
        self._rows.append(row | {"visible": True, "version": 1})

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        session = self.channel.session
        try:
            session.execute(insert(self.channel.message_cls.__table__), rows)
            session.commit()
        except Exception:
            session.rollback()
            raise

    def discard(self) -> None:
        self._rows = []

    def close(self) -> None:
        """Nothing to release: the session is the channel's."""


class SQLiteTransport(kombu_sqlalchemy.Transport):
    """``sqla+sqlite://`` that honours ``polling_interval`` (same tables, same messages)
    and publishes batches in one commit."""

    Channel = _SQLiteChannel
    implements = kombu_sqlalchemy.Transport.implements.extend(batch_publish=True)


TRANSPORT_ALIASES[SQLITE_TRANSPORT] = f"{__name__}:SQLiteTransport"


class BrokerUnavailableError(RuntimeError):
    """The broker did not answer within the configured timeout. ``sent``: the job ids it
    did take before that (``enqueue_many``)."""

    def __init__(self, message: str, sent: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.sent = list(sent)


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
            retry_policy=RETRY_POLICY,
            timeout=timeout_s,
        )
    except Exception as exc:  # kombu raises OperationalError, socket errors, timeouts...
        raise BrokerUnavailableError(f"broker unavailable: {exc}") from exc


def enqueue_many(app: Celery, jobs: Sequence[tuple[str, str]], timeout_s: float) -> list[str]:
    """Send ``(job id, queue)`` pairs through one producer, ``BATCH_SIZE`` messages per
    publish batch; returns the ids sent. Raises BrokerUnavailableError, whose ``sent``
    lists the batches the broker took, when it does not answer. A batch that failed may
    have been taken in part: its jobs count as not sent, and the reconciler's second
    delivery is harmless (a worker's claim is atomic)."""
    sent: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            templates: dict[str, _Published] = {}  # queue -> the message of its first job
            for start in range(0, len(jobs), BATCH_SIZE):
                batch = jobs[start : start + BATCH_SIZE]
                with producer.batch(max_size=BATCH_SIZE):
                    for job_id, queue in batch:
                        template = templates.get(queue)
                        if template is None or app.conf.task_send_sent_event:
                            templates[queue] = _send_first(app, producer, job_id, queue, timeout_s)
                        else:  # joins the batch, which is sent or fails as a whole
                            body, options = template.for_job(job_id)
                            producer.publish(body, **options)
                sent += [job_id for job_id, _ in batch]
    except Exception as exc:  # as in enqueue, plus kombu's BatchPublishError
        raise BrokerUnavailableError(f"broker unavailable: {exc}", sent) from exc
    return sent


def _send_first(
    app: Celery, producer: Producer, job_id: str, queue: str, timeout_s: float
) -> _Published:
    """The first message to a queue, through Celery: it declares the queue, with the retry
    policy (where a dead pooled connection is replaced, as in enqueue). Returns what Celery
    published, the template of the queue's other messages."""
    recorder = _RecordingProducer(producer)
    app.send_task(
        RUN_JOB_TASK,
        args=[job_id],
        queue=queue,
        producer=recorder,
        retry=True,
        retry_policy=RETRY_POLICY,
        timeout=timeout_s,
    )
    assert recorder.published is not None, "send_task published nothing"
    return recorder.published


@dataclass(frozen=True)
class _Published:
    """A task message as Celery handed it to ``Producer.publish``: the body ``(args,
    kwargs, embed)`` and the publish arguments (headers and properties among them)."""

    body: tuple[Any, ...]
    options: dict[str, Any]

    def for_job(self, job_id: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``Producer.publish``'s arguments for the same task message for another job: a
        new task id wherever Celery writes it, the job's id as the argument; no declaring
        (the queue is), no retrying (the batch is sent or fails as a whole)."""
        _args, kwargs, embed = self.body
        task_id = uuid()
        headers = self.options["headers"] | {
            "id": task_id,
            "root_id": task_id,  # a task sent outside a task is its own root
            "argsrepr": repr([job_id]),  # what Celery's saferepr writes for it
        }
        options = self.options | {
            "headers": headers,
            "correlation_id": task_id,
            "declare": [],
            "retry": False,
        }
        return ([job_id], kwargs, embed), options


class _RecordingProducer:
    """A producer for one ``send_task``: publishes through the real one and keeps what it
    was given to publish."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self.published: _Published | None = None

    def publish(self, body: tuple[Any, ...], **options: Any) -> Any:
        self.published = _Published(body, dict(options, headers=dict(options["headers"])))
        return self._producer.publish(body, **options)

    def __getattr__(self, name: str) -> Any:  # connection, channel, ...: the real producer's
        return getattr(self._producer, name)
