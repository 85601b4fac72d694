"""Sweeps: a grid expanded into experiments, their progress, their results.

``plan`` expands and validates a ``SweepSpec`` without touching the database: a grid
past the size limit is refused before it is expanded, and every invalid point is
reported with a path into the request (``grid.regularizers.1.0.weight`` for a grid
value, ``base.training.lr`` for the base). ``submit_sweep`` records the sweep and one
experiment per distinct spec; an identical spec already in the job store (from this
sweep submitted before, or from any other submission) is reused, never run twice.
Resubmitting the same sweep (same name and specs) returns the existing one, with
the points it lacks added if an older version left it partial.

At scale: a point is validated field by field, each distinct field value once, and
hashed once; its experiments are written in bulk (``jobstore.submit_experiments``).
Progress is counted in SQL for a whole page of sweeps (``tallies``), never by loading
their members; ``summarize`` turns a tally into counts, progress and an ETA, the same
for a tally counted from a loaded sweep (``tally``).

Functions take a Session and flush; the caller commits, as in ``jobstore``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import hashlib
import io
import itertools
import json
import math
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    exists,
    func,
    insert,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from regcore import grid as grids
from regcore.compare import ComparisonRow, compare, result_metrics
from regcore.instability import METRICS as INSTABILITY_METRICS
from regcore.instability import (
    Instability,
    StoredPrediction,
    add_instability,
    configuration_instability,
)
from regcore.significance import Difference, versus_baseline
from regcore.spec import ExperimentSpec, SpecHasher, SweepSpec
from service import jobstore, limits
from service.tables import (
    Experiment,
    Job,
    JobKind,
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
    spec_hash: str  # computed once, here


@dataclass(frozen=True)
class SweepPlan:
    name: str
    points: list[PlannedPoint]
    sweep_hash: str  # identifies the sweep: its name and its points' specs


def grid_size(grid: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in grid.values())


def plan(
    document: SweepSpec,
    max_size: int,
    *,
    max_analyses: int | None = None,
    max_jobs: int | None = None,
) -> SweepPlan:
    """Expand and validate; raises SweepTooLargeError or SweepInvalidError, also for a
    point listing more than ``max_analyses`` analyses (the error names where they were
    written) or points that would make more than ``max_jobs`` jobs in all (a train job
    and one per analysis each)."""
    size = grid_size(document.grid)
    if size > max_size:
        raise SweepTooLargeError(size, max_size)
    paths = list(document.grid)
    fields = _PointFields(document.base, document.grid)
    valid: list[tuple[ExperimentSpec, str]] = []  # (spec, configuration)
    errors: dict[tuple[Any, ...], dict[str, Any]] = {}
    for chosen in itertools.product(*(range(len(document.grid[path])) for path in paths)):
        try:
            written = fields.spec(chosen)
        except grids.GridError as exc:
            message = _grid_error(document, exc)
            # the entry and the value at fault, when the error names one
            where = (
                ("grid", exc.path, chosen[paths.index(exc.path)])
                if exc.path in paths
                else ("grid",)
            )
            raise SweepInvalidError([_error(where, message, "grid_path")]) from None
        spec = fields.validated(chosen)
        if spec is None:  # invalid somewhere: validated whole, for the errors' paths
            try:
                spec = ExperimentSpec.model_validate(written)
            except ValidationError as exc:
                for error in exc.errors(include_url=False):
                    loc = _request_loc(tuple(error["loc"]), written, document.base, paths, chosen)
                    errors.setdefault((loc, error["msg"]), _error(loc, error["msg"], error["type"]))
                continue
        if max_analyses is not None and len(spec.analyses) > max_analyses:
            loc = _request_loc(("analyses",), written, document.base, paths, chosen)
            error = limits.too_many_analyses(len(spec.analyses), max_analyses, loc)
            errors.setdefault((loc, error["msg"]), {**error, "loc": loc})
            continue
        values = {
            path: document.grid[path][index] for path, index in zip(paths, chosen, strict=True)
        }
        valid.append((spec, grids.GridPoint(written, values).configuration))
    if errors:
        raise SweepInvalidError(list(errors.values())[:MAX_REPORTED_ERRORS])
    jobs = sum(1 + len(spec.analyses) for spec, _ in valid)
    if max_jobs is not None and jobs > max_jobs:
        raise SweepInvalidError(limits.too_many_jobs(jobs, max_jobs, ("grid",)).errors)
    hasher = SpecHasher()  # the points share their parts: each part written once
    points = [PlannedPoint(spec, label, spec.training.seed, hasher(spec)) for spec, label in valid]
    name = document.label()
    digest = hashlib.sha256(json.dumps([name, [point.spec_hash for point in points]]).encode())
    return SweepPlan(name, points, digest.hexdigest())


def _grid_error(document: SweepSpec, exc: grids.GridError) -> str:
    """The message ``regcore.grid.expand`` gives for this grid (the first point's error)."""
    try:
        grids.expand(document.base, document.grid)
    except grids.GridError as first:
        return str(first)
    return str(exc)


_UNSET: Any = object()
_INVALID: Any = object()


class _PointFields:
    """A grid's points, written and validated one top-level spec field at a time.

    A field's value at a point depends only on the values chosen for the grid paths under
    it, so each distinct value is copied once and validated once (by the field's own
    type, as ``ExperimentSpec`` declares it), not once per point: a grid of 4 regularizer
    lists x 250 seeds validates 4 lists and 250 training sections, and its analyses,
    model and dataset once. A point's spec is then validated from those parts, which
    pydantic takes as they are, so the spec's own validators still run on every point.
    Fields the base leaves alone are shared with the base, never copied or changed.
    """

    def __init__(self, base: Mapping[str, Any], grid: Mapping[str, list[Any]]) -> None:
        self.base, self.grid, self.paths = base, grid, list(grid)
        self.under: dict[str, list[int]] = {}  # top-level key -> numbers of its grid paths
        for number, path in enumerate(self.paths):
            self.under.setdefault(path.split(".")[0], []).append(number)
        self.keys = list(dict.fromkeys([*base, *self.under]))  # as grids.expand orders them
        self._written: dict[tuple[str, tuple[int, ...]], Any] = {}
        self._validated: dict[tuple[str, tuple[int, ...]], Any] = {}

    def _key(self, name: str, chosen: Sequence[int]) -> tuple[str, tuple[int, ...]]:
        return name, tuple(chosen[number] for number in self.under.get(name, ()))

    def _written_field(self, name: str, chosen: Sequence[int]) -> Any:
        if name not in self.under:
            return self.base[name]
        key = self._key(name, chosen)
        value = self._written.get(key, _UNSET)
        if value is _UNSET:
            holder = {name: copy.deepcopy(self.base[name])} if name in self.base else {}
            for number in self.under[name]:
                path = self.paths[number]
                grids.set_path(holder, path, copy.deepcopy(self.grid[path][chosen[number]]))
            value = self._written[key] = holder[name]
        return value

    def spec(self, chosen: Sequence[int]) -> dict[str, Any]:
        """The point as ``regcore.grid.expand`` writes it; raises GridError for a bad path."""
        return {name: self._written_field(name, chosen) for name in self.keys}

    def validated(self, chosen: Sequence[int]) -> ExperimentSpec | None:
        """The point's spec, or None if it is invalid (or has a field no spec has)."""
        parts: dict[str, Any] = {}
        for name in self.keys:
            adapter = _field_adapter(name)
            if adapter is None:
                return None
            key = self._key(name, chosen)
            part = self._validated.get(key, _UNSET)
            if part is _UNSET:
                try:
                    part = adapter.validate_python(self._written_field(name, chosen))
                except ValidationError:
                    part = _INVALID
                self._validated[key] = part
            if part is _INVALID:
                return None
            parts[name] = part
        try:
            return ExperimentSpec.model_validate(parts)
        except ValidationError:
            return None


@functools.cache
def _field_adapter(name: str) -> TypeAdapter[Any] | None:
    """A validator for one field of ExperimentSpec, with its constraints; None: no such field."""
    declared = ExperimentSpec.model_fields.get(name)
    if declared is None:
        return None
    if not declared.metadata:
        return TypeAdapter(declared.annotation)
    return TypeAdapter(Annotated[(declared.annotation, *declared.metadata)])


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
class Member:
    """One grid point of a sweep as recorded (a ``SweepMember`` row)."""

    experiment_id: str
    position: int
    configuration: str
    seed: int


@dataclass(frozen=True)
class SweepSubmission:
    sweep: Sweep
    created: bool  # False: the same sweep was submitted before; this is that one
    members: list[Member]  # in grid order
    new_experiments: list[jobstore.NewExperiment] = field(default_factory=list)
    # (job id, queue): train jobs recorded before but never enqueued, of the points a
    # resubmission added to a partial sweep (``repaired``); enqueue them with the new ones
    unsent: list[tuple[str, str]] = field(default_factory=list)
    repaired: int = 0  # points added to a partial sweep left by an older version


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
    experiments' runnable jobs and ``unsent``). ``force``: a new sweep with new
    experiments throughout. Sweeps are deduplicated per owner: another user's identical
    grid is a sweep of its own, whose experiments are those already stored (they keep
    their first owner).

    Every row goes in within the caller's one transaction, so a request records all of
    them or none (``service.db`` makes that hold on SQLite too). The experiments go in
    through ``jobstore.submit_experiments`` (identical specs looked up at once, new rows
    in multi-row INSERTs), the members in one more. The same sweep submitted again is
    returned as it is; if it has fewer members than its grid (a partial sweep, left by a
    version that committed the sweep row on its own), the missing points are added."""
    sweep_hash = f"{planned.sweep_hash[:48]}:{new_id()[:15]}" if force else planned.sweep_hash
    same_sweep = and_(Sweep.owner == owner, Sweep.sweep_hash == sweep_hash)
    # Two points may share a spec (a label changed): even with force, one experiment per
    # spec in a sweep, at the first point's position.
    distinct: dict[str, tuple[int, PlannedPoint]] = {}
    for position, point in enumerate(planned.points):
        distinct.setdefault(point.spec_hash, (position, point))
    chosen = list(distinct.values())
    recording = _Recording(owner, default_queue, mlflow_experiment_id, force)
    existing = session.scalar(select(Sweep).where(same_sweep))
    if existing is not None:
        return _submitted_before(session, existing, chosen, recording)
    sweep = Sweep(
        name=planned.name,
        owner=owner,
        sweep_hash=sweep_hash,
        base=document.base,
        grid=document.grid,
        size=len(distinct),
        mlflow_experiment_id=mlflow_experiment_id,
    )
    try:
        with session.begin_nested():
            session.add(sweep)
            session.flush()
    except IntegrityError:  # lost a race with the same sweep submitted at the same moment
        existing = session.scalar(select(Sweep).where(same_sweep))
        if existing is None:
            raise
        return _submitted_before(session, existing, chosen, recording)
    members, recorded = _record_points(session, sweep, chosen, recording)
    return SweepSubmission(sweep, created=True, members=members, new_experiments=recorded.new)


@dataclass(frozen=True)
class _Recording:
    """How a submission records its experiments (``jobstore.submit_experiments``)."""

    owner: str
    default_queue: str
    mlflow_experiment_id: str | None
    force: bool


def _record_points(
    session: Session,
    sweep: Sweep,
    points: Sequence[tuple[int, PlannedPoint]],
    recording: _Recording,
) -> tuple[list[Member], jobstore.BulkSubmission]:
    """The points' experiments (new or identical twins) and the sweep's members for them."""
    recorded = jobstore.submit_experiments(
        session,
        [jobstore.SpecToSubmit(p.spec, p.spec_hash, p.configuration) for _, p in points],
        owner=recording.owner,
        default_queue=recording.default_queue,
        sweep_id=sweep.id,
        mlflow_experiment_id=recording.mlflow_experiment_id,
        force=recording.force,
    )
    # Distinct specs have distinct dedup keys, so distinct experiments: one member each.
    members = [
        Member(experiment_id, position, point.configuration, point.seed)
        for (position, point), experiment_id in zip(points, recorded.experiment_ids, strict=True)
    ]
    session.execute(
        insert(SweepMember),
        [
            {
                "sweep_id": sweep.id,
                "experiment_id": m.experiment_id,
                "position": m.position,
                "configuration": m.configuration,
                "seed": m.seed,
            }
            for m in members
        ],
    )
    return members, recorded


def new_jobs(session: Session, planned: SweepPlan, *, force: bool = False) -> int:
    """Jobs submitting the plan would create: those of its specs not in the job store
    (all with ``force``); a sweep submitted before adds only what a partial one lacks."""
    specs = {point.spec_hash: point.spec for point in planned.points}
    if not force:
        for stored in limits.stored_specs(session, list(specs)):
            del specs[stored]
    return sum(1 + len(spec.analyses) for spec in specs.values())


def _submitted_before(
    session: Session,
    sweep: Sweep,
    points: Sequence[tuple[int, PlannedPoint]],
    recording: _Recording,
) -> SweepSubmission:
    """The sweep as recorded, with the points it lacks added (a partial sweep, left by an
    older version killed or failing mid-request, answered "size 0" for ever otherwise).

    Its experiments recorded without their members (orphans) are found again by their
    spec and their never-enqueued train jobs returned in ``unsent``; the rest are new."""
    present = set(
        session.scalars(select(SweepMember.position).where(SweepMember.sweep_id == sweep.id))
    )
    missing = [(position, point) for position, point in points if position not in present]
    new: list[jobstore.NewExperiment] = []
    unsent: list[tuple[str, str]] = []
    if missing:
        mlflow_experiment_id = sweep.mlflow_experiment_id or recording.mlflow_experiment_id
        recording = _Recording(
            recording.owner, recording.default_queue, mlflow_experiment_id, force=False
        )
        try:
            with session.begin_nested():
                _, recorded = _record_points(session, sweep, missing, recording)
                sweep.size = len(points)
                session.flush()
        except IntegrityError:  # the same repair by a submission at the same moment
            session.expire(sweep, ["members"])
            if len(sweep.members) < len(points):  # not that: something else broke
                raise
            missing = []
        else:
            new = recorded.new
            created = {experiment.id for experiment in new}
            reused = [i for i in recorded.experiment_ids if i not in created]
            unsent = _never_enqueued_train_jobs(session, reused)
        session.expire(sweep, ["members"])
    members = [Member(m.experiment_id, m.position, m.configuration, m.seed) for m in sweep.members]
    return SweepSubmission(
        sweep,
        created=False,
        members=members,
        new_experiments=new,
        unsent=unsent,
        repaired=len(missing),
    )


def _never_enqueued_train_jobs(
    session: Session, experiment_ids: Sequence[str]
) -> list[tuple[str, str]]:
    """(job id, queue) of the experiments' train jobs still queued and never sent."""
    found: list[tuple[str, str]] = []
    for start in range(0, len(experiment_ids), jobstore.BULK_LOOKUP):
        chunk = list(experiment_ids[start : start + jobstore.BULK_LOOKUP])
        rows = session.execute(
            select(Job.id, Job.queue)
            .where(
                Job.experiment_id.in_(chunk),
                Job.kind == JobKind.TRAIN,
                Job.state == JobState.QUEUED,
                Job.enqueued_at.is_(None),
                Job.cancel_requested.is_(False),
            )
            .order_by(Job.created_at)
        )
        found += [(job_id, queue) for job_id, queue in rows]
    return found


def mlflow_experiment_name(planned: SweepPlan) -> str:
    """The sweep's own MLflow experiment: its runs and its report, side by side."""
    return f"sweep {planned.name} {planned.sweep_hash[:8]}"


def mlflow_artifact_key(planned: SweepPlan) -> str:
    """The directory of that experiment's artifacts in a local store: from the sweep's
    hash (its identity), never from its name."""
    return f"sweep-{planned.sweep_hash}"


# --------------------------------------------------------------------------- reading


# A sweep with its members, their experiments and jobs: what results(), cancel() and
# reports read. Progress does not need it: ``tallies`` counts in SQL.
_WITH_JOBS = (
    selectinload(Sweep.members).selectinload(SweepMember.experiment).selectinload(Experiment.jobs)
)


def load(session: Session, sweep_id: str) -> Sweep | None:
    return session.get(Sweep, sweep_id, options=[_WITH_JOBS])


def list_sweeps(session: Session, *, limit: int, offset: int) -> tuple[list[Sweep], int]:
    """A page of sweeps (their own rows only), newest first, and how many there are."""
    count = session.scalar(select(func.count()).select_from(Sweep)) or 0
    page = session.scalars(
        select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id).limit(limit).offset(offset)
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


@dataclass
class KindTally:
    """A sweep's jobs of one kind."""

    jobs: int = 0
    unfinished: int = 0  # queued or running
    progress: float = 0.0  # the unfinished jobs' progress, summed
    succeeded_s: float = 0.0  # seconds of the succeeded jobs with both timestamps, summed
    succeeded: int = 0  # ... and how many they are


@dataclass
class SweepTally:
    """What a sweep's progress is computed from: counted in Python from a loaded sweep
    (``tally``) or in SQL for many sweeps at once (``tallies``); ``summarize`` reads it."""

    jobs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    experiments: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    kinds: dict[str, KindTally] = field(default_factory=dict)
    queues: set[str] = field(default_factory=set)
    started_at: datetime | None = None  # the first start of any job
    finished_at: datetime | None = None  # the last finish of a finished job
    running: list[RunningJob] = field(default_factory=list)  # in member order

    def add(
        self,
        kind: str,
        state: str,
        queue: str,
        *,
        jobs: int = 1,
        progress: float = 0.0,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        succeeded_s: float | None = None,
        succeeded: int = 0,
    ) -> None:
        """``jobs`` jobs of one kind, state and queue: their progress summed, first start,
        last finish, and (succeeded) the seconds of ``succeeded`` of them summed."""
        self.jobs[state] += jobs
        self.queues.add(queue)
        counted = self.kinds.setdefault(kind, KindTally())
        counted.jobs += jobs
        if state in jobstore.TERMINAL:
            self.finished_at = _latest(self.finished_at, finished_at)
        else:
            counted.unfinished += jobs
            counted.progress += progress
        if started_at is not None and (self.started_at is None or started_at < self.started_at):
            self.started_at = started_at
        if succeeded_s is not None and succeeded:
            counted.succeeded_s += succeeded_s
            counted.succeeded += succeeded


def _latest(current: datetime | None, other: datetime | None) -> datetime | None:
    if other is None:
        return current
    return other if current is None or other > current else current


@dataclass(frozen=True)
class SweepProgress:
    status: str
    experiments: dict[str, int]  # experiment state -> count
    jobs: dict[str, int]  # job state -> count
    progress: float  # 0..1, weighted by the expected duration of each job's kind
    eta_s: float | None  # None while no job has finished or shown progress
    started_at: datetime | None
    finished_at: datetime | None
    running: list[RunningJob]
    eta_estimated: bool = False  # a remaining kind has no finished job: its time is guessed


def progress(
    sweep: Sweep, *, expected_s: dict[str, float], workers: int, now: datetime | None = None
) -> SweepProgress:
    """Counts, weighted progress and an ETA for a loaded sweep (``summarize`` of its tally)."""
    return summarize(tally(sweep), expected_s=expected_s, workers=workers, now=now)


def summarize(
    counted: SweepTally,
    *,
    expected_s: dict[str, float],
    workers: int,
    now: datetime | None = None,
) -> SweepProgress:
    """Counts, weighted progress and an ETA from a sweep's tally.

    ``expected_s``: expected seconds per job kind (``expected_durations``); ``workers``:
    live workers that share the remaining work. The ETA is the remaining expected work
    (a running job counts its unfinished fraction) divided among the workers. A kind no
    job of which has finished yet is estimated (``eta_estimated``): from its running jobs'
    pace (``estimated_durations``), else as long as the kinds that are known."""
    fallback = _fallback(expected_s)
    for_eta = estimated_durations(counted, expected_s, now or utcnow())
    done_work = total_work = remaining = 0.0
    unknown = estimated = False
    for kind in sorted(counted.kinds):
        kind_tally = counted.kinds[kind]
        weight = expected_s.get(kind, fallback)
        total_work += weight * kind_tally.jobs
        finished = kind_tally.jobs - kind_tally.unfinished
        done_work += weight * (finished + kind_tally.progress)
        if kind_tally.unfinished > 0:
            unknown = unknown or kind not in for_eta
            estimated = estimated or kind not in expected_s
            remaining += for_eta.get(kind, 0.0) * (kind_tally.unfinished - kind_tally.progress)
    status = sweep_status(counted.jobs, counted.experiments)
    if status in ("succeeded", "failed", "cancelled"):
        eta: float | None = 0.0
        estimated = False
    elif unknown:
        eta = None
    else:
        eta = round(remaining / max(1, workers), 1)
    return SweepProgress(
        status=status,
        experiments=dict(counted.experiments),
        jobs=dict(counted.jobs),
        progress=round(done_work / total_work, 4) if total_work else 1.0,
        eta_s=eta,
        started_at=counted.started_at,
        finished_at=counted.finished_at if status in jobstore.TERMINAL else None,
        running=list(counted.running),
        eta_estimated=estimated and eta is not None,
    )


def _fallback(expected_s: dict[str, float]) -> float:
    return sum(expected_s.values()) / len(expected_s) if expected_s else 1.0


MIN_PACE_PROGRESS = 0.02  # below this a running job's pace says too little


def estimated_durations(
    counted: SweepTally, expected_s: Mapping[str, float], now: datetime
) -> dict[str, float]:
    """Seconds per job kind for the ETA: measured (``expected_s``) where a job of the kind
    has finished; else the pace of its running jobs (elapsed / progress, averaged); else
    the mean of the kinds known so far. Empty when nothing is known at all."""
    paces: dict[str, list[float]] = {}
    for running in counted.running:
        job = running.job
        if job.kind in expected_s or job.started_at is None or job.progress < MIN_PACE_PROGRESS:
            continue
        started = job.started_at
        started = started.replace(tzinfo=now.tzinfo) if started.tzinfo is None else started
        elapsed = (now - started).total_seconds()
        if elapsed > 0:
            paces.setdefault(job.kind, []).append(elapsed / job.progress)
    known = dict(expected_s) | {kind: sum(p) / len(p) for kind, p in paces.items()}
    if not known:
        return {}
    guess = sum(known.values()) / len(known)
    return {kind: known.get(kind, guess) for kind in counted.kinds}


def tally(sweep: Sweep) -> SweepTally:
    """Count a loaded sweep (``load``)."""
    counted = SweepTally()
    running: list[RunningJob] = []
    for member in sweep.members:
        counted.experiments[jobstore.experiment_status(member.experiment)] += 1
        for job in member.experiment.jobs:
            seconds = None
            if job.state == JobState.SUCCEEDED and job.started_at and job.finished_at:
                seconds = (job.finished_at - job.started_at).total_seconds()
            counted.add(
                job.kind,
                job.state,
                job.queue,
                progress=job.progress,
                started_at=job.started_at,
                finished_at=job.finished_at,
                succeeded_s=seconds,
                succeeded=int(seconds is not None),
            )
            if job.state == JobState.RUNNING:
                running.append(RunningJob(job, member))
    counted.running = sorted(running, key=lambda r: r.member.position)
    return counted


def tallies(session: Session, page: Sequence[Sweep]) -> dict[str, SweepTally]:
    """Count many sweeps in SQL, without loading their members, experiments or jobs: one
    aggregate over their jobs (by sweep, kind, state and queue); the experiments' statuses
    (``jobstore.experiment_status`` as a CASE) of the sweeps whose jobs are not all in one
    state (when they are, every experiment is: each has its train job); the running jobs.
    A sweep's own durations are to the millisecond on SQLite (``seconds_between``)."""
    counted = {sweep.id: SweepTally() for sweep in page}
    if not counted:
        return counted
    seconds = jobstore.seconds_between(session, Job.started_at, Job.finished_at)
    by_group = session.execute(
        select(
            SweepMember.sweep_id,
            Job.kind,
            Job.state,
            Job.queue,
            func.count(),
            func.sum(Job.progress),
            func.min(Job.started_at),
            func.max(Job.finished_at),
            func.sum(seconds),
            func.count(seconds),
        )
        .join(Job, Job.experiment_id == SweepMember.experiment_id)
        .where(SweepMember.sweep_id.in_(list(counted)))
        .group_by(SweepMember.sweep_id, Job.kind, Job.state, Job.queue)
    )
    for sweep_id, kind, state, queue, jobs, progress_sum, first, last, total_s, timed in by_group:
        succeeded = state == JobState.SUCCEEDED
        counted[sweep_id].add(
            kind,
            state,
            queue,
            jobs=jobs,
            progress=float(progress_sum or 0.0),
            started_at=first,
            finished_at=last,
            succeeded_s=float(total_s) if succeeded and total_s is not None else None,
            succeeded=timed if succeeded else 0,
        )
    mixed: list[str] = []
    for sweep in page:
        states = [state for state, jobs in counted[sweep.id].jobs.items() if jobs]
        if len(states) > 1:
            mixed.append(sweep.id)
        else:  # an experiment's status is the state of all its jobs (none: queued)
            counted[sweep.id].experiments[states[0] if states else JobState.QUEUED] += sweep.size
    if mixed:
        statuses = _experiment_statuses(SweepMember.sweep_id.in_(mixed))
        for sweep_id, status, experiments in session.execute(statuses):
            counted[sweep_id].experiments[status] += experiments
    with_running = [sweep_id for sweep_id, c in counted.items() if c.jobs[JobState.RUNNING]]
    if with_running:
        running = session.execute(
            select(Job, SweepMember)
            .join(SweepMember, SweepMember.experiment_id == Job.experiment_id)
            .where(SweepMember.sweep_id.in_(with_running), Job.state == JobState.RUNNING)
            .order_by(SweepMember.position, Job.created_at, Job.id)
        )
        for job, member in running:
            counted[member.sweep_id].running.append(RunningJob(job, member))
    return counted


def _experiment_statuses(of_page: ColumnElement[bool]) -> Select[tuple[str, str, int]]:
    """(sweep id, experiment status, experiments): ``jobstore.experiment_status`` in SQL."""
    per_state = [func.count(case((Job.state == state, 1))).label(state.value) for state in JobState]
    per_experiment = (
        select(SweepMember.sweep_id, *per_state)
        .select_from(SweepMember)
        .outerjoin(Job, Job.experiment_id == SweepMember.experiment_id)
        .where(of_page)
        .group_by(SweepMember.sweep_id, SweepMember.experiment_id)
        .subquery()
    )
    has = per_experiment.c
    status = case(
        (has.failed > 0, JobState.FAILED.value),
        (has.cancelled > 0, JobState.CANCELLED.value),
        (has.running > 0, JobState.RUNNING.value),
        (and_(has.succeeded > 0, has.queued == 0), JobState.SUCCEEDED.value),
        (has.succeeded > 0, JobState.RUNNING.value),  # training done, analyses waiting
        else_=JobState.QUEUED.value,
    )
    statuses = select(has.sweep_id, status.label("status")).subquery()
    return select(statuses.c.sweep_id, statuses.c.status, func.count()).group_by(
        statuses.c.sweep_id, statuses.c.status
    )


def expected_durations(session: Session, sweep: Sweep) -> dict[str, float]:
    """Mean seconds of succeeded jobs per kind: this sweep's own where it has finished one
    of that kind (same models, same data), else every sweep's (a loaded sweep)."""
    return expected_durations_for(session, {sweep.id: tally(sweep)})[sweep.id]


def expected_durations_for(
    session: Session, counted: Mapping[str, SweepTally]
) -> dict[str, dict[str, float]]:
    """``expected_durations`` of many sweeps from their tallies: the store-wide averages
    of the kinds some sweep has not finished a job of yet, in one aggregate query (a poll
    never loads the store's finished jobs)."""
    expected: dict[str, dict[str, float]] = {}
    missing: set[str] = set()
    for sweep_id, sweep_tally in counted.items():
        own = {
            kind: kind_tally.succeeded_s / kind_tally.succeeded
            for kind, kind_tally in sweep_tally.kinds.items()
            if kind_tally.succeeded
        }
        expected[sweep_id] = own
        missing |= set(sweep_tally.kinds) - set(own)
    if not missing:
        return expected
    recent = _recent_durations(session, missing)
    for sweep_id, sweep_tally in counted.items():
        own = expected[sweep_id]
        own |= {
            kind: recent[kind] for kind in sweep_tally.kinds if kind not in own and kind in recent
        }
    return expected


# Per job store: (succeeded jobs, mean seconds per kind of the newest of them).
_RECENT: weakref.WeakKeyDictionary[Any, tuple[int, dict[str, float]]] = weakref.WeakKeyDictionary()


def _recent_durations(session: Session, kinds: Iterable[str]) -> dict[str, float]:
    """Mean seconds of the ``RECENT_JOBS_PER_KIND`` newest succeeded jobs of each kind.

    A succeeded job never changes again and jobs are never removed, so the number of
    succeeded jobs identifies the set they are taken from: the averages are computed
    again only when it has grown, and a poll costs one count over an index, not a sort
    of every finished job in the store."""
    succeeded = session.scalar(
        select(func.count()).select_from(Job).where(Job.state == JobState.SUCCEEDED)
    )
    store = session.get_bind()
    cached = _RECENT.get(store)
    if cached is None or cached[0] != succeeded:
        cached = _RECENT[store] = (succeeded or 0, _recent_averages(session))
    return {kind: cached[1][kind] for kind in kinds if kind in cached[1]}


def _recent_averages(session: Session) -> dict[str, float]:
    newest_first = func.row_number().over(partition_by=Job.kind, order_by=Job.finished_at.desc())
    recent = (
        select(
            Job.kind,
            jobstore.seconds_between(session, Job.started_at, Job.finished_at).label("s"),
            newest_first.label("rank"),
        )
        .where(
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
    return {kind: float(seconds) for kind, seconds in averages}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SweepResults:
    metrics: list[str]  # the columns, in reading order (``regcore.compare.result_metrics``)
    rows: list[ComparisonRow]
    experiments: dict[str, int]  # configuration -> experiments in it
    succeeded: dict[str, int]  # configuration -> succeeded experiments
    baseline: str | None = None  # the configuration the others are compared with
    # configuration -> metric -> the difference from the baseline (none for the baseline)
    versus: dict[str, dict[str, Difference]] = field(default_factory=dict)
    # configuration -> its instability across seeds (configurations of two members or more)
    instability: dict[str, Instability] = field(default_factory=dict)


def results(sweep: Sweep, baseline: str | int | None = None) -> SweepResults:
    """One row per configuration (grid order), mean ± std and n over the experiments
    that have each metric; a failed experiment still counts with what it measured. Each
    configuration is compared with ``baseline`` (a name or an index; the first row by
    default; ``UnknownBaselineError`` for neither), and those with two members or more get
    their instability across seeds from the members' stored test predictions (one query)."""
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
    session = Session.object_session(sweep)
    stored = jobstore.stored_predictions(session, sweep_id=sweep.id) if session else {}
    predictions: dict[str, dict[str, StoredPrediction | None]] = {}
    for member in members:
        by_member = predictions.setdefault(member.configuration, {})
        by_member[member.experiment_id] = stored.get(member.experiment_id)
    return analysed(SweepResults(metrics, rows, experiments, succeeded), predictions, baseline)


def analysed(
    results: SweepResults,
    predictions: Mapping[str, Mapping[str, StoredPrediction | None]],
    baseline: str | int | None = None,
) -> SweepResults:
    """The comparison with its instability (configuration -> member -> stored test
    predictions, None where a member has none) and its differences from the baseline."""
    instability = {
        configuration: configuration_instability(members)
        for configuration, members in predictions.items()
        if len(members) >= 2
    }
    compared = [name for name in results.metrics if name not in INSTABILITY_METRICS]
    index, versus = versus_baseline(results.rows, compared, baseline)
    metrics = add_instability(results.rows, results.metrics, instability)
    chosen = results.rows[index].configuration if results.rows else None
    return dataclasses.replace(
        results, metrics=metrics, baseline=chosen, versus=versus, instability=instability
    )


def results_records(results: SweepResults) -> list[dict[str, Any]]:
    """JSON rows: ``{configuration, experiments, succeeded, metrics: {name: {mean, std, n}},
    versus_baseline: {name: {diff, ci_low, ci_high, p, p_holm, test, significant, n,
    n_baseline, note}}, instability: {members, left_out: {experiment: reason}} | null}``
    (NaN, from a metric no experiment has, becomes null; the baseline row compares with
    nothing; an instability metric's std is null: one number per configuration)."""
    return [
        {
            "configuration": row.configuration,
            "experiments": results.experiments[row.configuration],
            "succeeded": results.succeeded[row.configuration],
            "metrics": {
                name: {"mean": _finite(s.mean), "std": _finite(s.std), "n": s.n}
                for name, s in row.metrics.items()
            },
            "versus_baseline": {
                name: difference_record(d)
                for name, d in results.versus.get(row.configuration, {}).items()
            },
            "instability": _instability_record(results.instability.get(row.configuration)),
        }
        for row in results.rows
    ]


def difference_record(difference: Difference) -> dict[str, Any]:
    return {
        "diff": _finite(difference.diff),
        "ci_low": _optional(difference.ci_low),
        "ci_high": _optional(difference.ci_high),
        "p": _optional(difference.p),
        "p_holm": _optional(difference.p_holm),
        "test": difference.test,
        "significant": difference.significant,
        "n": difference.n,
        "n_baseline": difference.n_baseline,
        "note": difference.note,
    }


def _instability_record(measured: Instability | None) -> dict[str, Any] | None:
    if measured is None:
        return None
    return {"members": measured.members, "left_out": dict(measured.left_out)}


def _optional(value: float | None) -> float | None:
    return None if value is None else _finite(value)


# Per metric, after its mean/std/n columns' block: the difference from the baseline row.
VERSUS_COLUMNS = ("diff", "diff_ci_low", "diff_ci_high", "p", "p_holm", "test")


def results_csv(results: SweepResults) -> str:
    """One line per configuration: ``configuration,experiments,succeeded`` then
    ``<metric>_mean,<metric>_std,<metric>_n`` for every metric (empty where none); then
    ``baseline`` (the configuration compared with), ``instability_members`` and
    ``instability_left_out``, and per compared metric ``<metric>_diff``,
    ``_diff_ci_low``, ``_diff_ci_high``, ``_p``, ``_p_holm`` and ``_test`` (``welch``,
    ``paired``, ``baseline`` on the baseline's line, or why no test was possible)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["configuration", "experiments", "succeeded"]
    for name in results.metrics:
        header += [f"{name}_mean", f"{name}_std", f"{name}_n"]
    compared = [name for name in results.metrics if name not in INSTABILITY_METRICS]
    header += ["baseline", "instability_members", "instability_left_out"]
    for name in compared:
        header += [f"{name}_{column}" for column in VERSUS_COLUMNS]
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
        measured = results.instability.get(row.configuration)
        line += [
            results.baseline or "",
            measured.members if measured is not None else "",
            len(measured.left_out) if measured is not None else "",
        ]
        versus = results.versus.get(row.configuration, {})
        for name in compared:
            line += _csv_difference(
                versus.get(name), is_baseline=row.configuration == results.baseline
            )
        writer.writerow(line)
    return buffer.getvalue()


def _csv_difference(difference: Difference | None, *, is_baseline: bool) -> list[Any]:
    if difference is None:
        return ["", "", "", "", "", "baseline" if is_baseline else ""]
    numbers = (
        difference.diff,
        difference.ci_low,
        difference.ci_high,
        difference.p,
        difference.p_holm,
    )
    test = difference.test or difference.note or ""
    return [*("" if v is None else _csv_number(v) for v in numbers), test]


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _csv_number(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""


# --------------------------------------------------------------------------- cancel, reports


def cancel(
    session: Session,
    sweep: Sweep,
    may_cancel: Callable[[Experiment], bool] = lambda experiment: True,
) -> tuple[list[Job], list[str]]:
    """Cancel the sweep's experiments that ``may_cancel`` allows (queued jobs now, running
    ones at their next heartbeat); an experiment shared with another sweep is cancelled
    there too. Returns the jobs that changed and the ids of the experiments left alone."""
    changed: list[Job] = []
    kept: list[str] = []
    for member in sweep.members:
        if may_cancel(member.experiment):
            changed += jobstore.request_cancel(session, member.experiment)
        else:
            kept.append(member.experiment_id)
    return changed, kept


def retryable(
    sweep: Sweep, may_retry: Callable[[Experiment], bool] = lambda experiment: True
) -> tuple[list[Job], list[str]]:
    """The failed and cancelled jobs of the sweep's experiments that ``may_retry`` allows
    (``retry`` puts them back in the queue), and the ids of the experiments with such jobs
    left alone (another user's, shared with their work). Succeeded jobs are never among
    them."""
    jobs: list[Job] = []
    kept: list[str] = []
    for member in sweep.members:
        unsuccessful = jobstore.unsuccessful_jobs(member.experiment)
        if not unsuccessful:
            continue
        if may_retry(member.experiment):
            jobs += unsuccessful
        else:
            kept.append(member.experiment_id)
    return jobs, kept


def retry(session: Session, jobs: Sequence[Job]) -> None:
    """Put ``jobs`` (failed or cancelled: ``retryable``) back in the queue. Every sweep
    holding one of their experiments is unfinished again: its report is built anew when
    it finishes."""
    if not jobs:
        return
    jobstore.retry_jobs(session, jobs)
    experiments = sorted({job.experiment_id for job in jobs})
    for start in range(0, len(experiments), jobstore.BULK_LOOKUP):
        chunk = experiments[start : start + jobstore.BULK_LOOKUP]
        holding = select(SweepMember.sweep_id).where(SweepMember.experiment_id.in_(chunk))
        session.execute(
            update(Sweep)
            .where(Sweep.id.in_(holding))
            .values(report_status=ReportStatus.NONE, report_error=None)
            .execution_options(synchronize_session="fetch")
        )


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
