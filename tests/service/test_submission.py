"""Submission at scale, on SQLite and PostgreSQL: the bulk path records what the careful
per-spec path records (rows, dedup across submissions and within one, force, the lost
race), planning validates field by field exactly as a whole spec, and the sweep counts
made in SQL (``sweeps.tallies``) agree with the counts made from a loaded sweep."""

from __future__ import annotations

import copy
import itertools
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from regcore import grid as grids
from regcore.spec import ExperimentSpec, SweepSpec
from service import jobstore, sweeps
from service.db import Database
from service.tables import Experiment, Job, JobState, Sweep, SweepMember

BASE: dict[str, Any] = {
    "dataset": {"name": "digits", "size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 1},
    "analyses": [{"kind": "calibration"}, {"kind": "geometry", "samples": 10}],
}
L2 = [{"name": "l2", "weight": 0.001}]
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate({**BASE, "training": {"epochs": 1, **training}})


def to_submit(*specs: ExperimentSpec) -> list[jobstore.SpecToSubmit]:
    return [jobstore.SpecToSubmit(s, s.spec_hash(), f"point {n}") for n, s in enumerate(specs)]


def count(session: Session, table: type[Any]) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def rows_of(session: Session, experiment_id: str) -> dict[str, Any]:
    """Every column of an experiment and its jobs, but what differs between any two
    recordings (ids, dedup key, times); a job's dependency as the kind it depends on."""
    experiment = session.get(Experiment, experiment_id)
    assert experiment is not None
    skip = {"id", "dedup_key", "created_at"}
    columns = {c.key: getattr(experiment, c.key) for c in Experiment.__table__.columns}
    kinds = {job.id: job.kind for job in experiment.jobs}
    jobs = [
        {c.key: getattr(job, c.key) for c in Job.__table__.columns if c.key not in skip}
        | {"experiment_id": None, "depends_on": kinds.get(job.depends_on or "")}
        for job in experiment.jobs  # in created_at order
    ]
    return {key: value for key, value in columns.items() if key not in skip} | {"jobs": jobs}


# --------------------------------------------------------------------------- the bulk path


def test_bulk_rows_equal_the_rows_of_one_by_one(database: Database) -> None:
    specs = [spec(seed=1), spec(seed=2, lr=0.5)]
    with database.session() as session:
        bulk = jobstore.submit_experiments(
            session, to_submit(*specs), owner="ann", default_queue="q1", sweep_id=None,
            mlflow_experiment_id="7",
        )  # fmt: skip
        careful = [
            jobstore.submit_experiment(
                session, s, owner="ann", default_queue="q1", configuration=f"point {n}",
                mlflow_experiment_id="7", force=True,
            ).experiment.id
            for n, s in enumerate(specs)
        ]  # fmt: skip
        session.commit()
    with database.session() as session:
        for bulk_id, careful_id in zip(bulk.experiment_ids, careful, strict=True):
            recorded = rows_of(session, bulk_id)
            assert recorded == rows_of(session, careful_id)
            assert [job["kind"] for job in recorded["jobs"]] == ["train", "calibration", "geometry"]
            assert [job["depends_on"] for job in recorded["jobs"]] == [None, "train", "train"]
            assert {job["state"] for job in recorded["jobs"]} == {JobState.QUEUED}
            assert {job["enqueued_at"] for job in recorded["jobs"]} == {None}  # not sent yet
        experiment = session.get(Experiment, bulk.experiment_ids[0])
        assert experiment is not None and experiment.dedup_key == specs[0].spec_hash()
    assert [new.id for new in bulk.new] == bulk.experiment_ids
    assert [new.spec for new in bulk.new] == [s.model_dump(mode="json") for s in specs]
    with database.session() as session:
        trains = [jobstore.train_job(session.get(Experiment, i)) for i in bulk.experiment_ids]
        assert [new.runnable for new in bulk.new] == [[(t.id, "q1")] for t in trains]


def test_bulk_dedups_against_the_store_and_within_the_batch(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobstore, "BULK_LOOKUP", 2)  # several lookups per submission
    a, b, c, d = (spec(seed=seed) for seed in range(4))
    with database.session() as session:
        first = jobstore.submit_experiments(session, to_submit(a, b, c))
        session.commit()
    with database.session() as session:
        again = jobstore.submit_experiments(
            session, to_submit(c, d, d, a, spec(seed=3, device="cpu"))
        )
        session.commit()
        assert (count(session, Experiment), count(session, Job)) == (4, 12)
    d_id = again.experiment_ids[1]
    assert again.experiment_ids == [
        first.experiment_ids[2],
        d_id,
        d_id,
        first.experiment_ids[0],
        d_id,
    ]
    assert [new.id for new in again.new] == [d_id]


def test_force_records_every_spec_anew(database: Database) -> None:
    a = spec(seed=0)
    with database.session() as session:
        first = jobstore.submit_experiments(session, to_submit(a))
        forced = jobstore.submit_experiments(session, to_submit(a, a), force=True)
        session.commit()
        assert len(set(forced.experiment_ids) | set(first.experiment_ids)) == 3
        keys = session.scalars(
            select(Experiment.dedup_key).where(Experiment.id.in_(forced.experiment_ids))
        )
        assert all(key.startswith(f"{a.spec_hash()}:") for key in keys)
        assert count(session, Experiment) == 3


def test_a_lost_race_falls_back_to_the_careful_path(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The identical spec was stored by another submission after this one looked: the
    multi-row insert breaks the unique dedup key, and every spec goes one by one."""
    a, b = spec(seed=0), spec(seed=1)
    with database.session() as session:
        stored = jobstore.submit_experiments(session, to_submit(a)).experiment_ids[0]
        session.commit()
    monkeypatch.setattr(jobstore, "_experiments_by_dedup_key", lambda session, keys: {})
    with database.session() as session:
        sweep = Sweep(name="s", sweep_hash="h", base={}, grid={}, size=2)
        session.add(sweep)
        session.flush()  # written before the savepoint: must survive its rollback
        raced = jobstore.submit_experiments(session, to_submit(a, b), sweep_id=sweep.id)
        session.commit()
        assert raced.experiment_ids[0] == stored
        assert [new.id for new in raced.new] == raced.experiment_ids[1:]
        assert (count(session, Sweep), count(session, Experiment), count(session, Job)) == (1, 2, 6)
        new = session.get(Experiment, raced.experiment_ids[1])
        assert new is not None and new.sweep_id == sweep.id and new.configuration == "point 1"


def test_concurrent_identical_submissions_record_each_spec_once(database: Database) -> None:
    specs = to_submit(*(spec(seed=seed) for seed in range(20)))
    barrier = threading.Barrier(2)
    outcomes: list[jobstore.BulkSubmission | BaseException] = []

    def submit() -> None:
        try:
            with database.session() as session:
                barrier.wait(timeout=10)
                outcomes.append(jobstore.submit_experiments(session, specs))
                session.commit()
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    first, second = outcomes
    assert isinstance(first, jobstore.BulkSubmission), first
    assert isinstance(second, jobstore.BulkSubmission), second
    assert first.experiment_ids == second.experiment_ids
    assert len(first.new) + len(second.new) == 20
    with database.session() as session:
        assert (count(session, Experiment), count(session, Job)) == (20, 60)


# --------------------------------------------------------------------------- planning

GRIDS: list[tuple[dict[str, Any], dict[str, list[Any]]]] = [
    (BASE, {"regularizers": [[], L2], "training.seed": [0, 1, 2]}),
    (  # paths into a list of the base, a non-identity field, a negative index
        {**BASE, "regularizers": [{"name": "l2", "weight": 0.1}, {"name": "l1"}]},
        {"regularizers.0.weight": [0.1, 0.2], "name": ["a", "b"], "regularizers.-1.weight": [0.3]},
    ),
    (  # a whole field and a path under it (the later one wins), a field the base lacks
        {key: value for key, value in BASE.items() if key != "training"},
        {"training": [{"epochs": 1}, {"epochs": 2, "lr": 0.5}], "training.seed": [3, 4]},
    ),
    (BASE, {"analyses": [[], [{"kind": "calibration"}]], "model.hidden": [[8], [16, 16]]}),
]


@pytest.mark.parametrize("base, grid", GRIDS)
def test_plan_gives_what_validating_each_whole_point_gives(
    base: dict[str, Any], grid: dict[str, list[Any]]
) -> None:
    written = copy.deepcopy(base), copy.deepcopy(grid)
    planned = sweeps.plan(SweepSpec(base=base, grid=grid), 1000)
    expanded = grids.expand(base, grid)
    expected = [ExperimentSpec.model_validate(point.spec) for point in expanded]
    assert [p.spec for p in planned.points] == expected
    for point, whole in zip(planned.points, expected, strict=True):
        assert point.spec.model_dump(mode="json") == whole.model_dump(mode="json")
        assert point.spec.model_fields_set == whole.model_fields_set
        assert point.spec_hash == whole.spec_hash()
        assert point.seed == whole.training.seed
    assert [p.configuration for p in planned.points] == [p.configuration for p in expanded]
    assert (base, grid) == written  # the request is never changed


def test_an_invalid_field_value_still_names_its_grid_entry() -> None:
    """A field value that fails alone (cached as invalid) is reported from the whole point."""
    grid = {"training.seed": [0, 1], "training.lr": [0.1, -1.0]}
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(SweepSpec(base=BASE, grid=grid), 1000)
    assert [e["loc"] for e in caught.value.errors] == [("grid", "training.lr", 1)]


# --------------------------------------------------------------------------- counting in SQL


def submit_sweep(db: Database, grid: dict[str, list[Any]], name: str) -> str:
    document = SweepSpec(name=name, base=BASE, grid=grid)
    with db.session() as session:
        submission = sweeps.submit_sweep(
            session, sweeps.plan(document, 1000), document, mlflow_experiment_id="7"
        )
        session.commit()
        return submission.sweep.id


def set_job(job: Job, state: JobState, progress: float = 0.0, start: float | None = None,
            end: float | None = None) -> None:  # fmt: skip
    job.state, job.progress = state, progress
    job.started_at = None if start is None else at(start)
    job.finished_at = None if end is None else at(end)
    if state == JobState.RUNNING:
        job.worker, job.heartbeat_at = "w1", at(start or 0)


def varied_store(db: Database) -> list[str]:
    """Sweeps in every shape: all queued, all succeeded, one experiment for each of the 125
    combinations of its three jobs' states, and a sweep sharing experiments with others."""
    queued = submit_sweep(db, {"training.seed": [0, 1]}, "queued")
    done = submit_sweep(db, {"training.seed": [2, 3]}, "done")
    mixed = submit_sweep(db, {"training.seed": list(range(100, 225))}, "mixed")
    shared = submit_sweep(db, {"training.seed": [100, 101, 2, 300]}, "shared")
    combinations = list(itertools.product(JobState, repeat=3))
    with db.session() as session:
        for member in sweeps.load(session, done).members:  # type: ignore[union-attr]
            for job in member.experiment.jobs:
                set_job(job, JobState.SUCCEEDED, 1.0, 0, 12 if job.kind == "train" else 3)
        members = sweeps.load(session, mixed).members  # type: ignore[union-attr]
        for number, member in enumerate(members):
            for offset, job in enumerate(member.experiment.jobs):
                state = combinations[number][offset]
                set_job(
                    job,
                    state,
                    progress=1.0 if state == JobState.SUCCEEDED else 0.1 * (number % 7),
                    start=None if state == JobState.QUEUED else number,
                    end=number + 1.5 * (offset + 1) if state in jobstore.TERMINAL else None,
                )
        session.commit()
    return [queued, done, mixed, shared]


@pytest.mark.parametrize("expected_s", [{}, {"train": 10.0, "calibration": 2.0}])
def test_counts_in_sql_equal_counts_of_the_loaded_sweep(
    database: Database, expected_s: dict[str, float]
) -> None:
    ids = varied_store(database)
    with database.session() as session:
        page = [session.get(Sweep, sweep_id) for sweep_id in ids]
        counted = sweeps.tallies(session, page)  # type: ignore[arg-type]
        for sweep_id in ids:
            loaded = sweeps.load(session, sweep_id)
            assert loaded is not None
            in_python = sweeps.tally(loaded)
            in_sql = counted[sweep_id]
            assert in_sql.jobs == in_python.jobs and in_sql.experiments == in_python.experiments
            assert in_sql.queues == in_python.queues
            for kind, kind_tally in in_python.kinds.items():
                other = in_sql.kinds[kind]
                assert (other.jobs, other.unfinished, other.succeeded) == (
                    kind_tally.jobs, kind_tally.unfinished, kind_tally.succeeded,
                )  # fmt: skip
                assert other.progress == pytest.approx(kind_tally.progress)
                assert other.succeeded_s == pytest.approx(kind_tally.succeeded_s, abs=1e-3)
            assert set(in_sql.kinds) == set(in_python.kinds)
            now = datetime.now(UTC)  # one clock: an estimated ETA moves with it
            from_sql = sweeps.summarize(in_sql, expected_s=expected_s, workers=2, now=now)
            loaded_progress = sweeps.progress(loaded, expected_s=expected_s, workers=2, now=now)
            assert describe(from_sql) == describe(loaded_progress)
        statuses = {sweep_id: counted[sweep_id].experiments for sweep_id in ids}
    assert statuses[ids[0]]["queued"] == 2 and statuses[ids[1]]["succeeded"] == 2
    assert all(statuses[ids[2]].values())  # every status


def describe(state: sweeps.SweepProgress) -> dict[str, Any]:
    def utc(moment: datetime | None) -> datetime | None:
        return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment

    return {
        "status": state.status,
        "experiments": state.experiments,
        "jobs": state.jobs,
        "progress": state.progress,
        "eta_s": state.eta_s,
        "started_at": utc(state.started_at),
        "finished_at": utc(state.finished_at),
        "running": [(r.job.id, r.member.position, r.member.sweep_id) for r in state.running],
    }


def test_expected_durations_of_a_page_equal_each_sweeps_own(database: Database) -> None:
    ids = varied_store(database)
    with database.session() as session:
        page = [session.get(Sweep, sweep_id) for sweep_id in ids]
        of_page = sweeps.expected_durations_for(session, sweeps.tallies(session, page))  # type: ignore[arg-type]
        for sweep_id in ids:
            loaded = sweeps.load(session, sweep_id)
            assert loaded is not None
            own = sweeps.expected_durations(session, loaded)
            assert of_page[sweep_id] == pytest.approx(own, abs=1e-3)
        done = {"train": 12.0, "calibration": 3.0, "geometry": 3.0}  # its own
        assert of_page[ids[1]] == pytest.approx(done)


def test_store_wide_durations_follow_every_newly_succeeded_job(database: Database) -> None:
    queued = submit_sweep(database, {"training.seed": [0]}, "queued")
    other = submit_sweep(database, {"training.seed": [1, 2]}, "other")
    with database.session() as session:
        loaded = sweeps.load(session, queued)
        assert loaded is not None
        assert sweeps.expected_durations(session, loaded) == {}
    for number, seconds in enumerate((10.0, 20.0)):
        with database.session() as session:
            member = sweeps.load(session, other).members[number]  # type: ignore[union-attr]
            set_job(jobstore.train_job(member.experiment), JobState.SUCCEEDED, 1.0, 0, seconds)
            session.commit()
        with database.session() as session:
            loaded = sweeps.load(session, queued)
            assert loaded is not None
            mean = sum((10.0, 20.0)[: number + 1]) / (number + 1)
            assert sweeps.expected_durations(session, loaded) == pytest.approx({"train": mean})
            assert sweeps.expected_durations(session, loaded) == pytest.approx({"train": mean})


def test_a_page_reads_the_members_of_no_sweep(database: Database) -> None:
    """The page's sweeps are counted without loading a member, experiment or job."""
    ids = varied_store(database)
    with database.session() as session:
        page = [session.get(Sweep, sweep_id) for sweep_id in ids]
        sweeps.tallies(session, page)  # type: ignore[arg-type]
        loaded = {type(obj) for obj in session.identity_map.values()}
        assert loaded <= {Sweep, Job, SweepMember}  # the running jobs and their members only
        running = [obj for obj in session.identity_map.values() if isinstance(obj, Job)]
        assert {job.state for job in running} <= {JobState.RUNNING}
