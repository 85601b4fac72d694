"""The job store: submissions and every job state transition, each one atomic.

States: queued -> running -> succeeded | failed | cancelled; running -> queued when a
worker's heartbeat stops (attempt counts deliveries; past ``max_attempts`` the job
fails with the reason). Transitions are single conditional UPDATEs, so two workers
given the same job (a redelivery, a reconciler's re-enqueue) cannot both claim it:

    UPDATE jobs SET state='running' ... WHERE id=? AND (state='queued' OR heartbeat stale)

Functions take a Session and flush; the caller commits (one transaction per request
or per worker step). They never talk to the broker: the API commits, then enqueues.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    and_,
    cast,
    exists,
    extract,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from regcore.instability import StoredPrediction, decode_labels, encode_labels
from regcore.spec import ExperimentSpec
from service.tables import (
    Experiment,
    Job,
    JobKind,
    JobState,
    Prediction,
    SweepMember,
    Worker,
    new_id,
    utcnow,
)

TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


BULK_LOOKUP = 500  # values per ``IN (...)``: well under every database's parameter limit


@dataclass(frozen=True)
class Submission:
    experiment: Experiment
    created: bool  # False: an identical spec already existed and was returned


@dataclass(frozen=True)
class SpecToSubmit:
    """A validated spec for ``submit_experiments``, with its hash computed once."""

    spec: ExperimentSpec
    spec_hash: str
    configuration: str | None = None  # a sweep's grid point label


@dataclass(frozen=True)
class NewExperiment:
    """An experiment ``submit_experiments`` recorded."""

    id: str
    spec: dict[str, Any]  # as recorded
    runnable: list[tuple[str, str]]  # (job id, queue) a worker can start now: its train job


@dataclass(frozen=True)
class BulkSubmission:
    experiment_ids: list[str]  # one per spec, in order: a new one or its identical twin
    new: list[NewExperiment]


def stack_key(spec: ExperimentSpec) -> str | None:
    """Experiments with equal keys may train as one stacked model (``regcore.stacked``)."""
    return stack_keys()(spec)


def stack_keys() -> Callable[[ExperimentSpec], str | None]:
    """``stack_key`` for a batch of specs, each part they share dumped once."""
    from regcore.stacked import StackKeys  # torch: only where specs are recorded

    return StackKeys()


def queue_for(spec: ExperimentSpec, default_queue: str) -> str:
    """``resources.queue``: gpu or cpu, or the deployment's default for ``auto``."""
    return default_queue if spec.resources.queue == "auto" else spec.resources.queue


def submit_experiment(
    session: Session,
    spec: ExperimentSpec,
    *,
    owner: str = "anonymous",
    default_queue: str = "cpu",
    sweep_id: str | None = None,
    configuration: str | None = None,
    mlflow_experiment_id: str | None = None,
    force: bool = False,
    spec_hash: str | None = None,
) -> Submission:
    """One experiment: a train job plus one job per analysis, depending on it.

    An identical spec (same hash) returns the existing experiment unless ``force``; the
    unique index on ``dedup_key`` decides, so concurrent submissions cannot both win.
    ``spec_hash``: the spec's hash when the caller has it already.
    """
    spec_hash = spec.spec_hash() if spec_hash is None else spec_hash
    dedup_key = f"{spec_hash}:{new_id()}" if force else spec_hash
    if not force:
        existing = session.scalar(select(Experiment).where(Experiment.dedup_key == dedup_key))
        if existing is not None:
            return Submission(existing, created=False)
    queue = queue_for(spec, default_queue)
    experiment = Experiment(
        name=spec.name,
        owner=owner,
        sweep_id=sweep_id,
        configuration=configuration,
        spec=spec.model_dump(mode="json"),
        spec_hash=spec_hash,
        stack_key=stack_key(spec),
        dedup_key=dedup_key,
        mlflow_experiment_id=mlflow_experiment_id,
    )
    train = Job(id=new_id(), kind=JobKind.TRAIN, queue=queue, state=JobState.QUEUED)
    experiment.jobs.append(train)
    for analysis in spec.analyses:
        experiment.jobs.append(
            Job(
                kind=analysis.name,
                payload=analysis.model_dump(mode="json"),
                depends_on=train.id,
                queue=queue,
                state=JobState.QUEUED,
            )
        )
    try:
        with session.begin_nested():
            session.add(experiment)
            session.flush()
    except IntegrityError:  # lost a race with an identical submission
        existing = session.scalar(select(Experiment).where(Experiment.dedup_key == dedup_key))
        if existing is None:
            raise
        return Submission(existing, created=False)
    return Submission(experiment, created=True)


def submit_experiments(
    session: Session,
    specs: Sequence[SpecToSubmit],
    *,
    owner: str = "anonymous",
    default_queue: str = "cpu",
    sweep_id: str | None = None,
    mlflow_experiment_id: str | None = None,
    force: bool = False,
) -> BulkSubmission:
    """Many experiments at once, as ``submit_experiment`` records each: the identical ones
    already stored are found in one query per ``BULK_LOOKUP`` keys, the new ones written
    with one multi-row INSERT for experiments and one for jobs (train jobs, and analysis
    jobs depending on them), inside a savepoint. An identical spec stored by a concurrent
    submission since the lookup breaks the unique ``dedup_key``: the savepoint is rolled
    back and every spec goes through ``submit_experiment``, which settles each race.
    """
    keys = [f"{item.spec_hash}:{new_id()}" if force else item.spec_hash for item in specs]
    stored = {} if force else _experiments_by_dedup_key(session, keys)
    stack_key_of = stack_keys()
    now = utcnow()
    ticks = itertools.count()  # microseconds after now: rows keep their order by created_at
    experiments: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    new: list[NewExperiment] = []
    for item, key in zip(specs, keys, strict=True):
        if key in stored:  # stored already, or the same spec earlier in this batch
            continue
        experiment_id = stored[key] = new_id()
        spec = item.spec.model_dump(mode="json")
        experiments.append(
            {
                "id": experiment_id,
                "name": item.spec.name,
                "owner": owner,
                "sweep_id": sweep_id,
                "configuration": item.configuration,
                "spec": spec,
                "spec_hash": item.spec_hash,
                "stack_key": stack_key_of(item.spec),
                "dedup_key": key,
                "mlflow_experiment_id": mlflow_experiment_id,
                "created_at": now + timedelta(microseconds=next(ticks)),
            }
        )
        queue = queue_for(item.spec, default_queue)
        train_id = new_id()
        # (id, kind, payload, depends_on): the train job, then one job per analysis
        of_experiment: list[tuple[str, str, dict[str, Any] | None, str | None]] = [
            (train_id, JobKind.TRAIN, None, None)
        ]
        of_experiment += [(new_id(), a["kind"], a, train_id) for a in spec["analyses"]]
        for job_id, kind, payload, depends_on in of_experiment:
            jobs.append(
                {
                    "id": job_id,
                    "experiment_id": experiment_id,
                    "kind": kind,
                    "payload": payload,
                    "depends_on": depends_on,
                    "queue": queue,
                    "state": JobState.QUEUED,
                    "created_at": now + timedelta(microseconds=next(ticks)),
                }
            )
        new.append(NewExperiment(experiment_id, spec, [(train_id, queue)]))
    if experiments:
        try:
            with session.begin_nested():
                # Core inserts of the tables: one executemany each (the ORM's bulk insert
                # splits the batch wherever a row's None columns differ: train vs analysis).
                session.execute(insert(Experiment.__table__), experiments)
                session.execute(insert(Job.__table__), jobs)
        except IntegrityError:  # lost a race with an identical submission: the careful way
            return _submit_one_by_one(
                session,
                specs,
                owner=owner,
                default_queue=default_queue,
                sweep_id=sweep_id,
                mlflow_experiment_id=mlflow_experiment_id,
                force=force,
            )
    return BulkSubmission([stored[key] for key in keys], new)


def _experiments_by_dedup_key(session: Session, keys: Sequence[str]) -> dict[str, str]:
    """dedup key -> experiment id, for the keys already stored."""
    distinct = list(dict.fromkeys(keys))
    found: dict[str, str] = {}
    for start in range(0, len(distinct), BULK_LOOKUP):
        chunk = distinct[start : start + BULK_LOOKUP]
        rows = session.execute(
            select(Experiment.dedup_key, Experiment.id).where(Experiment.dedup_key.in_(chunk))
        )
        found.update((key, experiment_id) for key, experiment_id in rows)
    return found


def _submit_one_by_one(
    session: Session,
    specs: Sequence[SpecToSubmit],
    *,
    owner: str,
    default_queue: str,
    sweep_id: str | None,
    mlflow_experiment_id: str | None,
    force: bool,
) -> BulkSubmission:
    ids: list[str] = []
    new: list[NewExperiment] = []
    for item in specs:
        submission = submit_experiment(
            session,
            item.spec,
            owner=owner,
            default_queue=default_queue,
            sweep_id=sweep_id,
            configuration=item.configuration,
            mlflow_experiment_id=mlflow_experiment_id,
            force=force,
            spec_hash=item.spec_hash,
        )
        experiment = submission.experiment
        ids.append(experiment.id)
        if submission.created:
            train = train_job(experiment)
            new.append(NewExperiment(experiment.id, experiment.spec, [(train.id, train.queue)]))
    return BulkSubmission(ids, new)


def add_analysis_jobs(
    session: Session, experiment: Experiment, analyses: Sequence[dict[str, Any]]
) -> list[Job]:
    """Analysis jobs on an experiment whose train job already succeeded (or will)."""
    train = train_job(experiment)
    jobs = [
        Job(
            kind=analysis["kind"],
            payload=dict(analysis),
            depends_on=train.id,
            queue=train.queue,
            state=JobState.QUEUED,
        )
        for analysis in analyses
    ]
    experiment.jobs.extend(jobs)
    session.flush()
    return jobs


def train_job(experiment: Experiment) -> Job:
    return next(job for job in experiment.jobs if job.kind == JobKind.TRAIN)


def experiment_status(experiment: Experiment) -> str:
    """One word for an experiment from its jobs' states."""
    states = {job.state for job in experiment.jobs}
    for state in (JobState.FAILED, JobState.CANCELLED, JobState.RUNNING):
        if state in states:
            return state.value
    if states == {JobState.SUCCEEDED}:
        return JobState.SUCCEEDED.value
    if JobState.SUCCEEDED in states:
        return JobState.RUNNING.value  # training done, analyses waiting
    return JobState.QUEUED.value


# --------------------------------------------------------------------------- broker bookkeeping


def mark_enqueued(session: Session, job_ids: Sequence[str]) -> None:
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids))
            .values(enqueued_at=utcnow())
            .execution_options(synchronize_session="fetch")  # loaded Jobs see the new value
        )


def runnable_queued_jobs(session: Session, enqueued_before: datetime) -> list[Job]:
    """Queued jobs that the broker may have lost: never enqueued, or enqueued before the
    cut-off and still unclaimed, whose dependency (if any) has succeeded."""
    parent = aliased(Job)
    dependency_done = or_(
        Job.depends_on.is_(None),
        exists().where(and_(parent.id == Job.depends_on, parent.state == JobState.SUCCEEDED)),
    )
    query = select(Job).where(
        Job.state == JobState.QUEUED,
        Job.cancel_requested.is_(False),
        or_(Job.enqueued_at.is_(None), Job.enqueued_at < enqueued_before),
        dependency_done,
    )
    return list(session.scalars(query.order_by(Job.created_at)))


def dependents_ready(session: Session, job_id: str) -> list[Job]:
    """Queued jobs waiting on ``job_id`` (to enqueue once it succeeded)."""
    query = select(Job).where(Job.depends_on == job_id, Job.state == JobState.QUEUED)
    return list(session.scalars(query))


# --------------------------------------------------------------------------- worker side


def claim(
    session: Session,
    job_id: str,
    *,
    worker: str,
    device: str | None,
    stale_before: datetime,
    max_attempts: int,
) -> Job | None:
    """Atomically take a job; None if another worker has it, it finished, it was cancelled,
    or its dependency has not succeeded. Past ``max_attempts`` the job fails instead."""
    now = utcnow()
    parent = aliased(Job)
    claimable = and_(
        Job.id == job_id,
        Job.cancel_requested.is_(False),
        or_(
            Job.state == JobState.QUEUED,
            and_(Job.state == JobState.RUNNING, Job.heartbeat_at < stale_before),
        ),
        or_(
            Job.depends_on.is_(None),
            exists().where(and_(parent.id == Job.depends_on, parent.state == JobState.SUCCEEDED)),
        ),
    )
    exhausted = session.execute(
        update(Job)
        .where(claimable, Job.attempt >= max_attempts)
        .values(
            state=JobState.FAILED,
            finished_at=now,
            error=f"gave up after {max_attempts} attempts (worker lost each time)",
        )
    )
    if exhausted.rowcount:
        return None
    result = session.execute(
        update(Job)
        .where(claimable)
        .values(
            state=JobState.RUNNING,
            attempt=Job.attempt + 1,
            worker=worker,
            device=device,
            started_at=now,
            heartbeat_at=now,
            error=None,
        )
    )
    if result.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def claim_companions(
    session: Session,
    job: Job,
    *,
    worker: str,
    device: str | None,
    stale_before: datetime,
    max_attempts: int,
    limit: int,
) -> list[Job]:
    """Queued train jobs that may train stacked with the claimed train job ``job``: of
    the same sweep, on the same queue, with the same stack key (they differ only in
    seeds and numeric params), oldest first; each claimed atomically, at most ``limit``.
    A job released from a failed stack (``payload.stack`` false) never stacks again."""
    experiment = job.experiment
    if (
        limit < 1
        or job.kind != JobKind.TRAIN
        or experiment.stack_key is None
        or experiment.sweep_id is None
        or not _may_stack(job)
    ):
        return []
    candidates = session.scalars(
        select(Job)
        .join(Experiment, Experiment.id == Job.experiment_id)
        .where(
            Experiment.stack_key == experiment.stack_key,
            Experiment.sweep_id == experiment.sweep_id,
            Job.kind == JobKind.TRAIN,
            Job.state == JobState.QUEUED,
            Job.queue == job.queue,
            Job.cancel_requested.is_(False),
            Job.id != job.id,
        )
        .order_by(Job.created_at)
        .limit(limit * 2)
    )
    wanted = [candidate.id for candidate in candidates if _may_stack(candidate)]
    claimed = []
    for job_id in wanted:
        companion = claim(
            session,
            job_id,
            worker=worker,
            device=device,
            stale_before=stale_before,
            max_attempts=max_attempts,
        )
        if companion is not None:
            claimed.append(companion)
            if len(claimed) == limit:
                break
    return claimed


def _may_stack(job: Job) -> bool:
    return (job.payload or {}).get("stack", True) is not False


def release(
    session: Session,
    job_id: str,
    worker: str,
    *,
    reason: str,
    count_attempt: bool,
    stack: bool = True,
) -> bool:
    """running -> queued for a job this worker holds but will not finish: a companion of
    a stack that stopped for another member's sake (``count_attempt`` false: not its
    fault), or a member of a stack that failed as a whole (``stack`` false: it trains on
    its own next time). Its checkpoint stays; the next attempt resumes from it."""
    owned = and_(Job.id == job_id, Job.worker == worker, Job.state == JobState.RUNNING)
    values: dict[str, Any] = {
        "state": JobState.QUEUED,
        "worker": None,
        "enqueued_at": None,
        "heartbeat_at": None,
        "message": reason,
    }
    if not count_attempt:
        values["attempt"] = Job.attempt - 1
    if not stack:
        values["payload"] = {"stack": False}
    result = session.execute(update(Job).where(owned).values(**values))
    return result.rowcount == 1


def heartbeat(
    session: Session,
    job_id: str,
    worker: str,
    *,
    progress: float | None = None,
    message: str | None = None,
) -> bool:
    """Record liveness and progress; returns True when a cancel was requested (or the job
    is no longer this worker's), i.e. when the supervisor should stop the run."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = progress
    if message is not None:
        values["message"] = message
    owned = and_(Job.id == job_id, Job.worker == worker, Job.state == JobState.RUNNING)
    result = session.execute(update(Job).where(owned).values(**values))
    if result.rowcount != 1:
        return True
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def set_mlflow_run(session: Session, job_id: str, run_id: str) -> None:
    job = session.get(Job, job_id)
    if job is not None:
        job.mlflow_run_id = run_id
        if job.kind == JobKind.TRAIN:
            job.experiment.mlflow_run_id = run_id


def finish(
    session: Session,
    job_id: str,
    worker: str,
    state: JobState,
    *,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
    attempt: int | None = None,
) -> bool:
    """running -> succeeded | failed | cancelled, only by the worker that holds the job.

    With ``attempt``, also a job the reaper put back in the queue since (its heartbeat
    went stale while the job store was unreachable) that no worker has claimed again
    (still queued at that attempt): the result of the attempt that did the work is kept,
    and the job never runs again for an outage of the job store."""
    if not state.finished:
        raise ValueError(f"finish() needs a final state, got {state}")
    owned = and_(Job.id == job_id, Job.worker == worker, Job.state == JobState.RUNNING)
    if attempt is not None:
        requeued = and_(
            Job.id == job_id,
            Job.state == JobState.QUEUED,
            Job.worker.is_(None),
            Job.attempt == attempt,
            Job.cancel_requested.is_(False),
        )
        owned = or_(owned, requeued)
    values: dict[str, Any] = {
        "state": state,
        "finished_at": utcnow(),
        "error": error,
        "worker": worker,  # (a requeued job's was cleared)
    }
    if state == JobState.SUCCEEDED:
        values["progress"] = 1.0
    result = session.execute(update(Job).where(owned).values(**values))
    if result.rowcount == 1 and state != JobState.SUCCEEDED:
        close_dependents(session, [job_id], state)
    if result.rowcount == 1 and metrics:
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        # Lock the row: analysis jobs of one experiment may finish at the same moment on
        # two workers, and each merges its metrics into the others'.
        experiment = session.get(
            Experiment, job.experiment_id, with_for_update=True, populate_existing=True
        )
        assert experiment is not None
        experiment.metrics = {**(experiment.metrics or {}), **metrics}
    return result.rowcount == 1


def close_dependents(session: Session, parent_ids: Sequence[str], parent_state: JobState) -> None:
    """Jobs waiting on a job that will never succeed can never run: close them too (a
    cancelled parent cancels them, a failed one fails them), with the reason."""
    state = JobState.CANCELLED if parent_state == JobState.CANCELLED else JobState.FAILED
    waiting = and_(Job.depends_on.in_(parent_ids), Job.state == JobState.QUEUED)
    session.execute(
        update(Job)
        .where(waiting)
        .values(
            state=state, finished_at=utcnow(), error=f"not run: the job it needs {parent_state}"
        )
        .execution_options(synchronize_session="fetch")
    )


def request_cancel(session: Session, experiment: Experiment) -> list[Job]:
    """Queued jobs are cancelled at once (they will never run); running ones get a flag
    that their supervisor sees at its next heartbeat. Returns the jobs that changed."""
    changed = []
    now = utcnow()
    for job in experiment.jobs:
        if job.state == JobState.QUEUED:
            job.state, job.finished_at, job.cancel_requested = JobState.CANCELLED, now, True
            changed.append(job)
        elif job.state == JobState.RUNNING and not job.cancel_requested:
            job.cancel_requested = True
            changed.append(job)
    session.flush()
    return changed


def requeue_stale(session: Session, stale_before: datetime, max_attempts: int) -> list[str]:
    """The reaper: running jobs whose heartbeat stopped go back to queued (or fail once
    their attempts are used up). Returns the ids put back in the queue."""
    stale = and_(Job.state == JobState.RUNNING, Job.heartbeat_at < stale_before)
    exhausted = list(session.scalars(select(Job.id).where(stale, Job.attempt >= max_attempts)))
    session.execute(
        update(Job)
        .where(stale, Job.attempt >= max_attempts)
        .values(
            state=JobState.FAILED,
            finished_at=utcnow(),
            error=f"worker lost; gave up after {max_attempts} attempts",
        )
    )
    if exhausted:
        close_dependents(session, exhausted, JobState.FAILED)
    session.execute(  # a lost job that was being cancelled is simply cancelled
        update(Job)
        .where(stale, Job.cancel_requested.is_(True))
        .values(state=JobState.CANCELLED, finished_at=utcnow())
    )
    ids = list(session.scalars(select(Job.id).where(stale)))
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(state=JobState.QUEUED, worker=None, enqueued_at=None, message="requeued")
        )
    return ids


def worker_heartbeat(
    session: Session, name: str, hostname: str, queues: str, device: str | None, slots: int = 1
) -> None:
    worker = session.get(Worker, name)
    if worker is None:
        session.add(Worker(name=name, hostname=hostname, queues=queues, device=device, slots=slots))
    else:
        worker.heartbeat_at, worker.queues, worker.device = utcnow(), queues, device
        worker.slots = slots
    session.flush()


def seconds_between(
    session: Session, start: ColumnElement[datetime], end: ColumnElement[datetime]
) -> ColumnElement[float]:
    """SQL for the seconds from ``start`` to ``end``, on SQLite and on PostgreSQL."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite keeps text timestamps; julianday reads them to the millisecond, so
        # rounding to 3 places gives back exact milliseconds (60 s lands in le="60").
        return func.round((func.julianday(end) - func.julianday(start)) * 86400.0, 3)
    return cast(extract("epoch", end - start), Float)  # PostgreSQL: exact microseconds


def live_workers(session: Session, seen_within: timedelta) -> list[Worker]:
    cutoff = utcnow() - seen_within
    return list(session.scalars(select(Worker).where(Worker.heartbeat_at >= cutoff)))


# --------------------------------------------------------------------------- predictions


def store_predictions(
    session: Session, experiment_id: str, prediction: StoredPrediction, split: str = "test"
) -> None:
    """Record (or replace: a retrained job predicts again) an experiment's final labels."""
    data, dtype = encode_labels(prediction.labels)
    session.merge(
        Prediction(
            experiment_id=experiment_id,
            split=split,
            labels=data,
            dtype=dtype,
            n=len(prediction.labels),
            labels_checksum=prediction.labels_checksum,
            created_at=utcnow(),
        )
    )
    session.flush()


def stored_predictions(
    session: Session,
    experiment_ids: Sequence[str] | None = None,
    *,
    sweep_id: str | None = None,
    split: str = "test",
) -> dict[str, StoredPrediction]:
    """The stored predictions of these experiments, or of a sweep's members, in one query;
    experiments without any are absent."""
    query = select(Prediction).where(Prediction.split == split)
    if sweep_id is not None:
        query = query.join(
            SweepMember, SweepMember.experiment_id == Prediction.experiment_id
        ).where(SweepMember.sweep_id == sweep_id)
    if experiment_ids is not None:
        if not experiment_ids:
            return {}
        query = query.where(Prediction.experiment_id.in_(list(experiment_ids)))
    rows = session.scalars(query)
    return {
        row.experiment_id: StoredPrediction(
            decode_labels(row.labels, row.dtype), row.labels_checksum
        )
        for row in rows
    }
