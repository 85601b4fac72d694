"""The reconciler and reaper: nothing submitted is ever lost (``regbench reconcile``).

The job store is the truth and the broker only transport. Each round:

1. the reaper: running jobs whose heartbeat stopped (their worker died, their node was
   preempted) go back to queued, or fail once their attempts are used up
   (``jobstore.requeue_stale``);
2. queued jobs the broker may have lost (never enqueued, or enqueued more than
   ``grace_s`` ago and still unclaimed: Redis restarted or flushed, a worker died with
   the message, a dependent whose enqueue failed) are sent again and marked enqueued;
   A Redis broker that lost its messages (flushed, or restarted without persistence) is
   noticed at once: a mark this reconciler keeps in Redis is gone. Then every queued
   job goes again in that round, without waiting for ``grace_s`` (``BrokerWatch``);
3. finished sweeps without a report (cancelled ones, whose last jobs no worker ran, or
   whose last worker died before building it) get theirs (``service.reports``).

Sending a job twice is harmless: claims are atomic, and a duplicate delivery claims
nothing. One reconciler per cluster is enough; more only send more duplicates.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import FrameType

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import jobstore
from service.broker import BrokerUnavailableError, enqueue, make_celery
from service.db import Database
from service.redact import install_log_redaction
from service.settings import Settings
from service.tables import Job, JobState, utcnow

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 30.0
DEFAULT_GRACE_S = 300.0  # a queued job unclaimed this long after its enqueue is sent again
BROKER_MARK_KEY = "regbench:reconciler:mark"  # gone from Redis: its messages are gone too
REDIS_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: queue + sep + priority
REDIS_PRIORITIES = (3, 6, 9)  # kombu's other priority lists (0 is the queue's own name)


class BrokerWatch:
    """Tells when a Redis broker has lost its messages: a mark kept in its database is
    gone (a FLUSHDB/FLUSHALL, or a restart without persistence loses it with them).

    Missing at a later look, every queue lost its messages. Missing at this reconciler's
    first look (it may have just started), the queues whose lists are empty are taken
    as lost (their queued jobs are sent again: a duplicate is harmless), the others not.
    Other brokers keep their messages across a restart: nothing to watch there."""

    def __init__(self, broker_url: str, timeout_s: float) -> None:
        self.client: redis.Redis | None = None
        if broker_url.startswith(("redis://", "rediss://", "unix://")):
            self.client = redis.Redis.from_url(
                broker_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        self.seen = False  # the mark was there (or put there) at an earlier look

    def lost_queues(self, queues: set[str]) -> set[str]:
        """Of ``queues``, those whose messages the broker lost since the last look."""
        if self.client is None:
            return set()
        try:
            if self.client.exists(BROKER_MARK_KEY):
                self.seen = True
                return set()
            if self.seen:
                return set(queues)
            return {queue for queue in queues if self._empty(queue)}
        except redis.RedisError as exc:  # down: the round that finds it back decides
            log.warning("broker not reachable to check for lost messages: %s", exc)
            return set()

    def _empty(self, queue: str) -> bool:
        assert self.client is not None
        names = [queue, *(f"{queue}{REDIS_PRIORITY_SEP}{p}" for p in REDIS_PRIORITIES)]
        return sum(int(self.client.llen(name)) for name in names) == 0

    def mark(self) -> None:
        """Put the mark back (once every lost job was sent again)."""
        if self.client is None:
            return
        try:
            self.client.set(BROKER_MARK_KEY, utcnow().isoformat())
            self.seen = True
        except redis.RedisError as exc:
            log.warning("broker mark not set: %s", exc)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


@dataclass(frozen=True)
class Round:
    requeued: list[str]  # running jobs whose heartbeat stopped, back in the queue
    enqueued: list[str]  # queued jobs sent to the broker (again)
    failed: int = 0  # jobs the broker did not take this round
    reports: list[str] = field(default_factory=list)  # sweeps whose report was built


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        db: Database | None = None,
        app: Celery | None = None,
    ) -> None:
        self.settings = settings
        self.grace_s = grace_s
        self.db = db or Database(settings.job_store_url)
        self.app = app or make_celery(settings)
        self.watch = BrokerWatch(settings.celery_broker_url, settings.broker_timeout_s)

    def run_once(self) -> Round:
        now = utcnow()
        with self.db.session() as session:
            requeued = jobstore.requeue_stale(
                session,
                now - timedelta(seconds=self.settings.heartbeat_stale_s),
                self.settings.max_attempts,
            )
            session.commit()
            lost = jobstore.runnable_queued_jobs(session, now - timedelta(seconds=self.grace_s))
            pending = [(job.id, job.queue) for job in lost]
            lost_queues = self.lost_broker_queues(session, now)
            if lost_queues:
                # Everything enqueued before now on those queues, not only past the grace.
                again = jobstore.runnable_queued_jobs(session, now)
                listed = {job_id for job_id, _ in pending}
                pending += [
                    (job.id, job.queue)
                    for job in again
                    if job.queue in lost_queues and job.id not in listed
                ]
                log.warning(
                    "the broker lost its messages (flushed or restarted): sending the "
                    "queued jobs of %s again",
                    ", ".join(sorted(lost_queues)),
                )
        sent: list[str] = []
        for position, (job_id, queue) in enumerate(pending):
            try:
                enqueue(self.app, job_id, queue, self.settings.broker_timeout_s)
            except BrokerUnavailableError as exc:
                log.error(
                    "broker unavailable, %d jobs wait for the next round: %s",
                    len(pending) - position,
                    exc,
                )
                break
            sent.append(job_id)
        if sent:
            with self.db.session() as session:
                jobstore.mark_enqueued(session, sent)
                session.commit()
        if len(sent) == len(pending):  # every lost job went again: the broker is whole
            self.watch.mark()
        if requeued or sent:
            log.info("reaped %d stale jobs, enqueued %d queued jobs", len(requeued), len(sent))
        return Round(requeued, sent, len(pending) - len(sent), self.build_reports())

    def lost_broker_queues(self, session: Session, now: datetime) -> set[str]:
        """The queues whose messages the broker lost (see ``BrokerWatch``), among those
        with queued jobs already sent to it."""
        if self.watch.client is None:
            return set()
        queues = set(
            session.scalars(
                select(Job.queue)
                .where(Job.state == JobState.QUEUED, Job.enqueued_at.is_not(None))
                .distinct()
            )
        )
        return self.watch.lost_queues(queues) if queues else set()

    def build_reports(self) -> list[str]:
        from service import reports, sweeps  # matplotlib: only when a report is due

        with self.db.session() as session:
            due = sweeps.sweeps_needing_report(session, sweeps.stale_report_cutoff(utcnow()))
        built = []
        for sweep_id in due:
            try:
                if reports.build(self.settings, self.db, sweep_id) is not None:
                    built.append(sweep_id)
            except reports.SweepNotFinishedError:  # analyses were added meanwhile
                continue
        return built

    def run_forever(self, interval_s: float, stop: threading.Event) -> None:
        log.info("reconciling every %.1f s (grace %.0f s)", interval_s, self.grace_s)
        while not stop.is_set():
            try:
                self.run_once()
            except SQLAlchemyError as exc:  # the job store is down: try again next round
                log.error("reconcile round failed: %s", exc)
            stop.wait(interval_s)

    def close(self) -> None:
        self.watch.close()
        self.db.dispose()
        self.app.close()


def serve(settings: Settings, *, interval_s: float, grace_s: float) -> None:
    """Reconcile until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reconciler = Reconciler(settings, grace_s=grace_s)
    try:
        reconciler.run_forever(interval_s, stop)
    finally:
        reconciler.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.reconciler", description=__doc__)
    parser.add_argument("--once", action="store_true", help="one round, then exit")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S)
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings()
    install_log_redaction(settings.secrets)
    if args.once:
        reconciler = Reconciler(settings, grace_s=args.grace)
        try:
            done = reconciler.run_once()
        finally:
            reconciler.close()
        print(f"reaped {len(done.requeued)} stale jobs, enqueued {len(done.enqueued)} queued jobs")
        return 1 if done.failed else 0
    serve(settings, interval_s=args.interval, grace_s=args.grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
