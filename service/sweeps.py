"""Sweeps: a grid expanded into experiments, their progress, their results.

``plan`` expands and validates a ``SweepSpec`` without touching the database: a grid
past the size limit is refused before it is expanded, and every invalid point is
reported with a path into the request (``grid.regularizers.1.0.weight`` for a grid
value, ``base.training.lr`` for the base). ``submit_sweep`` records the sweep and one
experiment per distinct spec; an identical spec already in the job store (from this
sweep submitted before, or from any other submission) is reused, never run twice.
Resubmitting the same sweep (same name and specs) returns the existing one.

Functions take a Session and flush; the caller commits, as in ``jobstore``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, exists, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from regcore import grid as grids
from regcore.compare import ComparisonRow, compare, result_metrics
from regcore.spec import ExperimentSpec, SweepSpec
from service import jobstore
from service.tables import (
    Experiment,
    Job,
    JobState,
    ReportStatus,
    Sweep,
    SweepMember,
    new_id,
    utcnow,
)

MAX_REPORTED_ERRORS = 20
RECENT_JOBS_PER_KIND = 100  # other sweeps' jobs an expected duration is averaged over
STATES = tuple(state.value for state in JobState)


class SweepTooLargeError(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        self.size, self.limit = size, limit
        super().__init__(
            f"the grid expands to {size} experiments, over the limit of {limit} per sweep "
            "(REGBENCH_MAX_SWEEP_SIZE); split it into several sweeps"
        )


class SweepInvalidError(ValueError):
    """Grid points that are not valid specs; ``errors`` in pydantic's shape, each ``loc``
    a path into the request body (``("grid", "regularizers", 1, 0, "weight")``)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class PlannedPoint:
    spec: ExperimentSpec
    configuration: str  # the point's label without the seed
    seed: int


@dataclass(frozen=True)
class SweepPlan:
    name: str
    points: list[PlannedPoint]
    sweep_hash: str  # identifies the sweep: its name and its points' specs


def grid_size(grid: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in grid.values())


def plan(document: SweepSpec, max_size: int) -> SweepPlan:
    """Expand and validate; raises SweepTooLargeError or SweepInvalidError."""
    size = grid_size(document.grid)
    if size > max_size:
        raise SweepTooLargeError(size, max_size)
    paths = list(document.grid)
    try:
        expanded = grids.expand(document.base, document.grid)
    except grids.GridError as exc:
        raise SweepInvalidError([_error(("grid",), str(exc), "grid_path")]) from None
    indices = itertools.product(*(range(len(document.grid[path])) for path in paths))
    points: list[PlannedPoint] = []
    errors: dict[tuple[Any, ...], dict[str, Any]] = {}
    for point, chosen in zip(expanded, indices, strict=True):
        try:
            spec = ExperimentSpec.model_validate(point.spec)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                loc = _request_loc(tuple(error["loc"]), point.spec, document.base, paths, chosen)
                errors.setdefault((loc, error["msg"]), _error(loc, error["msg"], error["type"]))
            continue
        points.append(PlannedPoint(spec, point.configuration, spec.training.seed))
    if errors:
        raise SweepInvalidError(list(errors.values())[:MAX_REPORTED_ERRORS])
    name = document.label()
    digest = hashlib.sha256(
        json.dumps([name, [point.spec.spec_hash() for point in points]]).encode()
    )
    return SweepPlan(name, points, digest.hexdigest())


def _request_loc(
    loc: tuple[Any, ...],
    spec: dict[str, Any],
    base: dict[str, Any],
    paths: Sequence[str],
    chosen: Sequence[int],
) -> tuple[Any, ...]:
    """A spec error's path -> where it was written: under the grid entry whose dotted
    path the error lies in (with the index of the value chosen), else under the base.
    An error at a node the grid path created (a list the base lacks) is the grid's too."""
    text = tuple(str(part) for part in loc)
    best: tuple[int, int] | None = None  # (path length, which path)
    for number, path in enumerate(paths):
        parts = _resolved(spec, path)
        if text[: len(parts)] == parts and (best is None or len(parts) > best[0]):
            best = (len(parts), number)
    if best is not None:
        length, number = best
        return ("grid", paths[number], chosen[number], *loc[length:])
    if not _exists(base, loc):
        for number, path in enumerate(paths):
            if _resolved(spec, path)[: len(text)] == text:  # an ancestor the path created
                return ("grid", paths[number], chosen[number])
    return ("base", *loc)


def _exists(document: Any, loc: tuple[Any, ...]) -> bool:
    node = document
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (in_dict or in_list):
            return False
        node = node[part]
    return True


def _resolved(spec: Any, path: str) -> tuple[str, ...]:
    """A dotted path as pydantic reports it: negative list indices made positive."""
    parts: list[str] = []
    node = spec
    for key in path.split("."):
        if isinstance(node, list) and key.lstrip("-").isdigit():
            index = int(key) + (len(node) if int(key) < 0 else 0)
            parts.append(str(index))
            node = node[index] if 0 <= index < len(node) else None
        else:
            parts.append(key)
            node = node.get(key) if isinstance(node, dict) else None
    return tuple(parts)


def _error(loc: tuple[Any, ...], message: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": message, "type": kind}


# --------------------------------------------------------------------------- submitting


@dataclass(frozen=True)
class SweepSubmission:
    sweep: Sweep
    created: bool  # False: the same sweep was submitted before; this is that one
    new_experiments: list[Experiment] = field(default_factory=list)


def submit_sweep(
    session: Session,
    planned: SweepPlan,
    document: SweepSpec,
    *,
    mlflow_experiment_id: str | None,
    owner: str = "anonymous",
    default_queue: str = "cpu",
    force: bool = False,
) -> SweepSubmission:
    """Record the sweep and its experiments (the caller commits, then enqueues the new
    experiments' runnable jobs). ``force``: a new sweep with new experiments throughout."""
    sweep_hash = f"{planned.sweep_hash[:48]}:{new_id()[:15]}" if force else planned.sweep_hash
    existing = session.scalar(select(Sweep).where(Sweep.sweep_hash == sweep_hash))
    if existing is not None:
        return SweepSubmission(existing, created=False)
    sweep = Sweep(
        name=planned.name,
        owner=owner,
        sweep_hash=sweep_hash,
        base=document.base,
        grid=document.grid,
        size=0,
        mlflow_experiment_id=mlflow_experiment_id,
    )
    try:
        with session.begin_nested():
            session.add(sweep)
            session.flush()
    except IntegrityError:  # lost a race with the same sweep submitted at the same moment
        existing = session.scalar(select(Sweep).where(Sweep.sweep_hash == sweep_hash))
        if existing is None:
            raise
        return SweepSubmission(existing, created=False)
    new: list[Experiment] = []
    members: dict[str, SweepMember] = {}
    seen: set[str] = set()  # spec hashes: two points may share a spec (a label changed)
    for position, point in enumerate(planned.points):
        spec_hash = point.spec.spec_hash()
        if spec_hash in seen:  # even with force: one experiment per spec in a sweep
            continue
        seen.add(spec_hash)
        submission = jobstore.submit_experiment(
            session,
            point.spec,
            owner=owner,
            default_queue=default_queue,
            sweep_id=sweep.id,
            configuration=point.configuration,
            force=force,
        )
        experiment = submission.experiment
        if submission.created:
            experiment.mlflow_experiment_id = mlflow_experiment_id
            new.append(experiment)
        if experiment.id not in members:
            members[experiment.id] = SweepMember(
                sweep_id=sweep.id,
                experiment_id=experiment.id,
                position=position,
                configuration=point.configuration,
                seed=point.seed,
            )
    session.add_all(members.values())
    sweep.size = len(members)
    session.flush()
    return SweepSubmission(sweep, created=True, new_experiments=new)


def mlflow_experiment_name(planned: SweepPlan) -> str:
    """The sweep's own MLflow experiment: its runs and its report, side by side."""
    return f"sweep {planned.name} {planned.sweep_hash[:8]}"


# --------------------------------------------------------------------------- reading


# A sweep with its members, their experiments and jobs: everything progress() reads.
_WITH_JOBS = (
    selectinload(Sweep.members).selectinload(SweepMember.experiment).selectinload(Experiment.jobs)
)


def load(session: Session, sweep_id: str) -> Sweep | None:
    return session.get(Sweep, sweep_id, options=[_WITH_JOBS])


def list_sweeps(session: Session, *, limit: int, offset: int) -> tuple[list[Sweep], int]:
    """A page of sweeps, newest first, and how many there are in all."""
    count = session.scalar(select(func.count()).select_from(Sweep)) or 0
    page = session.scalars(
        select(Sweep)
        .options(_WITH_JOBS)
        .order_by(Sweep.created_at.desc(), Sweep.id)
        .limit(limit)
        .offset(offset)
    )
    return list(page), count


def sweep_status(job_states: dict[str, int], experiment_states: dict[str, int]) -> str:
    """One word: queued until a job starts, running while any job is queued or running
    (an experiment whose attack failed may still be running its boundary job), then
    failed if any experiment failed, cancelled if any was cancelled, else succeeded."""
    if job_states.get("queued", 0) or job_states.get("running", 0):
        started = sum(job_states.get(s, 0) for s in STATES if s != "queued")
        return "running" if started else "queued"
    for state in ("failed", "cancelled"):
        if experiment_states.get(state):
            return state
    return "succeeded"


def is_finished(sweep: Sweep) -> bool:
    return all(
        job.state in jobstore.TERMINAL for member in sweep.members for job in member.experiment.jobs
    )


@dataclass(frozen=True)
class RunningJob:
    job: Job
    member: SweepMember


@dataclass(frozen=True)
class SweepProgress:
    status: str
    experiments: dict[str, int]  # experiment state -> count
    jobs: dict[str, int]  # job state -> count
    progress: float  # 0..1, weighted by the expected duration of each job's kind
    eta_s: float | None  # None until a job of each remaining kind has finished once
    started_at: datetime | None
    finished_at: datetime | None
    running: list[RunningJob]


def progress(sweep: Sweep, *, expected_s: dict[str, float], workers: int) -> SweepProgress:
    """Counts, weighted progress and an ETA for a loaded sweep.

    ``expected_s``: expected seconds per job kind (``expected_durations``); ``workers``:
    live workers that share the remaining work. The ETA is the remaining expected work
    (a running job counts its unfinished fraction) divided among the workers."""
    experiments = dict.fromkeys(STATES, 0)
    jobs = dict.fromkeys(STATES, 0)
    running: list[RunningJob] = []
    done_work = total_work = remaining = 0.0
    unknown = False
    started: list[datetime] = []
    finished: list[datetime] = []
    for member in sweep.members:
        experiments[jobstore.experiment_status(member.experiment)] += 1
        for job in member.experiment.jobs:
            jobs[job.state] += 1
            weight = expected_s.get(job.kind)
            known = weight is not None
            weight = weight if weight is not None else _fallback(expected_s)
            total_work += weight
            if job.started_at is not None:
                started.append(job.started_at)
            if job.state in jobstore.TERMINAL:
                done_work += weight
                if job.finished_at is not None:
                    finished.append(job.finished_at)
                continue
            done_work += weight * job.progress
            remaining += weight * (1.0 - job.progress)
            unknown = unknown or not known
            if job.state == JobState.RUNNING:
                running.append(RunningJob(job, member))
    status = sweep_status(jobs, experiments)
    if status in ("succeeded", "failed", "cancelled"):
        eta: float | None = 0.0
    elif unknown or not expected_s:
        eta = None
    else:
        eta = round(remaining / max(1, workers), 1)
    return SweepProgress(
        status=status,
        experiments=experiments,
        jobs=jobs,
        progress=round(done_work / total_work, 4) if total_work else 1.0,
        eta_s=eta,
        started_at=min(started, default=None),
        finished_at=max(finished, default=None) if status in jobstore.TERMINAL else None,
        running=sorted(running, key=lambda r: r.member.position),
    )


def _fallback(expected_s: dict[str, float]) -> float:
    return sum(expected_s.values()) / len(expected_s) if expected_s else 1.0


def expected_durations(session: Session, sweep: Sweep) -> dict[str, float]:
    """Mean seconds of succeeded jobs per kind: this sweep's own where it has finished one
    of that kind (same models, same data), else every sweep's."""
    own: dict[str, list[float]] = {}
    for member in sweep.members:
        for job in member.experiment.jobs:
            if job.state == JobState.SUCCEEDED and job.started_at and job.finished_at:
                seconds = (job.finished_at - job.started_at).total_seconds()
                own.setdefault(job.kind, []).append(seconds)
    expected = {kind: sum(values) / len(values) for kind, values in own.items()}
    kinds = {job.kind for member in sweep.members for job in member.experiment.jobs}
    missing = kinds - set(expected)
    if missing:  # one aggregate query: a poll never loads the store's finished jobs
        newest_first = func.row_number().over(
            partition_by=Job.kind, order_by=Job.finished_at.desc()
        )
        recent = (
            select(
                Job.kind,
                jobstore.seconds_between(session, Job.started_at, Job.finished_at).label("s"),
                newest_first.label("rank"),
            )
            .where(
                Job.kind.in_(missing),
                Job.state == JobState.SUCCEEDED,
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .subquery()
        )
        averages = session.execute(
            select(recent.c.kind, func.avg(recent.c.s))
            .where(recent.c.rank <= RECENT_JOBS_PER_KIND)
            .group_by(recent.c.kind)
        )
        expected |= {kind: float(seconds) for kind, seconds in averages}
    return expected


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SweepResults:
    metrics: list[str]  # the columns, in reading order (``regcore.compare.result_metrics``)
    rows: list[ComparisonRow]
    experiments: dict[str, int]  # configuration -> experiments in it
    succeeded: dict[str, int]  # configuration -> succeeded experiments


def results(sweep: Sweep) -> SweepResults:
    """One row per configuration (grid order), mean ± std and n over the experiments
    that have each metric; a failed experiment still counts with what it measured."""
    members = list(sweep.members)
    keys = {key for m in members for key in (m.experiment.metrics or {})}
    metrics = result_metrics(keys)
    rows = compare(((m.configuration, m.experiment.metrics or {}) for m in members), metrics)
    experiments: dict[str, int] = {}
    succeeded: dict[str, int] = {}
    for member in members:
        experiments[member.configuration] = experiments.get(member.configuration, 0) + 1
        ok = jobstore.experiment_status(member.experiment) == JobState.SUCCEEDED
        succeeded[member.configuration] = succeeded.get(member.configuration, 0) + int(ok)
    return SweepResults(metrics, rows, experiments, succeeded)


def results_records(results: SweepResults) -> list[dict[str, Any]]:
    """JSON rows: ``{configuration, experiments, succeeded, metrics: {name: {mean, std, n}}}``
    (NaN, from a metric no experiment has, becomes null)."""
    return [
        {
            "configuration": row.configuration,
            "experiments": results.experiments[row.configuration],
            "succeeded": results.succeeded[row.configuration],
            "metrics": {
                name: {"mean": _finite(s.mean), "std": _finite(s.std), "n": s.n}
                for name, s in row.metrics.items()
            },
        }
        for row in results.rows
    ]


def results_csv(results: SweepResults) -> str:
    """One line per configuration: ``configuration,experiments,succeeded`` then
    ``<metric>_mean,<metric>_std,<metric>_n`` for every metric (empty where none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["configuration", "experiments", "succeeded"]
    for name in results.metrics:
        header += [f"{name}_mean", f"{name}_std", f"{name}_n"]
    writer.writerow(header)
    for row in results.rows:
        line: list[Any] = [
            row.configuration,
            results.experiments[row.configuration],
            results.succeeded[row.configuration],
        ]
        for name in results.metrics:
            summary = row.metrics.get(name)
            if summary is None:
                line += ["", "", 0]
            else:
                line += [_csv_number(summary.mean), _csv_number(summary.std), summary.n]
        writer.writerow(line)
    return buffer.getvalue()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _csv_number(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""


# --------------------------------------------------------------------------- cancel, reports


def cancel(session: Session, sweep: Sweep) -> list[Job]:
    """Cancel every experiment of the sweep (queued jobs now, running ones at their next
    heartbeat). An experiment shared with another sweep is cancelled there too."""
    changed: list[Job] = []
    for member in sweep.members:
        changed += jobstore.request_cancel(session, member.experiment)
    return changed


def unfinished_member_jobs(sweep_id: Any) -> Any:
    """SQL: a job of one of the sweep's experiments is still queued or running."""
    return exists().where(
        SweepMember.sweep_id == sweep_id,
        Job.experiment_id == SweepMember.experiment_id,
        Job.state.in_((JobState.QUEUED, JobState.RUNNING)),
    )


def sweeps_needing_report(
    session: Session, stale_before: datetime, among: Iterable[str] | None = None
) -> list[str]:
    """Finished sweeps (every job final) with no report yet, or whose report build was
    abandoned (building since before ``stale_before``: its builder died)."""
    has_members = exists().where(SweepMember.sweep_id == Sweep.id)
    query = select(Sweep.id).where(
        has_members,
        not_(unfinished_member_jobs(Sweep.id)),
        or_(
            Sweep.report_status == ReportStatus.NONE,
            and_(
                Sweep.report_status == ReportStatus.BUILDING,
                Sweep.report_started_at < stale_before,
            ),
        ),
    )
    if among is not None:
        query = query.where(Sweep.id.in_(list(among)))
    return list(session.scalars(query.order_by(Sweep.created_at)))


def sweeps_of_experiment(session: Session, experiment_id: str) -> list[str]:
    query = select(SweepMember.sweep_id).where(SweepMember.experiment_id == experiment_id)
    return list(session.scalars(query))


def claim_report(
    session: Session, sweep_id: str, *, stale_before: datetime, rebuild: bool = False
) -> bool:
    """Atomically take the job of building a sweep's report: one builder wins even when a
    worker and the reconciler try at once. ``rebuild`` also takes a done or failed one."""
    claimable = [ReportStatus.NONE] + ([ReportStatus.DONE, ReportStatus.FAILED] if rebuild else [])
    result = session.execute(
        update(Sweep)
        .where(
            Sweep.id == sweep_id,
            or_(
                Sweep.report_status.in_(claimable),
                and_(
                    Sweep.report_status == ReportStatus.BUILDING,
                    Sweep.report_started_at < stale_before,
                ),
            ),
        )
        .values(report_status=ReportStatus.BUILDING, report_started_at=utcnow(), report_error=None)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1


def finish_report(
    session: Session, sweep_id: str, *, run_id: str | None, error: str | None
) -> None:
    values: dict[str, Any] = {
        "report_status": ReportStatus.FAILED if error else ReportStatus.DONE,
        "report_error": error,
    }
    if run_id is not None:
        values["report_run_id"] = run_id
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )


def stale_report_cutoff(now: datetime, minutes: float = 30.0) -> datetime:
    """A report build is short (seconds); one 'building' for this long was abandoned."""
    return now - timedelta(minutes=minutes)
