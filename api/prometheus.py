"""Prometheus metrics of the job store, read when Prometheus scrapes.

The API processes keep no state and the workers run on other machines, so every number
comes from the database at scrape time: ``JobStoreCollector`` runs a few aggregate
queries in one short session and turns their rows into metric families. Each app has
its own ``CollectorRegistry`` (``metrics_registry``), never the global one, so several
apps in one process (tests, several factories) do not clash.

Metrics (a queue or kind appears once the store has a job of it, so a series never
vanishes when its count drops to zero):

- ``regbench_jobs{queue, state, kind}``: jobs in the store (queue depth: state="queued").
- ``regbench_queue_depth{queue}``: queued jobs a worker could start now (not being
  cancelled, dependency succeeded).
- ``regbench_jobs_running{queue, device}``.
- ``regbench_job_failures_total{kind}``: failed jobs; the store keeps every job, so it
  only grows.
- ``regbench_job_duration_seconds{kind}``: succeeded jobs' last attempt, from
  ``started_at`` to ``finished_at``, bucketed in SQL.
- ``regbench_workers_live{queue}``: workers seen within three heartbeat intervals.
- ``regbench_oldest_queued_job_age_seconds{queue}``: how long the oldest runnable job has
  waited, counted from when it became runnable (its submission, or its dependency's end).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session, aliased

from api.operations import live_workers
from service import jobstore
from service.db import Database
from service.settings import Settings
from service.tables import Job, JobState, Worker, utcnow

# Seconds; from a quick analysis job up to a day-long training.
DURATION_BUCKETS_S: tuple[float, ...] = (
    1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400,
)  # fmt: skip
NO_DEVICE = "unknown"  # label of a running job whose worker named no device


@dataclass(frozen=True)
class Durations:
    count: int
    total_s: float
    at_most: tuple[int, ...]  # cumulative: jobs that took <= each of DURATION_BUCKETS_S


@dataclass
class Snapshot:
    """What one scrape read from the store."""

    jobs: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (queue, kind, state)
    runnable: dict[str, int] = field(default_factory=dict)  # queue -> jobs
    ready_since: dict[str, datetime] = field(default_factory=dict)  # queue -> oldest
    running: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, device)
    durations: dict[str, Durations] = field(default_factory=dict)  # kind
    workers_live: dict[str, int] = field(default_factory=dict)  # queue
    queues: set[str] = field(default_factory=set)  # every queue known to the store
    now: datetime = field(default_factory=utcnow)


# --------------------------------------------------------------------------- reading


def read_snapshot(session: Session, settings: Settings) -> Snapshot:
    snapshot = Snapshot(now=utcnow())
    counted = session.execute(
        select(Job.queue, Job.kind, Job.state, func.count()).group_by(
            Job.queue, Job.kind, Job.state
        )
    )
    snapshot.jobs = {(queue, kind, state): count for queue, kind, state, count in counted}

    parent = aliased(Job)
    # A dependent job is runnable from its dependency's end (or its own submission, if
    # added to a finished experiment), not from when it was created.
    became_runnable = case(
        (parent.finished_at > Job.created_at, parent.finished_at), else_=Job.created_at
    )
    runnable = session.execute(
        select(Job.queue, func.count(), func.min(became_runnable))
        .outerjoin(parent, parent.id == Job.depends_on)
        .where(
            Job.state == JobState.QUEUED,
            Job.cancel_requested.is_(False),
            or_(Job.depends_on.is_(None), parent.state == JobState.SUCCEEDED),
        )
        .group_by(Job.queue)
    )
    for queue, count, oldest in runnable:
        snapshot.runnable[queue] = count
        snapshot.ready_since[queue] = _utc(oldest)

    running = session.execute(
        select(Job.queue, Job.device, func.count())
        .where(Job.state == JobState.RUNNING)
        .group_by(Job.queue, Job.device)
    )
    snapshot.running = {(queue, device or NO_DEVICE): count for queue, device, count in running}
    snapshot.durations = _durations(session)

    live: dict[str, int] = defaultdict(int)
    for worker in live_workers(session, settings):
        for queue in _queues(worker.queues):
            live[queue] += 1
    snapshot.workers_live = dict(live)
    # Queues of workers long gone count too: zero live workers is what an alert wants.
    worker_queues = {
        q for qs in session.scalars(select(Worker.queues).distinct()) for q in _queues(qs)
    }
    snapshot.queues = (
        {settings.default_queue} | {queue for queue, _, _ in snapshot.jobs} | worker_queues
    )
    return snapshot


def _durations(session: Session) -> dict[str, Durations]:
    """Bucket counts and sums per kind in one aggregate query, so a scrape never loads
    the (ever growing) list of finished jobs."""
    seconds = jobstore.seconds_between(session, Job.started_at, Job.finished_at).label("seconds")
    finished = (
        select(Job.kind, seconds)
        .where(
            Job.state == JobState.SUCCEEDED,
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .subquery()
    )
    at_most = [func.count(case((finished.c.seconds <= le, 1))) for le in DURATION_BUCKETS_S]
    rows = session.execute(
        select(
            finished.c.kind,
            func.count(),
            func.coalesce(func.sum(finished.c.seconds), 0.0),
            *at_most,
        ).group_by(finished.c.kind)
    )
    return {
        kind: Durations(count, float(total), tuple(buckets))
        for kind, count, total, *buckets in rows
    }


def _queues(listed: str) -> list[str]:
    return [queue.strip() for queue in listed.split(",") if queue.strip()]


def _utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive; they are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------- families


def families(snapshot: Snapshot) -> list[Metric]:
    queues = sorted(snapshot.queues)
    pairs = sorted({(queue, kind) for queue, kind, _ in snapshot.jobs})
    kinds = sorted({kind for _, kind in pairs})
    states = [*JobState, *sorted({s for *_, s in snapshot.jobs} - set(JobState))]

    jobs = GaugeMetricFamily(
        "regbench_jobs",
        "Jobs in the job store by queue, state and kind.",
        labels=["queue", "state", "kind"],
    )
    for queue, kind in pairs:
        for state in states:
            jobs.add_metric([queue, str(state), kind], snapshot.jobs.get((queue, kind, state), 0))

    depth = GaugeMetricFamily(
        "regbench_queue_depth",
        "Queued jobs a worker could start now (dependency succeeded, not being cancelled).",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "regbench_oldest_queued_job_age_seconds",
        "How long the oldest runnable queued job has waited since it became runnable.",
        labels=["queue"],
    )
    live = GaugeMetricFamily(
        "regbench_workers_live",
        "Workers serving the queue, seen within three heartbeat intervals.",
        labels=["queue"],
    )
    for queue in queues:
        depth.add_metric([queue], snapshot.runnable.get(queue, 0))
        since = snapshot.ready_since.get(queue)
        age = 0.0 if since is None else (snapshot.now - since).total_seconds()
        oldest.add_metric([queue], max(age, 0.0))  # clocks of other machines may run ahead
        live.add_metric([queue], snapshot.workers_live.get(queue, 0))

    running = GaugeMetricFamily(
        "regbench_jobs_running", "Running jobs by queue and device.", labels=["queue", "device"]
    )
    for (queue, device), count in sorted(snapshot.running.items()):
        running.add_metric([queue, device], count)

    failures = CounterMetricFamily(
        "regbench_job_failures",
        "Jobs that failed (the store keeps every job, so this only grows).",
        labels=["kind"],
    )
    durations = HistogramMetricFamily(
        "regbench_job_duration_seconds",
        "Run time of succeeded jobs (their last attempt), from start to finish.",
        labels=["kind"],
    )
    for kind in kinds:
        failed = sum(n for (_, k, s), n in snapshot.jobs.items() if k == kind and s == "failed")
        failures.add_metric([kind], failed)
        measured = snapshot.durations.get(kind, Durations(0, 0.0, (0,) * len(DURATION_BUCKETS_S)))
        durations.add_metric([kind], _buckets(measured), measured.total_s)

    return [jobs, depth, running, failures, durations, live, oldest]


def _buckets(durations: Durations) -> Sequence[tuple[str, float]]:
    bounds = [str(float(le)) for le in DURATION_BUCKETS_S]
    return [*zip(bounds, durations.at_most, strict=True), ("+Inf", durations.count)]


# --------------------------------------------------------------------------- the collector


class JobStoreCollector(Collector):
    """Reads the store on every ``collect``; ``database`` is called then, so the collector
    follows the app's current ``Database``. A store that does not answer raises
    sqlalchemy's ``OperationalError``, which the app turns into 503."""

    def __init__(self, database: Callable[[], Database], settings: Settings) -> None:
        self._database = database
        self._settings = settings

    def describe(self) -> Iterable[Metric]:
        return families(Snapshot())  # the names only: registering reads no database

    def collect(self) -> Iterable[Metric]:
        with self._database().session() as session:
            if session.get_bind().dialect.name == "postgresql":
                # One snapshot for every query, so depth never exceeds the queued count.
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            snapshot = read_snapshot(session, self._settings)
        return families(snapshot)


def metrics_registry(database: Callable[[], Database], settings: Settings) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(JobStoreCollector(database, settings))
    return registry
