"""The API's work between HTTP and the job store: submit, add analyses, enqueue, list,
summarize the queue. Routes call these; these call ``service``.

Commit, then enqueue: the job store is the truth and the broker only transport. Jobs
are sent after their rows are committed, and marked enqueued (another commit) once the
broker took them. A broker that does not answer within ``broker_timeout_s`` raises
``NotEnqueuedError`` (503): the jobs stay queued in the store and the reconciler sends
them later. Routes are plain ``def`` functions, which FastAPI runs in its thread pool,
so the blocking database, broker and MLflow calls here never run on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, exists, func, not_, or_, select
from sqlalchemy.orm import Session, selectinload

from api.schemas import (
    QueuePublic,
    ReportPublic,
    RunningJobPublic,
    SweepPublic,
    SweepResultsPublic,
    SweepRunningJobPublic,
    WorkerPublic,
    age_seconds,
)
from api.tracking import ArtifactNotFoundError, Tracking, TrackingUnavailableError
from regcore.spec import AnalysisSpec, ExperimentSpec, SweepSpec
from service import jobstore, limits, reports, sweeps, users
from service.broker import BrokerUnavailableError, enqueue_many
from service.db import Database
from service.reports import REPORT_FILES
from service.settings import DEFAULT_ARTIFACT_KEY, Settings
from service.tables import (
    Experiment,
    Job,
    JobState,
    ReportStatus,
    Sweep,
    SweepMember,
    Worker,
    utcnow,
)
from service.users import Principal

LIVE_WORKER_HEARTBEATS = 3  # a worker is live if seen within this many heartbeat intervals


def live_workers(session: Session, settings: Settings) -> list[Worker]:
    """Workers whose heartbeat is within ``LIVE_WORKER_HEARTBEATS`` intervals."""
    seen_within = timedelta(seconds=LIVE_WORKER_HEARTBEATS * settings.heartbeat_interval_s)
    return jobstore.live_workers(session, seen_within)


class NotEnqueuedError(RuntimeError):
    """The jobs are recorded and queued in the job store, but the broker did not take them."""

    def __init__(
        self,
        experiment_id: str | None,
        job_ids: Sequence[str],
        reason: str,
        *,
        sweep_id: str | None = None,
    ) -> None:
        self.experiment_id = experiment_id
        self.sweep_id = sweep_id
        self.job_ids = list(job_ids)
        what = f"sweep {sweep_id}" if sweep_id else f"experiment {experiment_id}"
        jobs = (
            f"{len(self.job_ids)} of its jobs"
            if len(self.job_ids) > 5
            else f"its jobs {', '.join(self.job_ids)}"
        )
        super().__init__(
            f"{what} is recorded, but the broker is unavailable ({reason}); {jobs} stay "
            "queued and the reconciler will enqueue them when the broker is back: do not "
            "submit again"
        )


class ConflictError(RuntimeError):
    """The request does not fit the experiment's state (409)."""


class ForbiddenError(RuntimeError):
    """The request would change another user's work (403)."""


def require_change(principal: Principal, what: str, owner: str) -> None:
    """ForbiddenError unless ``principal`` may change what ``owner`` owns."""
    if not users.may_change(principal, owner):
        raise ForbiddenError(
            f"{what} belongs to {owner!r}: only its owner or an admin may change it "
            f"(you are {principal.name!r}); reading it is allowed"
        )


# --------------------------------------------------------------------------- enqueue


def runnable(experiment: Experiment, jobs: Sequence[Job]) -> list[Job]:
    """Those of ``jobs`` a worker could start now: queued, not cancelled, dependency done."""
    states = {job.id: job.state for job in experiment.jobs}
    return [
        job
        for job in jobs
        if job.state == JobState.QUEUED
        and not job.cancel_requested
        and (job.depends_on is None or states.get(job.depends_on) == JobState.SUCCEEDED)
    ]


def send(
    session: Session,
    celery: Celery,
    settings: Settings,
    jobs: Sequence[tuple[str, str]],
    *,
    experiment_id: str | None = None,
    sweep_id: str | None = None,
) -> None:
    """Enqueue committed ``(job id, queue)`` pairs in one go (``enqueue_many``), mark those
    the broker took, commit; NotEnqueuedError, naming the experiment or sweep, if not all."""
    if not jobs:
        return
    sent: list[str] = []
    try:
        sent = enqueue_many(celery, jobs, settings.broker_timeout_s)
    except BrokerUnavailableError as exc:
        sent = exc.sent
        taken = set(sent)
        missing = [job_id for job_id, _ in jobs if job_id not in taken]
        raise NotEnqueuedError(experiment_id, missing, str(exc), sweep_id=sweep_id) from exc
    finally:
        jobstore.mark_enqueued(session, sent)
        session.commit()


# --------------------------------------------------------------------------- experiments


def submit(
    session: Session,
    celery: Celery,
    tracking: Tracking,
    settings: Settings,
    spec: ExperimentSpec,
    *,
    owner: str,
    force: bool = False,
) -> jobstore.Submission:
    """Record a spec (or find its identical twin) in its MLflow experiment, commit, then
    enqueue its train job. A tracking store that is down records nothing (503). Over the
    limits on analyses or jobs per request: LimitError (422); over the owner's queue:
    QueueFullError (429); an identical twin adds nothing and is never refused.

    The MLflow experiment is resolved first (once per app, then cached), so no database
    write waits on MLflow. The same path as a sweep's: ``jobstore.submit_experiments``."""
    jobs = 1 + len(spec.analyses)
    limits.check_request(
        len(spec.analyses),
        jobs,
        max_analyses=settings.max_analyses_per_spec,
        max_jobs=settings.max_jobs_per_request,
        loc=("body", "analyses"),
    )
    spec_hash = spec.spec_hash()
    if force or not limits.stored_specs(session, [spec_hash]):
        limits.check_queue(session, jobs, settings.max_queued_jobs_per_user, owner)
    try:
        mlflow_experiment_id = tracking.experiment_id(
            settings.mlflow_experiment, DEFAULT_ARTIFACT_KEY
        )
    except TrackingUnavailableError as exc:
        raise TrackingUnavailableError(f"{exc}; nothing was recorded, submit again later") from exc
    recorded = jobstore.submit_experiments(
        session,
        [jobstore.SpecToSubmit(spec, spec_hash)],
        default_queue=settings.default_queue,
        owner=owner,
        mlflow_experiment_id=mlflow_experiment_id,
        force=force,
    )
    [experiment_id] = recorded.experiment_ids
    if recorded.new:
        session.commit()
        jobs = [job for new in recorded.new for job in new.runnable]
        send(session, celery, settings, jobs, experiment_id=experiment_id)
    experiment = session.get(Experiment, experiment_id, options=[selectinload(Experiment.jobs)])
    assert experiment is not None
    return jobstore.Submission(experiment, created=bool(recorded.new))


def add_analyses(
    session: Session,
    celery: Celery,
    settings: Settings,
    experiment: Experiment,
    analyses: Sequence[AnalysisSpec],
) -> list[Job]:
    """Analysis jobs on the experiment's checkpoint. Its train job must have succeeded or
    still be on its way (queued, running); a failed or cancelled one never gives a
    checkpoint (409). The new jobs are enqueued now if training is done, else by the
    worker when it is. One call adds at most ``max_analyses_per_spec`` (422), and none
    past the caller's queue (429)."""
    limits.check_request(
        len(analyses),
        len(analyses),
        max_analyses=settings.max_analyses_per_spec,
        max_jobs=settings.max_jobs_per_request,
        loc=("body",),
    )
    train = jobstore.train_job(experiment)
    if train.state in (JobState.FAILED, JobState.CANCELLED) or train.cancel_requested:
        state = "being cancelled" if train.state == JobState.RUNNING else train.state
        raise ConflictError(
            f"the train job of experiment {experiment.id} is {state}: analyses need its "
            "checkpoint; submit the spec again with force=true"
        )
    # The jobs are the experiment's: they count in its owner's queue (an admin may add them).
    limits.check_queue(session, len(analyses), settings.max_queued_jobs_per_user, experiment.owner)
    entries = [analysis.model_dump(mode="json") for analysis in analyses]
    jobs = jobstore.add_analysis_jobs(session, experiment, entries)
    session.commit()
    ready = [(job.id, job.queue) for job in runnable(experiment, jobs)]
    try:
        send(session, celery, settings, ready, experiment_id=experiment.id)
    finally:
        for job in jobs:  # marked by a bulk UPDATE: reload what it changed
            session.expire(job, ["enqueued_at"])
    return jobs


def cancel(session: Session, experiment: Experiment) -> list[Job]:
    """Queued jobs are cancelled at once, running ones asked to stop. A finished
    experiment changes nothing (not an error: cancelling is idempotent)."""
    changed = jobstore.request_cancel(session, experiment)
    session.commit()
    return changed


def status_condition(status: str) -> ColumnElement[bool]:
    """SQL for ``jobstore.experiment_status(experiment) == status`` (for filtering pages)."""

    def has(*states: JobState) -> ColumnElement[bool]:
        return exists().where(Job.experiment_id == Experiment.id, Job.state.in_(states))

    failed, cancelled = has(JobState.FAILED), has(JobState.CANCELLED)
    running, queued = has(JobState.RUNNING), has(JobState.QUEUED)
    succeeded = has(JobState.SUCCEEDED)
    settled = and_(not_(failed), not_(cancelled))
    conditions: dict[str, ColumnElement[bool]] = {
        JobState.FAILED: failed,
        JobState.CANCELLED: and_(not_(failed), cancelled),
        JobState.RUNNING: and_(settled, or_(running, and_(succeeded, queued))),
        JobState.SUCCEEDED: and_(settled, not_(running), not_(queued), succeeded),
        JobState.QUEUED: and_(settled, not_(running), not_(succeeded)),
    }
    return conditions[status]


def list_experiments(
    session: Session, *, sweep: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Experiment], int]:
    """A page of experiments, newest first, and how many match in all."""
    filters: list[ColumnElement[bool]] = []
    if sweep is not None:  # members, including experiments first submitted by another sweep
        members = select(SweepMember.experiment_id).where(SweepMember.sweep_id == sweep)
        filters.append(Experiment.id.in_(members))
    if status is not None:
        filters.append(status_condition(status))
    count = session.scalar(select(func.count()).select_from(Experiment).where(*filters)) or 0
    page = session.scalars(
        select(Experiment)
        .where(*filters)
        .options(selectinload(Experiment.jobs))
        .order_by(Experiment.created_at.desc(), Experiment.id)
        .limit(limit)
        .offset(offset)
    )
    return list(page), count


# --------------------------------------------------------------------------- queue


def queue_summary(session: Session, settings: Settings) -> QueuePublic:
    now = utcnow()
    by_state: dict[str, int] = {}
    by_queue: dict[str, dict[str, int]] = {}
    counted = session.execute(
        select(Job.queue, Job.state, func.count()).group_by(Job.queue, Job.state)
    )
    for queue, state, count in counted:
        by_state[state] = by_state.get(state, 0) + count
        by_queue.setdefault(queue, {})[state] = count
    running = list(
        session.scalars(select(Job).where(Job.state == JobState.RUNNING).order_by(Job.started_at))
    )
    workers = live_workers(session, settings)
    return QueuePublic(
        by_state=by_state,
        by_queue=by_queue,
        running=[RunningJobPublic.of(job, now) for job in running],
        workers=[WorkerPublic.of(w, now, running) for w in sorted(workers, key=lambda w: w.name)],
    )


# --------------------------------------------------------------------------- sweeps


def submit_sweep(
    session: Session,
    celery: Celery,
    tracking: Tracking,
    settings: Settings,
    document: SweepSpec,
    *,
    owner: str,
    force: bool = False,
) -> sweeps.SweepSubmission:
    """Expand and validate the grid (nothing is recorded if any point is invalid or the
    grid is over a limit: points, analyses per point, jobs in all), check the owner's
    queue has room for the jobs of the new experiments, resolve the sweep's MLflow
    experiment, record the sweep and its new experiments, commit, then enqueue their
    train jobs in one go. One commit: the request records every row or none. A partial
    sweep (an older version's) is completed, and the train jobs of the points added are
    enqueued."""
    planned = sweeps.plan(
        document,
        settings.max_sweep_size,
        max_analyses=settings.max_analyses_per_spec,
        max_jobs=settings.max_jobs_per_request,
    )
    adding = sweeps.new_jobs(session, planned, force=force)
    limits.check_queue(session, adding, settings.max_queued_jobs_per_user, owner)
    try:
        mlflow_experiment_id = tracking.experiment_id(
            sweeps.mlflow_experiment_name(planned), sweeps.mlflow_artifact_key(planned)
        )
    except TrackingUnavailableError as exc:
        raise TrackingUnavailableError(f"{exc}; nothing was recorded, submit again later") from exc
    submission = sweeps.submit_sweep(
        session,
        planned,
        document,
        mlflow_experiment_id=mlflow_experiment_id,
        owner=owner,
        default_queue=settings.default_queue,
        force=force,
    )
    session.commit()
    jobs = [job for new in submission.new_experiments for job in new.runnable]
    send(session, celery, settings, [*jobs, *submission.unsent], sweep_id=submission.sweep.id)
    return submission


def describe_sweep(
    session: Session, settings: Settings, sweep: Sweep, live: Sequence[Worker] | None = None
) -> SweepPublic:
    """Counts, progress, ETA and running jobs of a sweep (its row is enough)."""
    [described] = describe_sweeps(session, settings, [sweep], live)
    return described


def describe_sweeps(
    session: Session,
    settings: Settings,
    page: Sequence[Sweep],
    live: Sequence[Worker] | None = None,
) -> list[SweepPublic]:
    """``describe_sweep`` for a page of sweeps, counted together in SQL (``sweeps.tallies``)
    with the store-wide expected durations and the live workers looked up once."""
    now = utcnow()
    live = live_workers(session, settings) if live is None else live
    counted = sweeps.tallies(session, page)
    # A sweep with no queued or running job is done: its progress (1.0) and ETA (0) do not
    # depend on expected durations, so only the others' are looked up.
    unfinished = {
        sweep_id: sweep_tally
        for sweep_id, sweep_tally in counted.items()
        if sweep_tally.jobs[JobState.QUEUED] or sweep_tally.jobs[JobState.RUNNING]
    }
    expected = sweeps.expected_durations_for(session, unfinished)
    described: list[SweepPublic] = []
    for sweep in page:
        sweep_tally = counted[sweep.id]
        workers = [w for w in live if sweep_tally.queues & set(w.queues.split(","))]
        expected_s = expected.get(sweep.id, {})
        state = sweeps.summarize(sweep_tally, expected_s=expected_s, workers=len(workers))
        described.append(_sweep_public(sweep, state, now))
    return described


def _sweep_public(sweep: Sweep, state: sweeps.SweepProgress, now: datetime) -> SweepPublic:
    done = sweep.report_status == ReportStatus.DONE
    return SweepPublic(
        id=sweep.id,
        name=sweep.name,
        owner=sweep.owner,
        created_at=sweep.created_at,
        size=sweep.size,
        status=state.status,
        experiments=state.experiments,
        jobs=state.jobs,
        progress=state.progress,
        eta_s=state.eta_s,
        eta_estimated=state.eta_estimated,
        started_at=state.started_at,
        finished_at=state.finished_at,
        running=[
            SweepRunningJobPublic(
                job_id=r.job.id,
                experiment_id=r.job.experiment_id,
                configuration=r.member.configuration,
                seed=r.member.seed,
                kind=r.job.kind,
                progress=r.job.progress,
                message=r.job.message,
                device=r.job.device,
                worker=r.job.worker,
                cancel_requested=r.job.cancel_requested,
                heartbeat_age_s=age_seconds(r.job.heartbeat_at, now),
            )
            for r in state.running
        ],
        report=ReportPublic(
            status=sweep.report_status,
            mlflow_run_id=sweep.report_run_id,
            error=sweep.report_error,
            files=list(REPORT_FILES) if done else [],
        ),
        mlflow_experiment_id=sweep.mlflow_experiment_id,
    )


def sweep_results(sweep: Sweep, baseline: str | None = None) -> SweepResultsPublic:
    """The comparison, each row against ``baseline`` (UnknownBaselineError: neither a
    configuration's name nor a row's index)."""
    results = sweeps.results(sweep, baseline)
    return SweepResultsPublic.model_validate(
        {
            "sweep_id": sweep.id,
            "metrics": results.metrics,
            "rows": sweeps.results_records(results),
            "baseline": results.baseline,
        }
    )


def cancel_sweep(
    session: Session, sweep: Sweep, principal: Principal
) -> tuple[list[Job], list[str]]:
    """Cancel the sweep's experiments that ``principal`` may change (403 if not the
    sweep's owner or an admin): the jobs that changed, and the experiments left alone
    because another user owns them (shared with one of their submissions)."""
    require_change(principal, f"sweep {sweep.id}", sweep.owner)
    changed, kept = sweeps.cancel(
        session, sweep, lambda experiment: users.may_change(principal, experiment.owner)
    )
    session.commit()
    return changed, kept


def report_run(sweep: Sweep) -> str:
    """The sweep's report run; ArtifactNotFoundError (404) with the reason when none."""
    if sweep.report_status == ReportStatus.DONE and sweep.report_run_id:
        return sweep.report_run_id
    reasons = {
        ReportStatus.NONE: "it is built when the sweep finishes",
        ReportStatus.BUILDING: "it is being built; try again in a few seconds",
        ReportStatus.FAILED: f"building it failed: {sweep.report_error}; POST .../report "
        "builds it again",
    }
    reason = reasons.get(ReportStatus(sweep.report_status), sweep.report_status)
    raise ArtifactNotFoundError(f"sweep {sweep.id} has no report yet: {reason}")


def rebuild_report(session: Session, settings: Settings, database: Database, sweep: Sweep) -> None:
    """Build (or rebuild) the report now; 409 while jobs are unfinished or another build runs."""
    try:
        built = reports.build(settings, database, sweep.id, rebuild=True)
    except reports.SweepNotFinishedError as exc:
        raise ConflictError(str(exc)) from exc
    if built is None:
        raise ConflictError(f"the report of sweep {sweep.id} is being built right now")
    session.expire_all()
