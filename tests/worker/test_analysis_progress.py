"""An analysis job reports how far its analysis is, as a train job reports its epochs:
the job store's progress and message, written by the worker's ProgressReporter."""

from __future__ import annotations

from datetime import timedelta

from regcore.analysis.base import AnalysisEvent
from regcore.spec import ExperimentSpec
from service import jobstore
from service.db import Database
from service.tables import Job, JobState, utcnow
from worker.child import ProgressReporter, read_job

SPEC = {
    "dataset": {"name": "digits", "size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 1},
    "analyses": [{"kind": "boundary", "planes": 10}],
}


def running_analysis_job(db: Database) -> str:
    """A submitted experiment whose train job succeeded and whose boundary job runs on w1."""
    with db.session() as session:
        experiment = jobstore.submit_experiment(
            session, ExperimentSpec.model_validate(SPEC)
        ).experiment
        jobs = {job.kind: job for job in experiment.jobs}
        jobs["train"].state = JobState.SUCCEEDED
        session.commit()
        job_id = jobs["boundary"].id
        claimed = jobstore.claim(
            session, job_id, worker="w1", device="cpu",
            stale_before=utcnow() - timedelta(seconds=60), max_attempts=3,
        )  # fmt: skip
        assert claimed is not None
        session.commit()
    return job_id


def job_progress(db: Database, job_id: str) -> tuple[float, str | None]:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.progress, job.message


def event(fraction: float, message: str, finished: bool = False) -> AnalysisEvent:
    return AnalysisEvent(1, 1, "boundary", fraction, message, 1.5, finished)


def test_an_analysis_job_reports_its_progress(database: Database) -> None:
    job_id = running_analysis_job(database)
    reporter = ProgressReporter(database, read_job(database, job_id, "w1"), min_interval_s=0.0)

    reporter.analysis(event(0.0, "started"))
    assert job_progress(database, job_id) == (0.0, "boundary: started")
    reporter.analysis(event(0.4, "half width 40: 4/10 planes"))
    assert job_progress(database, job_id) == (0.4, "boundary: half width 40: 4/10 planes")


def test_progress_between_start_and_end_is_throttled(database: Database) -> None:
    job_id = running_analysis_job(database)
    reporter = ProgressReporter(database, read_job(database, job_id, "w1"), min_interval_s=3600)

    reporter.analysis(event(0.0, "started"))
    reporter.analysis(event(0.4, "half width 40: 4/10 planes"))  # within the interval
    assert job_progress(database, job_id) == (0.0, "boundary: started")
    reporter.analysis(event(1.0, "done", finished=True))  # the end is always written
    assert job_progress(database, job_id) == (1.0, "boundary: done")
