"""The reconciler and reaper: nothing submitted is ever lost (``regbench reconcile``).

The job store is the truth and the broker only transport. Each round:

1. the reaper: running jobs whose heartbeat stopped (their worker died, their node was
   preempted) go back to queued, or fail once their attempts are used up
   (``jobstore.requeue_stale``);
2. queued jobs the broker may have lost (never enqueued, or enqueued more than
   ``grace_s`` ago and still unclaimed: Redis restarted or flushed, a worker died with
   the message, a dependent whose enqueue failed) are sent again and marked enqueued;
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
from datetime import timedelta
from types import FrameType

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from service import jobstore
from service.broker import BrokerUnavailableError, enqueue, make_celery
from service.db import Database
from service.redact import install_log_redaction
from service.settings import Settings
from service.tables import utcnow

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 30.0
DEFAULT_GRACE_S = 300.0  # a queued job unclaimed this long after its enqueue is sent again


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
        if requeued or sent:
            log.info("reaped %d stale jobs, enqueued %d queued jobs", len(requeued), len(sent))
        return Round(requeued, sent, len(pending) - len(sent), self.build_reports())

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
