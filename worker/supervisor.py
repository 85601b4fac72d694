"""Runs one job in a supervised child process: claim, start, heartbeat, stop, record.

The Celery task calls ``supervise_job``. It claims the job atomically (a duplicate
delivery claims nothing and returns at once), then starts ``python -m worker.child`` in
a fresh interpreter and its own process group: no fork after CUDA, all memory returned
when the job ends, and a cancel can stop the child and everything it started without
touching the worker. The child dies with its supervisor (``PR_SET_PDEATHSIG``), so a
killed worker never leaves training running next to the attempt that replaces it.

While the child runs, the supervisor writes the job's heartbeat every
``heartbeat_interval_s``. When ``jobstore.heartbeat`` says stop (a cancel was requested,
or the job is no longer this worker's), or the job's time limit passes, it sends
SIGTERM to the child's process group (the training loop stops between steps; the last
epoch's checkpoint is already on disk), waits ``STOP_GRACE_S``, then SIGKILLs the group.

The child reports through a JSON file: ``{"status": "succeeded", "metrics": {...}}`` or
``{"status": "failed", "error": "..."}``. The supervisor alone moves the job to its
final state, then enqueues the analysis jobs that waited on a successful train job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from service import jobstore
from service.broker import BrokerUnavailableError
from service.db import Database
from service.settings import Settings
from service.tables import Job, JobKind, JobState, utcnow
from worker.runner import RunnerChild, current_slot, memory_cgroup, oom_kills
from worker.shares import DeviceShares

log = logging.getLogger(__name__)

STOP_GRACE_S = 4.0  # SIGTERM -> SIGKILL; with a 5 s heartbeat a cancel takes < 10 s
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 3  # the child's exit codes
RETRY = "retry"  # the job's child was killed alone: the job runs again here, from its checkpoint
LOG_TAIL_CHARS = 2000
SHARE_POLL_S = 0.2  # how often a job waiting for its share of a GPU looks again
RESULT_RETRY_FIRST_S, RESULT_RETRY_MAX_S = 0.25, 5.0  # back-off while the job store is down

Enqueue = Callable[[str, str], None]  # (job id, queue); raises BrokerUnavailableError


class StopReason(StrEnum):
    CANCEL = "cancel"  # the user asked: the job ends cancelled
    LOST = "lost"  # the job is no longer ours (reaped, taken over): leave it alone
    TIME_LIMIT = "time limit"  # the job ends failed
    MEMORY = "memory limit"  # the job ends failed: over its resources.memory_gb


@dataclass
class ChildReport:
    """What the child wrote before it exited (empty when it died without a word)."""

    status: str | None = None  # succeeded | failed | cancelled
    error: str | None = None
    stack_failed: bool = False  # a stack failed as a whole, not for this job's sake
    metrics: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    mlflow_closed: bool = False  # the child already marked the MLflow run FINISHED/FAILED

    @classmethod
    def read(cls, path: Path) -> ChildReport:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        return cls(
            status=data.get("status"),
            error=data.get("error"),
            metrics=dict(data.get("metrics") or {}),
            mlflow_run_id=data.get("mlflow_run_id"),
            mlflow_closed=bool(data.get("mlflow_closed")),
            stack_failed=bool(data.get("stack_failed")),
        )


_databases: dict[tuple[int, str], Database] = {}


def database(settings: Settings) -> Database:
    """One engine per process and URL (pool processes fork: never share a parent's)."""
    key = (os.getpid(), settings.job_store_url)
    if key not in _databases:
        _databases[key] = Database(settings.job_store_url)
    return _databases[key]


def supervise_job(
    job_id: str,
    *,
    settings: Settings,
    worker: str,
    device: str | None,
    enqueue: Enqueue | None = None,
    db: Database | None = None,
) -> str:
    """Claim and run one job (a train job with the queued train jobs of its sweep that
    may train stacked with it, see ``jobstore.claim_companions``); returns the job's final
    state, ``skipped`` (nothing claimed) or ``lost`` / ``interrupted`` (left running in
    the job store for the reaper)."""
    db = db or database(settings)
    stale_before = utcnow() - timedelta(seconds=settings.heartbeat_stale_s)
    with db.session() as session:
        job = jobstore.claim(
            session,
            job_id,
            worker=worker,
            device=device,
            stale_before=stale_before,
            max_attempts=settings.max_attempts,
        )
        if job is None:
            session.commit()
            log.info("job %s: nothing to claim (duplicate delivery, finished or cancelled)", job_id)
            return "skipped"
        companions = jobstore.claim_companions(
            session,
            job,
            worker=worker,
            device=device,
            stale_before=stale_before,
            max_attempts=settings.max_attempts,
            limit=settings.stack_limit(device) - 1,
        )
        session.commit()
        runs = [
            JobRun.of(claimed, settings=settings, db=db, worker=worker, device=device,
                      enqueue=enqueue)
            for claimed in (job, *companions)
        ]  # fmt: skip
    run = runs[0]
    if companions:
        log.info(
            "job %s (train) attempt %d claimed by %s with %d more to train stacked: %s",
            job_id, run.attempt, worker, len(companions), " ".join(r.job_id for r in runs[1:]),
        )  # fmt: skip
        state = StackRun(runs).execute()
    else:
        log.info("job %s (%s) attempt %d claimed by %s", job_id, run.kind, run.attempt, worker)
        state = run.execute()
        if state == RETRY:  # claimed again (unless another worker took it meanwhile)
            return supervise_job(
                job_id, settings=settings, worker=worker, device=device, enqueue=enqueue, db=db
            )
    # The experiments' analyses, in this slot's warm process right after their training
    # (each claimed, watched and recorded as a job of its own). The Celery task's own
    # time limit allows one job limit more than a job's: past one limit, the rest go to
    # the broker.
    inline = [dependent for member in runs for dependent in member.inline]
    started = time.monotonic()
    for number, dependent in enumerate(inline):
        if time.monotonic() - started > settings.job_time_limit_s:
            run.send(inline[number:])
            break
        supervise_job(
            dependent, settings=settings, worker=worker, device=device, enqueue=enqueue, db=db
        )
    return state


def _time_limit(settings: Settings, minutes: int | None) -> float:
    limit = float(settings.job_time_limit_s)
    return min(limit, minutes * 60.0) if minutes else limit


@dataclass
class JobRun:
    settings: Settings
    db: Database
    job_id: str
    kind: str
    experiment_id: str
    attempt: int
    worker: str
    mlflow_run_id: str | None
    time_limit_s: float
    memory_limit_mb: float | None = None
    device: str | None = None  # the worker's device label: cpu or cuda:<index>
    gpu_fraction: float = 1.0  # of the device, on a GPU (worker.shares)
    enqueue: Enqueue | None = None
    inline: list[str] = field(default_factory=list)  # dependents to run next in this slot
    peak_rss_mb: float | None = None
    seen_rss_mb: float | None = None  # the most the child was seen using at a heartbeat
    cgroup: Path | None = None  # the child's memory cgroup: OOM kills are counted there
    oom_kills_before: int | None = None

    @classmethod
    def of(
        cls,
        job: Job,
        *,
        settings: Settings,
        db: Database,
        worker: str,
        device: str | None,
        enqueue: Enqueue | None,
    ) -> JobRun:
        """The run of a job just claimed (read inside the claim's session)."""
        resources = (job.experiment.spec or {}).get("resources") or {}
        memory_gb = resources.get("memory_gb")
        return cls(
            settings=settings,
            db=db,
            job_id=job.id,
            kind=job.kind,
            experiment_id=job.experiment_id,
            attempt=job.attempt,
            worker=worker,
            mlflow_run_id=job.mlflow_run_id or job.experiment.mlflow_run_id,
            time_limit_s=_time_limit(settings, resources.get("time_limit_minutes")),
            memory_limit_mb=memory_gb * 1024 if memory_gb else None,
            device=device,
            gpu_fraction=float(resources.get("gpu_fraction") or 1.0),
            enqueue=enqueue,
        )

    @property
    def workdir(self) -> Path:
        """The experiment's working directory (checkpoints for resume), shared by its jobs."""
        return self.settings.run_workdir(self.experiment_id)

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / f"{self.kind}-{self.job_id}-{self.attempt}.log"

    @property
    def result_path(self) -> Path:
        return self.log_path.with_suffix(".json")

    def execute(self) -> str:
        log_path = self.log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.result_path.unlink(missing_ok=True)
        shares = DeviceShares(self.device) if (self.device or "").startswith("cuda") else None
        if shares is not None:
            waited = self.wait_for_share(shares)
            if waited is not None:
                return self.record(waited, -signal.SIGTERM, ChildReport(), log_path)
        try:
            reason, code = self.run_in_slot(self.request())
            return self.conclude(reason, code)
        finally:
            if shares is not None:
                shares.release()

    def request(self) -> dict[str, Any]:
        """What the slot's job process is asked to run."""
        return {
            "job_id": self.job_id,
            "worker": self.worker,
            "result": str(self.result_path),
            "log": str(self.log_path),
        }

    def run_in_slot(self, request: dict[str, Any]) -> tuple[StopReason | None, int]:
        """Run the request in the slot's warm process, heartbeating until it ends: (None,
        its exit code), or until it must stop: (the reason, the stopped process's status)."""
        slot = current_slot(self.settings)
        child = slot.start_job(request)
        log.info("job %s: runner child %d (log %s)", self.job_id, child.pid, request["log"])
        self.cgroup = memory_cgroup(child.pid)
        self.oom_kills_before = oom_kills(self.cgroup)
        code: int | None = None
        reason: StopReason | None = None
        try:
            reason, code = self.watch(child)
        finally:
            stopped = code is None
            if stopped:
                stop_process_group(child.process, STOP_GRACE_S)
                code = child.process.returncode
            slot.job_ended(child, code, stopped)
        return reason, code if code is not None else -signal.SIGKILL

    def conclude(self, reason: StopReason | None, code: int) -> str:
        report = ChildReport.read(self.result_path)
        self.result_path.unlink(missing_ok=True)
        return self.record(reason, code, report, self.log_path)

    # ----------------------------------------------------------------- while it runs

    def wait_for_share(self, shares: DeviceShares) -> StopReason | None:
        """Wait, heartbeating, until this job's share of the GPU is free (None), or until
        it must stop (the reason: cancelled or lost while waiting)."""
        interval = self.settings.heartbeat_interval_s
        next_beat = time.monotonic()
        while not shares.try_acquire(self.gpu_fraction):
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval
                message = (
                    f"waiting for {self.gpu_fraction:g} of {self.device} "
                    f"({shares.in_use():g} in use by other jobs)"
                )
                try:
                    with self.db.session() as session:
                        jobstore.heartbeat(session, self.job_id, self.worker, message=message)
                        reason = self.beat(session)  # (a stack's: every member's)
                        if reason is not None:
                            return reason
                except SQLAlchemyError as exc:
                    log.warning("job %s: heartbeat failed while waiting: %s", self.job_id, exc)
            time.sleep(SHARE_POLL_S)
        return None

    def watch(self, child: RunnerChild) -> tuple[StopReason | None, int | None]:
        """Heartbeat until the job ends: (None, its exit code), or until it must be
        stopped: (the reason, None)."""
        interval = self.settings.heartbeat_interval_s
        started = time.monotonic()
        deadline = started + self.time_limit_s
        next_beat = started + interval
        last_beat = started
        while True:
            code = child.wait(max(0.0, min(next_beat, deadline) - time.monotonic()))
            if code is not None:
                return None, code
            now = time.monotonic()
            if now >= deadline:
                log.warning("job %s: time limit of %.0f s reached", self.job_id, self.time_limit_s)
                return StopReason.TIME_LIMIT, None
            if now < next_beat:
                continue
            next_beat = now + interval
            rss = child.rss_mb()
            if rss is not None:
                self.seen_rss_mb = max(self.seen_rss_mb or 0.0, rss)
            if rss is not None and self.memory_limit_mb is not None and rss > self.memory_limit_mb:
                self.peak_rss_mb = rss
                log.warning("job %s: %.0f MB resident, over its memory limit", self.job_id, rss)
                return StopReason.MEMORY, None
            try:
                with self.db.session() as session:
                    reason = self.beat(session)
            except SQLAlchemyError as exc:
                # The job store is unreachable. Keep training while the job could not yet
                # count as stale; past that another worker may own it: stop.
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
                if now - last_beat > self.settings.heartbeat_stale_s:
                    return StopReason.LOST, None
                continue
            last_beat = now
            if reason is not None:
                log.info("job %s: stopping the child (%s)", self.job_id, reason)
                return reason, None

    def beat(self, session: Any) -> StopReason | None:
        """Write the heartbeat; a reason when the job must stop."""
        stop = jobstore.heartbeat(session, self.job_id, self.worker)
        session.commit()
        return self._stop_reason(session) if stop else None

    def _stop_reason(self, session: Any) -> StopReason:
        job = session.get(Job, self.job_id, populate_existing=True)
        mine = job is not None and job.state == JobState.RUNNING and job.worker == self.worker
        return StopReason.CANCEL if mine and job.cancel_requested else StopReason.LOST

    # ----------------------------------------------------------------- afterwards

    def record(
        self, reason: StopReason | None, returncode: int, report: ChildReport, log_path: Path
    ) -> str:
        if reason == StopReason.LOST:
            log.warning("job %s: lost to another worker or the reaper; not recorded", self.job_id)
            return "lost"
        metrics: dict[str, Any] | None = None
        error: str | None = None
        if reason == StopReason.CANCEL:
            state = JobState.CANCELLED
        elif reason == StopReason.TIME_LIMIT:
            state = JobState.FAILED
            error = f"time limit of {self.time_limit_s:.0f} s exceeded; stopped"
        elif reason == StopReason.MEMORY:
            state = JobState.FAILED
            error = (
                f"used {self.peak_rss_mb:.0f} MB, over its memory limit of "
                f"{self.memory_limit_mb:.0f} MB (resources.memory_gb); stopped"
            )
        elif returncode == EXIT_SUCCEEDED and report.status == "succeeded":
            state, metrics = JobState.SUCCEEDED, report.metrics
        elif returncode < 0 and report.status is None:
            # The child alone was killed (the kernel's OOM killer, an operator) before it
            # said a word; its last checkpoint is on disk. Again in a fresh child, from
            # that checkpoint, up to the attempt limit.
            why = self._describe_kill(returncode)
            if self.attempt < self.settings.max_attempts and self._release_killed(why):
                return RETRY
            state = JobState.FAILED
            attempts = f"{self.attempt} attempt{'s' if self.attempt != 1 else ''}"
            error = _with_log_tail(f"{why}; gave up after {attempts} (max_attempts)", log_path)
        elif returncode == EXIT_CANCELLED or report.status == "cancelled":
            # Stopped by a signal nobody here sent (node shutdown, preemption): the job is
            # not finished. Leave it running; the reaper requeues it and it resumes.
            log.warning("job %s: child stopped from outside; left for the reaper", self.job_id)
            return "interrupted"
        else:
            state, error = JobState.FAILED, report.error or _describe_exit(returncode, log_path)
        finished = self._finish(state, error, metrics)
        if not finished:
            log.warning("job %s: no longer ours when it ended; not recorded", self.job_id)
            return "lost"
        log.info("job %s: %s%s", self.job_id, state.value, f" ({error})" if error else "")
        if self.kind == JobKind.TRAIN:
            if state == JobState.SUCCEEDED:
                self._remove_resume_checkpoints()
                if self.settings.inline_analyses:
                    self._keep_dependents()
                else:
                    self._enqueue_dependents()
            elif not report.mlflow_closed:
                status = "KILLED" if state == JobState.CANCELLED else "FAILED"
                self._close_mlflow_run(report.mlflow_run_id or self._current_run_id(), status)
        self._report_finished_sweeps()
        return state.value

    def _describe_kill(self, returncode: int) -> str:
        """How the child died, saying whether memory ran out: the OOM killer's count in
        the child's memory cgroup went up while it ran. (A job over its own memory limit
        is stopped by ``watch`` and fails with ``StopReason.MEMORY`` instead.)"""
        signum = -returncode
        after = oom_kills(self.cgroup)
        seen = f"; last seen using {self.seen_rss_mb:.0f} MB" if self.seen_rss_mb else ""
        if (
            signum == signal.SIGKILL
            and after is not None
            and self.oom_kills_before is not None
            and after > self.oom_kills_before
        ):
            what = (
                f"job process killed by SIGKILL: out of memory (the kernel's OOM killer, "
                f"oom_kill {self.oom_kills_before} -> {after} in {self.cgroup}){seen}"
            )
        elif signum == signal.SIGKILL and after is not None:
            what = f"job process killed by SIGKILL (no OOM kill in its memory cgroup){seen}"
        else:
            what = _exit_headline(returncode) + seen
        return what

    def _release_killed(self, why: str) -> bool:
        """running -> queued (attempt counted) for the retry this worker runs next."""
        with self.db.session() as session:
            released = jobstore.release(
                session, self.job_id, self.worker,
                reason=f"retrying from its checkpoint: {why}", count_attempt=True,
            )  # fmt: skip
            session.commit()
        log.warning(
            "job %s: %s; %s", self.job_id, why,
            "retrying in a fresh job process" if released else "no longer ours",
        )  # fmt: skip
        return released

    def _finish(self, state: JobState, error: str | None, metrics: dict[str, Any] | None) -> bool:
        """Record the job's end, keeping the result across an outage of the job store:
        retried with back-off for up to ``job_store_retry_s``. A job the reaper put back
        in the queue meanwhile (its heartbeat went stale) is still ours to finish while
        no worker has claimed it again (``jobstore.finish`` with the attempt)."""
        deadline = time.monotonic() + self.settings.job_store_retry_s
        delay = RESULT_RETRY_FIRST_S
        failures = 0
        while True:
            try:
                with self.db.session() as session:
                    finished = jobstore.finish(
                        session, self.job_id, self.worker, state,
                        error=error, metrics=metrics, attempt=self.attempt,
                    )  # fmt: skip
                    session.commit()
            except SQLAlchemyError as exc:
                if not _transient(exc) or time.monotonic() + delay > deadline:
                    log.error(
                        "job %s: %s not recorded in the job store: %s",
                        self.job_id, state.value, exc,
                    )  # fmt: skip
                    raise
                failures += 1
                if failures == 1:
                    log.warning(
                        "job %s: the job store is unreachable; keeping its result (%s) and "
                        "retrying for up to %.0f s: %s",
                        self.job_id, state.value, self.settings.job_store_retry_s, exc,
                    )  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, RESULT_RETRY_MAX_S)
                continue
            if failures:
                log.info("job %s: result recorded after %d failed tries", self.job_id, failures)
            return finished

    def _report_finished_sweeps(self) -> None:
        """The worker that finishes a sweep's last job logs the sweep's report. Best
        effort: the reconciler builds any report missed here."""
        from service import reports, sweeps  # matplotlib: only once a job has finished

        try:
            with self.db.session() as session:
                sweep_ids = sweeps.sweeps_of_experiment(session, self.experiment_id)
            if sweep_ids:
                reports.build_finished(self.settings, self.db, sweep_ids)
        except Exception as exc:
            log.warning("job %s: sweep report not built here: %s", self.job_id, exc)

    def _remove_resume_checkpoints(self) -> None:
        """last.pt (also in MLflow) and best.pt are only needed to resume; model.pt stays
        for analyses that run on this machine."""
        for name in ("last.pt", "best.pt"):
            (self.workdir / name).unlink(missing_ok=True)

    def _keep_dependents(self) -> None:
        """Take the ready analyses for this slot. They are marked enqueued, so the
        reconciler sends them to the broker only if this slot has not claimed them
        within its grace period (the worker died meanwhile)."""
        with self.db.session() as session:
            self.inline = [job.id for job in jobstore.dependents_ready(session, self.job_id)]
            jobstore.mark_enqueued(session, self.inline)
            session.commit()

    def _enqueue_dependents(self) -> None:
        with self.db.session() as session:
            ready = [job.id for job in jobstore.dependents_ready(session, self.job_id)]
        self.send(ready)

    def send(self, job_ids: list[str]) -> None:
        """Send queued jobs to the broker (those it refuses wait for the reconciler)."""
        if self.enqueue is None or not job_ids:
            return
        with self.db.session() as session:
            jobs = [
                (job.id, job.queue)
                for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))
            ]
        sent = []
        for job_id, queue in jobs:
            try:
                self.enqueue(job_id, queue)
            except BrokerUnavailableError as exc:  # the reconciler sends it later
                log.warning("job %s: dependent %s not enqueued: %s", self.job_id, job_id, exc)
                continue
            sent.append(job_id)
        if sent:
            with self.db.session() as session:
                jobstore.mark_enqueued(session, sent)
                session.commit()

    def _current_run_id(self) -> str | None:
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            return job.mlflow_run_id if job is not None else self.mlflow_run_id

    def _close_mlflow_run(self, run_id: str | None, status: str) -> None:
        """Mark the train job's MLflow run when the child could not (killed, timed out)."""
        if run_id is None:
            return
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(self.settings.tracking_uri).set_terminated(run_id, status)
        except Exception as exc:  # best effort: the job's state is what counts
            log.warning(
                "job %s: could not mark MLflow run %s %s: %s", self.job_id, run_id, status, exc
            )


class StackRun(JobRun):
    """Train jobs that share a stack key as one stacked model in one request to the slot
    (``worker.child.run_stack``); each member is watched, heartbeaten and recorded as the
    job it is. The first member leads: the stack's log is its log.

    How a stack ends, member by member:
    - it trained: each member is recorded succeeded, with its own metrics and run;
    - a member's loss diverged: that member fails with the reason;
    - a member was cancelled (or taken by the reaper): it is recorded so (or left alone),
      and the others go back to the queue, their attempt not counted; their next
      attempt resumes from their checkpoints, stacked again if they meet;
    - the stack failed as a whole, or its process died: every member goes back to the
      queue to train on its own (attempt counted), resuming from its checkpoint;
    - the time or memory limit: every member fails with it.
    """

    def __init__(self, members: list[JobRun]) -> None:
        lead = members[0]
        memory = [m.memory_limit_mb for m in members]
        super().__init__(
            settings=lead.settings,
            db=lead.db,
            job_id=lead.job_id,
            kind=lead.kind,
            experiment_id=lead.experiment_id,
            attempt=lead.attempt,
            worker=lead.worker,
            mlflow_run_id=lead.mlflow_run_id,
            time_limit_s=max(m.time_limit_s for m in members),
            memory_limit_mb=None if None in memory else sum(m or 0.0 for m in memory),
            device=lead.device,
            gpu_fraction=min(1.0, sum(m.gpu_fraction for m in members)),
            enqueue=lead.enqueue,
        )
        self.members = members
        self.stopping: dict[str, StopReason] = {}  # member job id -> why it must stop

    def request(self) -> dict[str, Any]:
        for member in self.members:
            member.result_path.parent.mkdir(parents=True, exist_ok=True)
            member.result_path.unlink(missing_ok=True)
        return {
            "job_ids": [m.job_id for m in self.members],
            "worker": self.worker,
            "results": [str(m.result_path) for m in self.members],
            "log": str(self.log_path),
        }

    def beat(self, session: Any) -> StopReason | None:
        for member in self.members:
            if jobstore.heartbeat(session, member.job_id, self.worker):
                self.stopping[member.job_id] = member._stop_reason(session)
        session.commit()
        reasons = set(self.stopping.values())
        if not reasons:
            return None
        return StopReason.CANCEL if StopReason.CANCEL in reasons else StopReason.LOST

    def record(
        self, reason: StopReason | None, returncode: int, report: ChildReport, log_path: Path
    ) -> str:
        """Only for a stack stopped before it started (waiting for its GPU share)."""
        return self.conclude(reason, returncode)

    def conclude(self, reason: StopReason | None, code: int) -> str:
        reports = []
        for member in self.members:
            reports.append(ChildReport.read(member.result_path))
            member.result_path.unlink(missing_ok=True)
        states = []
        requeue: list[str] = []
        for member, report in zip(self.members, reports, strict=True):
            own = self.stopping.get(member.job_id)
            if reason in (StopReason.CANCEL, StopReason.LOST) and own is None:
                why = "a job it trained stacked with was cancelled or lost"
                if self._release(member, why, count_attempt=False, stack=True):
                    requeue.append(member.job_id)
                states.append("requeued")
            elif reason is not None:
                states.append(member.record(own or reason, code, report, self.log_path))
            elif report.status == "succeeded" and code == EXIT_SUCCEEDED:
                states.append(member.record(None, EXIT_SUCCEEDED, report, self.log_path))
            elif report.status is None or report.stack_failed:
                why = report.error or _describe_exit(code, self.log_path)
                if self._release(member, f"trains on its own: {why}", True, stack=False):
                    requeue.append(member.job_id)
                states.append("requeued")
            else:
                member_code = EXIT_CANCELLED if report.status == "cancelled" else EXIT_FAILED
                states.append(member.record(None, member_code, report, self.log_path))
        self.send(requeue)
        return states[0]

    def _release(self, member: JobRun, why: str, count_attempt: bool, stack: bool) -> bool:
        with self.db.session() as session:
            released = jobstore.release(
                session,
                member.job_id,
                self.worker,
                reason=f"requeued: {why}",
                count_attempt=count_attempt,
                stack=stack,
            )
            session.commit()
        log.info("job %s: %s (%s)", member.job_id, "requeued" if released else "not ours", why)
        return released


def stop_process_group(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the child's process group, then SIGKILL after ``grace_s``."""
    _signal_group(child.pid, signal.SIGTERM)
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log.warning("child %d ignored SIGTERM for %.0f s: SIGKILL", child.pid, grace_s)
        _signal_group(child.pid, signal.SIGKILL)
        child.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _transient(exc: SQLAlchemyError) -> bool:
    """A connection that failed or broke (the server is down or restarting), not a
    statement the database refused."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def _describe_exit(returncode: int, log_path: Path) -> str:
    return _with_log_tail(_exit_headline(returncode), log_path)


def _exit_headline(returncode: int) -> str:
    if returncode < 0:
        what = f"job process killed by {signal.Signals(-returncode).name}"
        if -returncode == signal.SIGKILL:
            what += " (out of memory?)"
        return what
    return f"job process exited with status {returncode}"


def _with_log_tail(what: str, log_path: Path) -> str:
    try:
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
    except OSError:
        tail = ""
    return f"{what}; last output:\n{tail}" if tail else what
