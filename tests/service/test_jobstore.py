"""Job-store transitions on SQLite and PostgreSQL: dedup, atomic claims, cancel, reaper."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from regcore.spec import ExperimentSpec
from service import jobstore
from service.db import Database
from service.tables import Job, JobState, utcnow

SPEC: dict[str, Any] = {
    "dataset": {"name": "digits", "size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 1},
    "analyses": [{"kind": "calibration"}],
}


def spec(**training: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate({**SPEC, "training": {**SPEC["training"], **training}})


def claim(db: Database, job_id: str, worker: str = "w1", stale_s: float = 60) -> Job | None:
    with db.session() as session:
        job = jobstore.claim(
            session, job_id, worker=worker, device="cpu",
            stale_before=utcnow() - timedelta(seconds=stale_s), max_attempts=3,
        )  # fmt: skip
        session.commit()
        return job


def test_submit_creates_train_and_dependent_analysis_jobs(database: Database) -> None:
    with database.session() as session:
        submission = jobstore.submit_experiment(session, spec())
        session.commit()
        jobs = {job.kind: job for job in submission.experiment.jobs}
        assert submission.created and set(jobs) == {"train", "calibration"}
        assert jobs["calibration"].depends_on == jobs["train"].id
        assert jobstore.experiment_status(submission.experiment) == "queued"


def test_identical_spec_is_deduplicated_unless_forced(database: Database) -> None:
    with database.session() as session:
        first = jobstore.submit_experiment(session, spec())
        again = jobstore.submit_experiment(session, spec(device="cpu"))  # not identity
        forced = jobstore.submit_experiment(session, spec(), force=True)
        other = jobstore.submit_experiment(session, spec(seed=1))
        session.commit()
    assert not again.created and again.experiment.id == first.experiment.id
    assert forced.created and forced.experiment.id != first.experiment.id
    assert other.created


def test_claim_is_atomic_and_respects_dependencies(database: Database) -> None:
    with database.session() as session:
        experiment = jobstore.submit_experiment(session, spec()).experiment
        session.commit()
        train = jobstore.train_job(experiment).id
        analysis = next(j.id for j in experiment.jobs if j.kind == "calibration")
    assert claim(database, analysis) is None  # its train job has not succeeded
    job = claim(database, train, "w1")
    assert job is not None and job.state == JobState.RUNNING and job.attempt == 1
    assert claim(database, train, "w2") is None  # a duplicate delivery claims nothing
    with database.session() as session:
        assert jobstore.finish(session, train, "w1", JobState.SUCCEEDED, metrics={"acc": 1.0})
        assert not jobstore.finish(session, train, "w2", JobState.FAILED)  # not its job
        session.commit()
    assert claim(database, analysis) is not None


def test_stale_heartbeat_lets_another_worker_take_over(database: Database) -> None:
    with database.session() as session:
        train = jobstore.train_job(jobstore.submit_experiment(session, spec()).experiment).id
        session.commit()
    assert claim(database, train, "w1") is not None
    assert claim(database, train, "w2", stale_s=60) is None  # w1 is alive
    taken = claim(database, train, "w2", stale_s=-1)  # w1's heartbeat counts as stale
    assert taken is not None and taken.worker == "w2" and taken.attempt == 2
    with database.session() as session:
        assert jobstore.heartbeat(session, train, "w1")  # w1 lost it: told to stop


def test_cancel_queued_and_running(database: Database) -> None:
    with database.session() as session:
        experiment = jobstore.submit_experiment(session, spec()).experiment
        session.commit()
        train = jobstore.train_job(experiment).id
    assert claim(database, train) is not None
    with database.session() as session:
        experiment = session.get(Job, train).experiment
        changed = jobstore.request_cancel(session, experiment)
        session.commit()
        states = {job.kind: job.state for job in experiment.jobs}
    assert {job.kind for job in changed} == {"train", "calibration"}
    assert states == {"train": JobState.RUNNING, "calibration": JobState.CANCELLED}
    with database.session() as session:
        assert jobstore.heartbeat(session, train, "w1", progress=0.5) is True  # stop!
        assert jobstore.finish(session, train, "w1", JobState.CANCELLED)
        session.commit()
        assert jobstore.experiment_status(session.get(Job, train).experiment) == "cancelled"


def test_reaper_requeues_then_gives_up(database: Database) -> None:
    with database.session() as session:
        train = jobstore.train_job(jobstore.submit_experiment(session, spec()).experiment).id
        session.commit()
    for attempt in (1, 2, 3):
        job = claim(database, train, f"w{attempt}")
        assert job is not None and job.attempt == attempt
        with database.session() as session:
            requeued = jobstore.requeue_stale(session, utcnow() + timedelta(seconds=1), 3)
            session.commit()
        assert requeued == ([train] if attempt < 3 else [])
    with database.session() as session:
        job = session.get(Job, train)
        assert job.state == JobState.FAILED and "gave up after 3 attempts" in job.error


def test_a_result_held_across_a_job_store_outage_is_recorded_unless_reclaimed(
    database: Database,
) -> None:
    """The reaper requeued the job while its worker could not reach the job store: the
    worker's result still lands while no other worker has claimed the job again."""
    with database.session() as session:
        experiment = jobstore.submit_experiment(session, spec(seed=1)).experiment
        other = jobstore.submit_experiment(session, spec(seed=2)).experiment
        first, second = jobstore.train_job(experiment).id, jobstore.train_job(other).id
        session.commit()
    for job_id in (first, second):
        assert claim(database, job_id, "w1") is not None
    with database.session() as session:
        assert set(jobstore.requeue_stale(session, utcnow() + timedelta(seconds=1), 3)) == {
            first,
            second,
        }
        session.commit()
    assert claim(database, second, "w2") is not None  # taken by another worker meanwhile
    with database.session() as session:
        done = {"accuracy": 0.9}
        assert not jobstore.finish(session, first, "w1", JobState.SUCCEEDED)  # not running
        assert jobstore.finish(session, first, "w1", JobState.SUCCEEDED, metrics=done, attempt=1)
        assert not jobstore.finish(session, second, "w1", JobState.SUCCEEDED, attempt=1)
        session.commit()
        job = session.get(Job, first)
        assert (job.state, job.worker, job.attempt) == (JobState.SUCCEEDED, "w1", 1)
        assert job.experiment.metrics == done
        assert session.get(Job, second).state == JobState.RUNNING


def test_reconciler_finds_unclaimed_queued_jobs(database: Database) -> None:
    with database.session() as session:
        experiment = jobstore.submit_experiment(session, spec()).experiment
        session.commit()
        train = jobstore.train_job(experiment).id
        assert [j.id for j in jobstore.runnable_queued_jobs(session, utcnow())] == [train]
        jobstore.mark_enqueued(session, [train])
        session.commit()
        assert jobstore.runnable_queued_jobs(session, utcnow() - timedelta(seconds=30)) == []
        assert [j.id for j in jobstore.runnable_queued_jobs(session, utcnow())] == [train]


def test_dependents_of_a_failed_or_cancelled_job_are_closed(database: Database) -> None:
    for outcome, closed in (
        (JobState.FAILED, JobState.FAILED),
        (JobState.CANCELLED, JobState.CANCELLED),
    ):
        with database.session() as session:
            experiment = jobstore.submit_experiment(session, spec(), force=True).experiment
            session.commit()
            train = jobstore.train_job(experiment).id
        assert claim(database, train) is not None
        with database.session() as session:
            assert jobstore.finish(session, train, "w1", outcome, error="diverged")
            session.commit()
            analysis = next(j for j in session.get(Job, train).experiment.jobs if j.kind != "train")
            assert analysis.state == closed and "the job it needs" in analysis.error
