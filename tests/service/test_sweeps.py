"""Sweeps: planning a grid, submitting it (dedup and sharing), progress, results, reports."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from scipy import stats
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from regcore.compare import compare
from regcore.instability import CHURN, StoredPrediction, labels_checksum
from regcore.instability import METRICS as INSTABILITY_METRICS
from regcore.significance import UnknownBaselineError
from regcore.spec import SweepSpec
from service import jobstore, sweeps
from service.db import Database
from service.tables import (
    Experiment,
    Job,
    JobState,
    ReportStatus,
    Sweep,
    SweepMember,
    utcnow,
)

BASE: dict[str, Any] = {
    "dataset": {"name": "digits", "size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 1},
    "analyses": [{"kind": "calibration"}],
}
L2 = [{"name": "l2", "weight": 0.001}]
NONE_LABEL = "regularizers=none"
L2_LABEL = "regularizers=l2(weight=0.001)"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def document(
    grid: dict[str, list[Any]] | None = None,
    *,
    name: str | None = None,
    base: dict[str, Any] | None = None,
) -> SweepSpec:
    if grid is None:
        grid = {"regularizers": [[], L2], "training.seed": [0, 1, 2]}
    return SweepSpec(name=name, base=BASE if base is None else base, grid=grid)


def submit(db: Database, doc: SweepSpec, *, force: bool = False) -> sweeps.SweepSubmission:
    with db.session() as session:
        submission = sweeps.submit_sweep(
            session, sweeps.plan(doc, 1000), doc, mlflow_experiment_id="7", force=force
        )
        session.commit()
        return submission


def load(session: Session, sweep_id: str) -> Sweep:
    sweep = sweeps.load(session, sweep_id)
    assert sweep is not None
    return sweep


def count(session: Session, table: type[Any]) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (in UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def jobs_by_kind(experiment: Experiment) -> dict[str, Job]:
    return {job.kind: job for job in experiment.jobs}


def set_job(
    job: Job,
    state: JobState,
    *,
    progress: float = 0.0,
    started: datetime | None = None,
    finished: datetime | None = None,
) -> None:
    job.state, job.progress, job.started_at, job.finished_at = state, progress, started, finished
    if state == JobState.RUNNING:
        job.worker = "w1"


def finish_experiment(
    experiment: Experiment, state: JobState = JobState.SUCCEEDED, seconds: float = 1.0
) -> None:
    for job in experiment.jobs:
        set_job(
            job,
            state,
            progress=1.0 if state == JobState.SUCCEEDED else 0.0,
            started=T0,
            finished=at(seconds),
        )


# --------------------------------------------------------------------------- plan


def test_plan_expands_in_grid_order_with_labels_without_the_seed() -> None:
    planned = sweeps.plan(document(), 1000)
    assert len(planned.points) == 6
    assert [(p.configuration, p.seed) for p in planned.points] == [
        (NONE_LABEL, 0),
        (NONE_LABEL, 1),
        (NONE_LABEL, 2),
        (L2_LABEL, 0),
        (L2_LABEL, 1),
        (L2_LABEL, 2),
    ]
    assert [p.spec.training.seed for p in planned.points] == [0, 1, 2, 0, 1, 2]
    assert all("seed" not in p.configuration for p in planned.points)
    assert planned.points[0].spec.regularizers == []
    assert planned.points[3].spec.regularizers[0].name == "l2"
    assert planned.points[3].spec.regularizers[0].params.weight == 0.001
    assert len({p.spec.spec_hash() for p in planned.points}) == 6
    assert planned.name == "sweep"  # neither the sweep nor its base is named
    assert sweeps.plan(document(name="mine"), 1000).name == "mine"
    assert sweeps.plan(document(base={**BASE, "name": "basename"}), 1000).name == "basename"


def test_sweep_hash_is_stable_across_key_order_and_changes_with_the_name() -> None:
    reordered = {key: BASE[key] for key in reversed(list(BASE))}
    reordered["model"] = {"hidden": [16], "name": "mlp"}
    assert list(reordered) != list(BASE)
    first = sweeps.plan(document(), 1000).sweep_hash
    assert sweeps.plan(document(base=reordered), 1000).sweep_hash == first
    assert sweeps.plan(document(), 1000).sweep_hash == first
    named = sweeps.plan(document(name="other"), 1000).sweep_hash
    assert named != first
    assert sweeps.plan(document(name="other"), 1000).sweep_hash == named
    more = {"regularizers": [[], L2], "training.seed": [0, 1, 2, 3]}
    assert sweeps.plan(document(more), 1000).sweep_hash != first
    assert len(first) == 64


def test_over_the_limit_is_refused_before_expanding() -> None:
    huge = {"training.seed": list(range(100)), "training.lr": [0.1] * 1000}  # 100000 points
    with pytest.raises(sweeps.SweepTooLargeError) as caught:
        sweeps.plan(document(huge), 1000)
    assert caught.value.size == 100000 and caught.value.limit == 1000
    assert "100000" in str(caught.value) and "1000 per sweep" in str(caught.value)
    # exactly at the limit is fine
    assert len(sweeps.plan(document(), 6).points) == 6
    with pytest.raises(sweeps.SweepTooLargeError, match="limit of 5"):
        sweeps.plan(document(), 5)


def test_invalid_grid_value_points_into_the_grid_entry() -> None:
    grid = {"regularizers": [[], [{"name": "l2", "weight": -1}]], "training.seed": [0, 1, 2]}
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(document(grid), 1000)
    errors = caught.value.errors
    assert len(errors) == 1  # the same error in each of the three seeds, reported once
    assert errors[0]["loc"] == ("grid", "regularizers", 1, 0, "weight")
    assert errors[0]["type"] == "greater_than_equal"
    assert "grid.regularizers.1.0.weight" in str(caught.value)


def test_invalid_dotted_grid_path_value_and_base_field() -> None:
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(document({"training.lr": [0.1, -1.0, 0.2, -2.0]}), 1000)
    assert [e["loc"] for e in caught.value.errors] == [
        ("grid", "training.lr", 1),
        ("grid", "training.lr", 3),
    ]
    base = {**BASE, "training": {"epochs": 1, "lr": -1}}
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(document({"training.seed": [0, 1, 2]}, base=base), 1000)
    (error,) = caught.value.errors  # repeated in every point, reported once
    assert error["loc"][:3] == ("base", "training", "lr")
    assert error["loc"] == ("base", "training", "lr")
    # an index into a list in the base, written as a grid path
    base = {**BASE, "regularizers": [{"name": "l2"}]}
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(document({"regularizers.0.weight": [0.1, -0.5]}, base=base), 1000)
    assert [e["loc"] for e in caught.value.errors] == [("grid", "regularizers.0.weight", 1)]


def test_a_negative_grid_index_still_names_the_grid_entry() -> None:
    base = {**BASE, "regularizers": [{"name": "l2", "weight": 0.1}]}
    doc = document({"regularizers.-1.weight": [0.1, -1.0]}, base=base)
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(doc, 1000)
    assert [e["loc"] for e in caught.value.errors] == [("grid", "regularizers.-1.weight", 1)]


def test_a_grid_path_into_a_list_the_base_lacks_is_the_grid_entrys_error() -> None:
    base = {key: value for key, value in BASE.items() if key != "regularizers"}
    doc = document({"regularizers.5.weight": [0.1]}, base=base)
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(doc, 1000)
    assert [e["loc"] for e in caught.value.errors] == [("grid", "regularizers.5.weight", 0)]


def test_errors_from_base_and_grid_together_each_reported_once() -> None:
    base = {**BASE, "model": {"name": "no-such-model"}}
    grid = {"regularizers": [L2, [{"name": "l2", "weight": -1}]], "training.seed": [0, 1]}
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(document(grid, base=base), 1000)
    locs = [e["loc"] for e in caught.value.errors]
    assert sorted(map(str, locs)) == sorted(
        map(str, [("base", "model", "name"), ("grid", "regularizers", 1, 0, "weight")])
    )
    assert len(locs) == len(set(locs)) == 2


def test_bad_dotted_path_is_an_invalid_sweep() -> None:
    base = {**BASE, "regularizers": []}
    with pytest.raises(sweeps.SweepInvalidError) as caught:
        sweeps.plan(document({"regularizers.5.weight": [0.1]}, base=base), 1000)
    (error,) = caught.value.errors
    assert error["loc"][0] == "grid" and error["type"] == "grid_path"
    assert "regularizers.5.weight" in error["msg"] and "not an index" in error["msg"]
    with pytest.raises(sweeps.SweepInvalidError, match="inside a int"):
        sweeps.plan(document({"training.epochs.x": [1]}), 1000)


# --------------------------------------------------------------------------- submit


def test_submit_records_the_sweep_members_and_experiments(database: Database) -> None:
    doc = document()
    planned = sweeps.plan(doc, 1000)
    first = submit(database, doc)
    assert first.created and first.sweep.size == 6 and len(first.new_experiments) == 6
    assert first.sweep.sweep_hash == planned.sweep_hash
    assert first.sweep.grid == doc.grid and first.sweep.base == BASE
    with database.session() as session:
        sweep = load(session, first.sweep.id)
        assert [(m.position, m.configuration, m.seed) for m in sweep.members] == [
            (i, p.configuration, p.seed) for i, p in enumerate(planned.points)
        ]
        assert [m.experiment.spec_hash for m in sweep.members] == [
            p.spec.spec_hash() for p in planned.points
        ]
        for member in sweep.members:
            experiment = member.experiment
            assert experiment.sweep_id == sweep.id
            assert experiment.configuration == member.configuration
            assert experiment.mlflow_experiment_id == "7"
            assert {job.kind for job in experiment.jobs} == {"train", "calibration"}
            assert jobstore.experiment_status(experiment) == "queued"
        assert (count(session, Sweep), count(session, SweepMember)) == (1, 6)
        assert (count(session, Experiment), count(session, Job)) == (6, 12)

    again = submit(database, doc)
    assert not again.created and again.sweep.id == first.sweep.id
    assert again.new_experiments == []
    with database.session() as session:
        assert (count(session, Sweep), count(session, SweepMember)) == (1, 6)
        assert (count(session, Experiment), count(session, Job)) == (6, 12)


def test_overlapping_sweeps_share_experiments(database: Database) -> None:
    first = submit(database, document({"regularizers": [[], L2], "training.seed": [0, 1]}))
    second = submit(
        database,
        document({"regularizers": [L2], "training.seed": [1, 2]}, name="second"),
    )
    assert second.created and second.sweep.id != first.sweep.id
    assert second.sweep.size == 2 and len(second.new_experiments) == 1
    assert second.new_experiments[0].spec["training"]["seed"] == 2
    with database.session() as session:
        one, two = load(session, first.sweep.id), load(session, second.sweep.id)
        shared = {m.experiment_id for m in one.members} & {m.experiment_id for m in two.members}
        assert len(shared) == 1
        (shared_id,) = shared
        member = next(m for m in two.members if m.experiment_id == shared_id)
        assert (member.configuration, member.seed, member.position) == (L2_LABEL, 1, 0)
        assert session.get(Experiment, shared_id).sweep_id == first.sweep.id  # its creator
        assert sorted(sweeps.sweeps_of_experiment(session, shared_id)) == sorted(
            [first.sweep.id, second.sweep.id]
        )
        assert (count(session, Experiment), count(session, SweepMember)) == (5, 6)


def test_force_makes_a_new_sweep_with_new_experiments(database: Database) -> None:
    doc = document({"regularizers": [[], L2]})
    first = submit(database, doc)
    forced = submit(database, doc, force=True)
    assert forced.created and forced.sweep.id != first.sweep.id
    assert forced.sweep.sweep_hash != first.sweep.sweep_hash
    assert len(forced.sweep.sweep_hash) <= 64
    assert len(forced.new_experiments) == 2
    with database.session() as session:
        one, two = load(session, first.sweep.id), load(session, forced.sweep.id)
        assert not {m.experiment_id for m in one.members} & {m.experiment_id for m in two.members}
        assert [m.experiment.spec_hash for m in one.members] == [
            m.experiment.spec_hash for m in two.members
        ]
        assert count(session, Experiment) == 4
    # a plain resubmission still finds the original sweep
    again = submit(database, doc)
    assert not again.created and again.sweep.id == first.sweep.id


def test_grid_points_with_identical_specs_collapse_to_one_member(database: Database) -> None:
    doc = document({"name": ["a", "b"], "training.seed": [0, 1]})  # name: not identity
    planned = sweeps.plan(doc, 1000)
    assert [p.configuration for p in planned.points] == ["name=a", "name=a", "name=b", "name=b"]
    submission = submit(database, doc)
    assert submission.sweep.size == 2 and len(submission.new_experiments) == 2
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        assert [(m.position, m.configuration, m.seed) for m in sweep.members] == [
            (0, "name=a", 0),
            (1, "name=a", 1),
        ]
        assert count(session, SweepMember) == 2 and count(session, Experiment) == 2
    forced = submit(database, doc, force=True)  # new experiments, still one per spec
    assert forced.sweep.size == 2 and len(forced.new_experiments) == 2


# --------------------------------------------------------------------------- atomic, repaired


def test_a_late_failure_records_nothing_of_the_sweep(database: Database) -> None:
    """The last point fails at the very end (its member's seed fits no INTEGER column, as
    a seed of 2**64 did before seeds were bounded): the sweep, experiments and jobs
    written before it go too. SQLite used to keep them (its savepoints committed)."""
    doc = document()
    planned = sweeps.plan(doc, 1000)
    late = dataclasses.replace(planned.points[-1], seed=2**64)
    broken = dataclasses.replace(planned, points=[*planned.points[:-1], late])
    with database.session() as session, pytest.raises((DBAPIError, OverflowError)):
        sweeps.submit_sweep(session, broken, doc, mlflow_experiment_id="7")
    with database.session() as session:
        assert count(session, Sweep) == count(session, SweepMember) == 0
        assert count(session, Experiment) == count(session, Job) == 0
    whole = submit(database, doc)  # the same sweep, valid: recorded in full
    assert whole.created and len(whole.members) == 6 and len(whole.new_experiments) == 6


def partial_sweep(
    db: Database, doc: SweepSpec, *, experiments: int, members: int
) -> tuple[str, list[str]]:
    """A sweep as an older version left it when killed or failing mid-request: its row,
    the first ``experiments`` points' experiments (and jobs), and only ``members`` of
    them linked. Returns the sweep's id and the experiments' ids."""
    planned = sweeps.plan(doc, 1000)
    with db.session() as session:
        sweep = Sweep(
            name=planned.name,
            sweep_hash=planned.sweep_hash,
            base=doc.base,
            grid=doc.grid,
            size=len(planned.points),
            mlflow_experiment_id="7",
        )
        session.add(sweep)
        session.flush()
        points = planned.points[:experiments]
        recorded = jobstore.submit_experiments(
            session,
            [jobstore.SpecToSubmit(p.spec, p.spec_hash, p.configuration) for p in points],
            sweep_id=sweep.id,
            mlflow_experiment_id="7",
        )
        for position, (point, experiment_id) in enumerate(
            zip(points[:members], recorded.experiment_ids, strict=False)
        ):
            session.add(
                SweepMember(
                    sweep_id=sweep.id,
                    experiment_id=experiment_id,
                    position=position,
                    configuration=point.configuration,
                    seed=point.seed,
                )
            )
        session.commit()
        return sweep.id, recorded.experiment_ids


@pytest.mark.parametrize(("experiments", "members"), [(0, 0), (1, 0), (3, 2)])
def test_a_partial_sweep_is_completed_by_the_next_submission(
    database: Database, experiments: int, members: int
) -> None:
    doc = document()
    planned = sweeps.plan(doc, 1000)
    sweep_id, recorded = partial_sweep(database, doc, experiments=experiments, members=members)
    orphans = recorded[members:]  # recorded without their member, never enqueued
    again = submit(database, doc)
    assert not again.created and again.sweep.id == sweep_id
    assert again.repaired == 6 - members and again.sweep.size == 6
    assert [(m.position, m.configuration, m.seed) for m in again.members] == [
        (i, p.configuration, p.seed) for i, p in enumerate(planned.points)
    ]
    assert [m.experiment_id for m in again.members][:experiments] == recorded
    assert len(again.new_experiments) == 6 - experiments
    with database.session() as session:
        sweep = load(session, sweep_id)
        trains = {m.experiment_id: jobstore.train_job(m.experiment) for m in sweep.members}
        assert [m.experiment.spec_hash for m in sweep.members] == [
            p.spec_hash for p in planned.points
        ]
        assert all(m.experiment.mlflow_experiment_id == "7" for m in sweep.members)
        assert (count(session, Sweep), count(session, SweepMember)) == (1, 6)
        assert (count(session, Experiment), count(session, Job)) == (6, 12)
    # To enqueue: the new experiments' train jobs and the orphans' (the members it had
    # already are the reconciler's, as for any job never enqueued).
    runnable = [job for new in again.new_experiments for job in new.runnable]
    assert sorted([*runnable, *again.unsent]) == sorted(
        (trains[i].id, trains[i].queue) for i in [*orphans, *(n.id for n in again.new_experiments)]
    )
    assert {job_id for job_id, _ in again.unsent} == {trains[i].id for i in orphans}
    complete = submit(database, doc)  # complete now: a submission adds nothing
    assert complete.repaired == 0 and complete.new_experiments == [] and complete.unsent == []
    assert [m.experiment_id for m in complete.members] == [m.experiment_id for m in again.members]


def test_concurrent_repairs_of_one_partial_sweep_complete_it_once(database: Database) -> None:
    doc = document()
    sweep_id, _ = partial_sweep(database, doc, experiments=1, members=0)
    barrier = threading.Barrier(2)
    outcomes: list[sweeps.SweepSubmission | BaseException] = []

    def repair() -> None:
        try:
            with database.session() as session:
                planned = sweeps.plan(doc, 1000)
                barrier.wait(timeout=10)
                outcomes.append(
                    sweeps.submit_sweep(session, planned, doc, mlflow_experiment_id="7")
                )
                session.commit()
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=repair) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(o, sweeps.SweepSubmission) for o in outcomes), outcomes
    assert len(outcomes) == 2
    with database.session() as session:
        assert [m.position for m in load(session, sweep_id).members] == list(range(6))
        assert (count(session, Sweep), count(session, SweepMember)) == (1, 6)
        assert (count(session, Experiment), count(session, Job)) == (6, 12)


# --------------------------------------------------------------------------- results

METRICS: dict[tuple[str, int], dict[str, Any]] = {
    (NONE_LABEL, 0): {"test_accuracy": 0.90, "attack/pgd_linf/acc_eps0.1": 0.50, "loss": 0.3},
    (NONE_LABEL, 1): {"test_accuracy": 0.80, "attack/pgd_linf/acc_eps0.1": 0.40, "loss": 0.4},
    (NONE_LABEL, 2): {"test_accuracy": 0.85, "loss": 0.5},  # no robust accuracy
    (L2_LABEL, 0): {"test_accuracy": 0.95, "attack/pgd_linf/acc_eps0.1": 0.60},
    (L2_LABEL, 1): {"test_accuracy": 0.91, "attack/pgd_linf/acc_eps0.1": 0.70},
    (L2_LABEL, 2): {"test_accuracy": 0.93, "attack/pgd_linf/acc_eps0.1": 0.65},
}


def test_results_rows_per_configuration(database: Database) -> None:
    submission = submit(database, document())
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        for member in sweep.members:
            member.experiment.metrics = METRICS[(member.configuration, member.seed)]
            failed = (member.configuration, member.seed) == (L2_LABEL, 2)
            finish_experiment(member.experiment, JobState.FAILED if failed else JobState.SUCCEEDED)
        session.commit()
    with database.session() as session:
        results = sweeps.results(load(session, submission.sweep.id))

    assert results.metrics == ["test_accuracy", "attack/pgd_linf/acc_eps0.1"]  # not "loss"
    assert [row.configuration for row in results.rows] == [NONE_LABEL, L2_LABEL]
    assert results.experiments == {NONE_LABEL: 3, L2_LABEL: 3}
    assert results.succeeded == {NONE_LABEL: 3, L2_LABEL: 2}
    for row in results.rows:
        assert row.n == 3
        for name in results.metrics:
            values = [
                METRICS[(row.configuration, seed)][name]
                for seed in range(3)
                if name in METRICS[(row.configuration, seed)]
            ]
            summary = row.metrics[name]
            assert summary.n == len(values)
            assert summary.mean == pytest.approx(statistics.fmean(values))
            assert summary.std == pytest.approx(statistics.stdev(values))
    none_row = results.rows[0]
    assert none_row.metrics["attack/pgd_linf/acc_eps0.1"].n == 2 < none_row.n
    assert none_row.metrics["test_accuracy"].mean == pytest.approx(0.85)
    assert none_row.metrics["test_accuracy"].std == pytest.approx(0.05)

    records = sweeps.results_records(results)
    assert [r["configuration"] for r in records] == [NONE_LABEL, L2_LABEL]
    assert records[1]["experiments"] == 3 and records[1]["succeeded"] == 2
    pgd = records[0]["metrics"]["attack/pgd_linf/acc_eps0.1"]
    assert pgd["n"] == 2 and pgd["mean"] == pytest.approx(0.45)
    assert pgd["std"] == pytest.approx(statistics.stdev([0.5, 0.4]))

    text = sweeps.results_csv(results)
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0][:9] == [
        "configuration",
        "experiments",
        "succeeded",
        "test_accuracy_mean",
        "test_accuracy_std",
        "test_accuracy_n",
        "attack/pgd_linf/acc_eps0.1_mean",
        "attack/pgd_linf/acc_eps0.1_std",
        "attack/pgd_linf/acc_eps0.1_n",
    ]
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 2
    for line, row in zip(parsed, results.rows, strict=True):
        assert line["configuration"] == row.configuration
        assert int(line["experiments"]) == results.experiments[row.configuration]
        assert int(line["succeeded"]) == results.succeeded[row.configuration]
        for name, summary in row.metrics.items():
            assert float(line[f"{name}_mean"]) == summary.mean  # repr: exact round trip
            assert float(line[f"{name}_std"]) == summary.std
            assert int(line[f"{name}_n"]) == summary.n


def test_results_of_a_single_run_and_a_metric_missing_from_a_configuration(
    database: Database,
) -> None:
    submission = submit(database, document({"regularizers": [[], L2]}))
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        sweep.members[0].experiment.metrics = {"test_accuracy": 0.9, "train_seconds": 3}
        sweep.members[1].experiment.metrics = {"test_accuracy": 0.8}
        finish_experiment(sweep.members[0].experiment)
        session.commit()
    with database.session() as session:
        results = sweeps.results(load(session, submission.sweep.id))
    assert results.metrics == ["test_accuracy", "train_seconds"]
    assert results.succeeded == {NONE_LABEL: 1, L2_LABEL: 0}
    single = results.rows[0].metrics["test_accuracy"]
    assert (single.mean, single.std, single.n) == (0.9, 0.0, 1)
    assert "train_seconds" not in results.rows[1].metrics
    records = sweeps.results_records(results)
    assert records[0]["metrics"]["train_seconds"] == {"mean": 3.0, "std": 0.0, "n": 1}
    assert "train_seconds" not in records[1]["metrics"]
    parsed = list(csv.DictReader(io.StringIO(sweeps.results_csv(results))))
    assert parsed[1]["train_seconds_mean"] == parsed[1]["train_seconds_std"] == ""
    assert parsed[1]["train_seconds_n"] == "0"
    assert float(parsed[0]["train_seconds_mean"]) == 3.0


NO_COMPARISON = {  # the CSV's significance and instability columns of a bare SweepResults
    "baseline": "",
    "instability_members": "",
    "instability_left_out": "",
    **{f"test_accuracy_{column}": "" for column in sweeps.VERSUS_COLUMNS},
}


def test_nan_summaries_become_null_and_empty_cells() -> None:
    rows = compare(
        [("a", {"test_accuracy": math.nan}), ("a", {"test_accuracy": math.inf}), ("b", {})],
        ["test_accuracy"],
    )
    summary = rows[0].metrics["test_accuracy"]
    assert math.isnan(summary.mean) and math.isnan(summary.std) and summary.n == 0
    results = sweeps.SweepResults(["test_accuracy"], rows, {"a": 2, "b": 1}, {"a": 2, "b": 0})
    records = sweeps.results_records(results)
    assert records[0]["metrics"] == {"test_accuracy": {"mean": None, "std": None, "n": 0}}
    assert records[1] == {
        "configuration": "b",
        "experiments": 1,
        "succeeded": 0,
        "metrics": {},
        "versus_baseline": {},
        "instability": None,
    }
    parsed = list(csv.DictReader(io.StringIO(sweeps.results_csv(results))))
    assert [dict(line) for line in parsed] == [
        {
            "configuration": "a",
            "experiments": "2",
            "succeeded": "2",
            "test_accuracy_mean": "",
            "test_accuracy_std": "",
            "test_accuracy_n": "0",
            **NO_COMPARISON,
        },
        {
            "configuration": "b",
            "experiments": "1",
            "succeeded": "0",
            "test_accuracy_mean": "",
            "test_accuracy_std": "",
            "test_accuracy_n": "0",
            **NO_COMPARISON,
        },
    ]


ACCURACY = {
    (NONE_LABEL, 0): 0.90,
    (NONE_LABEL, 1): 0.80,
    (NONE_LABEL, 2): 0.85,
    (L2_LABEL, 0): 0.95,
    (L2_LABEL, 1): 0.86,
    (L2_LABEL, 2): 0.93,
}
TRUTH = np.array([0, 1, 2, 0, 1, 2])
PREDICTED = {  # L2's seed 2 failed before it predicted anything
    (NONE_LABEL, 0): [0, 1, 2, 0, 1, 2],
    (NONE_LABEL, 1): [0, 1, 2, 0, 1, 2],
    (NONE_LABEL, 2): [0, 1, 2, 0, 1, 2],
    (L2_LABEL, 0): [0, 1, 2, 0, 1, 2],
    (L2_LABEL, 1): [0, 1, 2, 0, 1, 1],
}


def store_run(
    session: Session, member: SweepMember, labels: list[int] | None, truth: np.ndarray = TRUTH
) -> None:
    accuracy = ACCURACY[(member.configuration, member.seed)]
    member.experiment.metrics = {"seed": member.seed, "test_accuracy": accuracy}
    finish_experiment(member.experiment, JobState.SUCCEEDED if labels else JobState.FAILED)
    if labels is not None:
        prediction = StoredPrediction(np.array(labels), labels_checksum(truth))
        jobstore.store_predictions(session, member.experiment_id, prediction)


def test_results_compare_rows_with_the_baseline_and_measure_instability(
    database: Database,
) -> None:
    submission = submit(database, document())
    with database.session() as session:
        for member in load(session, submission.sweep.id).members:
            store_run(session, member, PREDICTED.get((member.configuration, member.seed)))
        session.commit()
        failed = next(m.experiment_id for m in submission.members if m.seed == 2 and m.position > 2)
    with database.session() as session:
        results = sweeps.results(load(session, submission.sweep.id))

    assert results.metrics == ["test_accuracy", *INSTABILITY_METRICS]
    assert results.baseline == NONE_LABEL
    none_row, l2_row = results.rows
    assert {name: none_row.metrics[name].mean for name in INSTABILITY_METRICS} == {
        CHURN: 0.0,
        "instability/label_entropy": 0.0,
        "instability/majority_agreement": 1.0,
        "instability/all_agree": 1.0,
    }
    assert none_row.metrics[CHURN].n == 3 and math.isnan(none_row.metrics[CHURN].std)
    assert l2_row.metrics[CHURN].mean == pytest.approx(1 / 6)  # one point of six differs
    assert l2_row.metrics["instability/all_agree"].mean == pytest.approx(5 / 6)
    assert l2_row.metrics[CHURN].n == 2  # the failed member is left out, and counted
    assert results.instability[L2_LABEL].left_out == {failed: "no stored predictions"}

    difference = results.versus[L2_LABEL]["test_accuracy"]
    assert results.versus[NONE_LABEL] == {}  # the baseline compares with nothing
    assert CHURN not in results.versus[L2_LABEL]  # one number per configuration: no test
    expected = stats.ttest_rel([0.95, 0.86, 0.93], [0.90, 0.80, 0.85])  # paired by seed
    assert difference.test == "paired"
    assert difference.diff == pytest.approx((0.95 + 0.86 + 0.93) / 3 - 0.85)
    assert difference.p == pytest.approx(expected.pvalue)
    assert difference.p_holm == pytest.approx(expected.pvalue)  # one row compared
    interval = expected.confidence_interval(0.95)
    assert (difference.ci_low, difference.ci_high) == pytest.approx((interval.low, interval.high))

    records = sweeps.results_records(results)
    assert records[0]["versus_baseline"] == {}
    assert records[0]["instability"] == {"members": 3, "left_out": {}}
    assert records[0]["metrics"][CHURN] == {"mean": 0.0, "std": None, "n": 3}
    record = records[1]["versus_baseline"]["test_accuracy"]
    assert record["test"] == "paired" and record["significant"] == (expected.pvalue < 0.05)
    assert record["p_holm"] == pytest.approx(expected.pvalue)
    assert records[1]["instability"] == {
        "members": 2,
        "left_out": {failed: "no stored predictions"},
    }

    parsed = list(csv.DictReader(io.StringIO(sweeps.results_csv(results))))
    assert parsed[0]["baseline"] == parsed[1]["baseline"] == NONE_LABEL
    assert parsed[0]["test_accuracy_test"] == "baseline" and parsed[0]["test_accuracy_p"] == ""
    assert parsed[1]["test_accuracy_test"] == "paired"
    assert float(parsed[1]["test_accuracy_p_holm"]) == difference.p_holm
    assert float(parsed[1]["test_accuracy_diff_ci_low"]) == difference.ci_low
    assert float(parsed[1]["instability/churn_mean"]) == pytest.approx(1 / 6)
    assert parsed[1]["instability_members"] == "2" and parsed[1]["instability_left_out"] == "1"
    assert "instability/churn_p" not in parsed[0]

    with database.session() as session:
        by_name = sweeps.results(load(session, submission.sweep.id), baseline=L2_LABEL)
        by_index = sweeps.results(load(session, submission.sweep.id), baseline="1")
        with pytest.raises(UnknownBaselineError, match="choose one of"):
            sweeps.results(load(session, submission.sweep.id), baseline="dropout")
    assert by_name.baseline == by_index.baseline == L2_LABEL
    reverse = by_name.versus[NONE_LABEL]["test_accuracy"]
    assert reverse.diff == pytest.approx(-difference.diff)
    assert reverse.p == pytest.approx(difference.p)


def test_instability_leaves_out_members_predicted_on_another_test_set(
    database: Database,
) -> None:
    submission = submit(database, document({"training.seed": [0, 1, 2]}))
    other = np.array([2, 2, 2, 0, 1, 2])
    with database.session() as session:
        for member in load(session, submission.sweep.id).members:
            member.configuration = NONE_LABEL  # ACCURACY's keys
            truth = other if member.seed == 1 else TRUTH
            store_run(session, member, [0, 1, 2, 0, 1, member.seed], truth)
        session.commit()
        moved = next(m.experiment_id for m in submission.members if m.seed == 1)
    with database.session() as session:
        results = sweeps.results(load(session, submission.sweep.id))
    (row,) = results.rows
    assert row.metrics[CHURN].n == 2
    assert row.metrics[CHURN].mean == pytest.approx(1 / 6)  # seeds 0 and 2 differ once
    assert results.instability[row.configuration].left_out == {
        moved: "predicted on a different test set"
    }
    assert results.versus == {row.configuration: {}}  # one row: nothing to compare


def test_a_single_run_row_says_no_test_is_possible(database: Database) -> None:
    submission = submit(database, document({"regularizers": [[], L2], "training.seed": [0]}))
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        for member in sweep.members:
            member.experiment.metrics = {"seed": 0, "test_accuracy": 0.9}
        session.commit()
    with database.session() as session:
        results = sweeps.results(load(session, submission.sweep.id))
    record = sweeps.results_records(results)[1]["versus_baseline"]["test_accuracy"]
    assert record["p"] is None and record["significant"] is None
    assert record["note"] == "n=1: no test possible" and record["diff"] == 0.0
    assert results.instability == {}  # one member per configuration
    parsed = list(csv.DictReader(io.StringIO(sweeps.results_csv(results))))
    assert parsed[1]["test_accuracy_test"] == "n=1: no test possible"


# --------------------------------------------------------------------------- progress


def test_sweep_status_words() -> None:
    status = sweeps.sweep_status
    assert status({"queued": 4}, {"queued": 2}) == "queued"
    assert status({"queued": 3, "running": 1}, {"queued": 1, "running": 1}) == "running"
    assert status({"queued": 1, "succeeded": 1}, {"running": 1}) == "running"
    assert status({"succeeded": 4}, {"succeeded": 2}) == "succeeded"
    assert status({"succeeded": 2, "cancelled": 2}, {"succeeded": 1, "cancelled": 1}) == "cancelled"
    finished = {"failed": 1, "cancelled": 1, "succeeded": 1}
    assert status({"failed": 2, "cancelled": 2, "succeeded": 2}, finished) == "failed"
    assert status({}, {}) == "succeeded"
    # An experiment whose attack failed while its boundary job runs: the sweep still runs.
    assert status({"succeeded": 1, "failed": 1, "running": 1}, {"failed": 1}) == "running"
    assert status({"succeeded": 1, "cancelled": 1, "queued": 1}, {"cancelled": 1}) == "running"


def test_progress_counts_weights_and_eta(database: Database) -> None:
    submission = submit(database, document({"regularizers": [[], L2]}))
    expected = {"train": 10.0, "calibration": 2.0}
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        state = sweeps.progress(sweep, expected_s=expected, workers=3)
        assert state.status == "queued"
        assert state.experiments == {
            "queued": 2,
            "running": 0,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
        }
        assert state.jobs["queued"] == 4 and sum(state.jobs.values()) == 4
        assert state.progress == 0.0 and state.eta_s == 8.0  # 24 s of work on 3 workers
        assert state.started_at is None and state.finished_at is None and state.running == []

        a, b = (jobs_by_kind(m.experiment) for m in sweep.members)
        set_job(a["train"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=at(10))
        set_job(a["calibration"], JobState.RUNNING, progress=0.5, started=at(10))
        set_job(b["train"], JobState.RUNNING, progress=0.25, started=at(1))
        session.commit()

    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        state = sweeps.progress(sweep, expected_s=expected, workers=3)
        assert state.status == "running"
        assert state.experiments["running"] == 2 and state.experiments["queued"] == 0
        assert (state.jobs["succeeded"], state.jobs["running"], state.jobs["queued"]) == (1, 2, 1)
        # done: 10 + 0.5 * 2 + 0.25 * 10 = 13.5 of 24; remaining 1 + 7.5 + 2 = 10.5
        assert state.progress == pytest.approx(13.5 / 24)
        assert state.eta_s == pytest.approx(3.5)
        assert aware(state.started_at) == T0 and state.finished_at is None
        assert [(r.job.kind, r.member.position) for r in state.running] == [
            ("calibration", 0),
            ("train", 1),
        ]
        lone = sweeps.progress(sweep, expected_s=expected, workers=0)
        assert lone.eta_s == pytest.approx(10.5)  # no live worker: counted as one
        assert not state.eta_estimated
        # calibration still has work left and no expected duration: its weight falls back
        # to the mean of the known kinds (10); its ETA is estimated from the running
        # calibration job, half done 2 s after it started (4 s): 0.5 * 4 + 7.5 + 4 on 3
        partial = sweeps.progress(sweep, expected_s={"train": 10.0}, workers=3, now=at(12))
        assert partial.eta_s == pytest.approx(4.5) and partial.eta_estimated
        assert partial.progress == pytest.approx((10 + 5 + 2.5) / 40)
        # nothing measured: train from its running job too (a quarter in 11 s: 44 s)
        unknown = sweeps.progress(sweep, expected_s={}, workers=3, now=at(12))
        assert unknown.eta_s == pytest.approx((2 + 33 + 4) / 3) and unknown.eta_estimated
        assert unknown.progress == pytest.approx(1.75 / 4)

        # the remaining kinds known: an ETA even though a finished kind is not
        a, b = (jobs_by_kind(m.experiment) for m in sweep.members)
        set_job(a["train"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=T0)
        set_job(a["calibration"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=T0)
        set_job(b["calibration"], JobState.RUNNING, progress=0.5, started=T0)
        set_job(b["train"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=T0)
        only_calibration = sweeps.progress(sweep, expected_s={"calibration": 2.0}, workers=1)
        assert only_calibration.eta_s == pytest.approx(1.0)
        session.rollback()


def test_eta_of_job_kinds_that_never_finished_is_estimated(database: Database) -> None:
    submission = submit(database, document({"regularizers": [[], L2]}))
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        a, _ = (jobs_by_kind(m.experiment) for m in sweep.members)
        set_job(a["train"], JobState.RUNNING, progress=0.25, started=T0)
        session.commit()
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        # A fresh store: no job has ever finished. The running train job, a quarter done
        # after 30 s, takes about 120 s; the calibration jobs are guessed alike.
        fresh = sweeps.progress(sweep, expected_s={}, workers=1, now=at(30))
        assert fresh.eta_s == pytest.approx(0.75 * 120 + 120 + 2 * 120) and fresh.eta_estimated
        counted = sweeps.tallies(session, [sweep])[sweep.id]  # the API's path, counted in SQL
        listed = sweeps.summarize(counted, expected_s={}, workers=1, now=at(30))
        assert listed.eta_s == fresh.eta_s and listed.eta_estimated
        # train measured (10 s), calibration never finished anywhere: as long as train
        trained = sweeps.progress(sweep, expected_s={"train": 10.0}, workers=1, now=at(30))
        assert trained.eta_s == pytest.approx(7.5 + 10 + 2 * 10) and trained.eta_estimated
        # every remaining kind measured: the ETA is no guess
        known = {"train": 10.0, "calibration": 2.0}
        measured = sweeps.progress(sweep, expected_s=known, workers=1, now=at(30))
        assert measured.eta_s == pytest.approx(7.5 + 10 + 2 * 2) and not measured.eta_estimated


def test_finished_sweep_has_eta_zero_and_a_finish_time(database: Database) -> None:
    submission = submit(database, document({"regularizers": [[], L2]}))
    end = at(30)
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        a, b = (jobs_by_kind(m.experiment) for m in sweep.members)
        set_job(a["train"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=at(5))
        set_job(a["calibration"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=end)
        set_job(b["train"], JobState.FAILED, progress=0.3, started=at(1), finished=at(9))
        set_job(b["calibration"], JobState.FAILED, finished=at(9))
        session.commit()
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        for expected in ({"train": 10.0, "calibration": 2.0}, {}):
            state = sweeps.progress(sweep, expected_s=expected, workers=2)
            assert state.status == "failed"
            assert state.experiments["succeeded"] == 1 and state.experiments["failed"] == 1
            assert state.jobs["succeeded"] == 2 and state.jobs["failed"] == 2
            assert state.eta_s == 0.0 and state.progress == 1.0 and state.running == []
            assert aware(state.started_at) == T0 and aware(state.finished_at) == end
        for member in sweep.members:
            finish_experiment(member.experiment, JobState.CANCELLED)
        state = sweeps.progress(sweep, expected_s={}, workers=1)
        assert state.status == "cancelled" and state.eta_s == 0.0
        assert state.experiments["cancelled"] == 2
        for member in sweep.members:
            finish_experiment(member.experiment, JobState.SUCCEEDED, seconds=4)
        state = sweeps.progress(sweep, expected_s={"train": 1.0}, workers=1)
        assert state.status == "succeeded" and state.eta_s == 0.0
        assert aware(state.finished_at) == at(4)
        session.rollback()


def test_expected_durations_prefer_the_sweeps_own_jobs(database: Database) -> None:
    submission = submit(database, document({"training.seed": [0, 1]}))
    with database.session() as session:
        (point,) = sweeps.plan(document({"training.seed": [5]}), 1).points
        other = jobstore.submit_experiment(session, point.spec)
        finish_experiment(other.experiment, seconds=100)  # train and calibration: 100 s each
        jobs_by_kind(other.experiment)["calibration"].finished_at = at(4)
        sweep = load(session, submission.sweep.id)
        first, second = (jobs_by_kind(m.experiment) for m in sweep.members)
        set_job(first["train"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=at(10))
        set_job(second["train"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=at(20))
        set_job(first["calibration"], JobState.RUNNING, progress=0.5, started=T0)
        session.commit()
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        # train from this sweep (10 s and 20 s), calibration from the other experiment
        assert sweeps.expected_durations(session, sweep) == {
            "train": pytest.approx(15.0),
            "calibration": pytest.approx(4.0),
        }
        first, second = (jobs_by_kind(m.experiment) for m in sweep.members)
        set_job(first["calibration"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=at(2))
        set_job(second["calibration"], JobState.FAILED, started=T0, finished=at(50))
        session.commit()
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        assert sweeps.expected_durations(session, sweep) == {
            "train": pytest.approx(15.0),
            "calibration": pytest.approx(2.0),  # failed jobs do not count
        }


def test_expected_durations_empty_without_any_finished_job(database: Database) -> None:
    submission = submit(database, document({"training.seed": [0]}))
    with database.session() as session:
        assert sweeps.expected_durations(session, load(session, submission.sweep.id)) == {}


# --------------------------------------------------------------------------- cancel


def test_cancel_cancels_queued_jobs_and_flags_running_ones(database: Database) -> None:
    submission = submit(database, document({"regularizers": [[], L2]}))
    with database.session() as session:
        sweep = load(session, submission.sweep.id)
        a = jobs_by_kind(sweep.members[0].experiment)
        set_job(a["train"], JobState.RUNNING, progress=0.2, started=T0)
        b = jobs_by_kind(sweep.members[1].experiment)
        set_job(b["train"], JobState.SUCCEEDED, progress=1.0, started=T0, finished=T0)
        session.commit()
        running_id, done_id = a["train"].id, b["train"].id
    with database.session() as session:
        changed, kept = sweeps.cancel(session, load(session, submission.sweep.id))
        session.commit()
        assert kept == []
        assert {job.id for job in changed} == {
            running_id,
            a["calibration"].id,
            b["calibration"].id,
        }
    with database.session() as session:
        running, done = session.get(Job, running_id), session.get(Job, done_id)
        assert running.state == JobState.RUNNING and running.cancel_requested
        assert done.state == JobState.SUCCEEDED and not done.cancel_requested
        for job_id in (a["calibration"].id, b["calibration"].id):
            job = session.get(Job, job_id)
            assert job.state == JobState.CANCELLED and job.finished_at is not None
        sweep = load(session, submission.sweep.id)
        state = sweeps.progress(sweep, expected_s={}, workers=1)
        assert (state.jobs["running"], state.jobs["succeeded"], state.jobs["cancelled"]) == (
            1,
            1,
            2,
        )
        assert [r.job.id for r in state.running] == [running_id]
        assert not sweeps.is_finished(sweep)
        # Still running until the flagged job stops: no ETA of 0, no finish time yet.
        assert state.status == "running" and state.eta_s != 0.0 and state.finished_at is None
        assert sweeps.cancel(session, load(session, submission.sweep.id)) == ([], [])  # again


# --------------------------------------------------------------------------- reports


def finish_sweep(db: Database, sweep_id: str, state: JobState = JobState.SUCCEEDED) -> None:
    with db.session() as session:
        for member in load(session, sweep_id).members:
            finish_experiment(member.experiment, state)
        session.commit()


def claim(db: Database, sweep_id: str, stale_before: datetime, rebuild: bool = False) -> bool:
    with db.session() as session:
        claimed = sweeps.claim_report(session, sweep_id, stale_before=stale_before, rebuild=rebuild)
        session.commit()
        return claimed


def report_state(db: Database, sweep_id: str) -> tuple[str, str | None, str | None]:
    with db.session() as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        return sweep.report_status, sweep.report_run_id, sweep.report_error


def test_sweeps_needing_report_lists_only_finished_ones(database: Database) -> None:
    done = submit(database, document({"training.seed": [0, 1]}, name="done")).sweep.id
    pending = submit(database, document({"training.seed": [2]}, name="pending")).sweep.id
    cancelled = submit(database, document({"training.seed": [3]}, name="cancelled")).sweep.id
    cutoff = sweeps.stale_report_cutoff(utcnow())
    with database.session() as session:
        assert sweeps.sweeps_needing_report(session, cutoff) == []
    finish_sweep(database, done)
    finish_sweep(database, cancelled, JobState.CANCELLED)
    with database.session() as session:
        assert sweeps.sweeps_needing_report(session, cutoff) == [done, cancelled]
        assert sweeps.sweeps_needing_report(session, cutoff, among=[pending, done]) == [done]
        assert sweeps.sweeps_needing_report(session, cutoff, among=[]) == []

    # a sweep sharing an unfinished experiment is not finished
    shared = submit(database, document({"training.seed": [1, 2]}, name="shared")).sweep.id
    with database.session() as session:
        assert shared not in sweeps.sweeps_needing_report(session, cutoff)
    finish_sweep(database, pending)
    with database.session() as session:
        assert sweeps.sweeps_needing_report(session, cutoff) == [done, pending, cancelled, shared]

    assert claim(database, done, cutoff)
    with database.session() as session:
        sweeps.finish_report(session, done, run_id="run-1", error=None)
        session.commit()
    assert claim(database, pending, cutoff)  # building, fresh
    with database.session() as session:
        assert sweeps.sweeps_needing_report(session, cutoff) == [cancelled, shared]
        later = utcnow() + timedelta(hours=1)  # 'pending' has been building too long
        assert sweeps.sweeps_needing_report(session, later) == [pending, cancelled, shared]


def test_claim_report_is_won_once(database: Database) -> None:
    sweep_id = submit(database, document({"training.seed": [0]})).sweep.id
    finish_sweep(database, sweep_id)
    cutoff = sweeps.stale_report_cutoff(utcnow())
    assert report_state(database, sweep_id) == (ReportStatus.NONE, None, None)
    assert claim(database, sweep_id, cutoff) is True
    assert claim(database, sweep_id, cutoff) is False
    assert claim(database, sweep_id, cutoff, rebuild=True) is False  # building, not stale
    assert report_state(database, sweep_id)[0] == ReportStatus.BUILDING
    with database.session() as session:
        started = aware(session.get(Sweep, sweep_id).report_started_at)
        assert started is not None and abs(started - utcnow()) < timedelta(minutes=1)
    # the builder died: once stale, another claim takes it
    assert claim(database, sweep_id, utcnow() + timedelta(seconds=1)) is True
    assert claim(database, sweep_id, cutoff) is False

    with database.session() as session:
        sweeps.finish_report(session, sweep_id, run_id="run-1", error=None)
        session.commit()
    assert report_state(database, sweep_id) == (ReportStatus.DONE, "run-1", None)
    assert claim(database, sweep_id, cutoff) is False  # done: only a rebuild takes it
    assert claim(database, sweep_id, utcnow() + timedelta(hours=1)) is False
    assert claim(database, sweep_id, cutoff, rebuild=True) is True
    assert claim(database, sweep_id, cutoff, rebuild=True) is False  # building now

    with database.session() as session:
        sweeps.finish_report(session, sweep_id, run_id=None, error="boom")
        session.commit()
    assert report_state(database, sweep_id) == (ReportStatus.FAILED, "run-1", "boom")
    with database.session() as session:
        assert sweeps.sweeps_needing_report(session, cutoff) == []  # failed: on demand only
    assert claim(database, sweep_id, cutoff) is False
    assert claim(database, sweep_id, cutoff, rebuild=True) is True
    assert report_state(database, sweep_id) == (ReportStatus.BUILDING, "run-1", None)
    with database.session() as session:
        sweeps.finish_report(session, sweep_id, run_id="run-2", error=None)
        session.commit()
    assert report_state(database, sweep_id) == (ReportStatus.DONE, "run-2", None)
    with database.session() as session:
        assert sweeps.claim_report(session, "no-such-sweep", stale_before=cutoff) is False


def race(db: Database, sweep_id: str, cutoff: datetime) -> list[bool | BaseException]:
    """Two threads claim the same report at the same moment, each in its own session."""
    barrier = threading.Barrier(2)
    outcomes: list[bool | BaseException] = []

    def claimer() -> None:
        try:
            barrier.wait(timeout=10)
            outcomes.append(claim(db, sweep_id, cutoff))
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_concurrent_claims_have_one_winner(database: Database) -> None:
    ids = [
        submit(database, document({"training.seed": [seed]}, name=f"race {seed}")).sweep.id
        for seed in range(3)
    ]
    for sweep_id in ids:
        finish_sweep(database, sweep_id)
    cutoff = sweeps.stale_report_cutoff(utcnow())
    for sweep_id in ids:
        outcomes = race(database, sweep_id, cutoff)
        assert sorted(outcomes, key=str) == [False, True], outcomes
        assert report_state(database, sweep_id)[0] == ReportStatus.BUILDING
