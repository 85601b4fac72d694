"""The supervisor and the job child on their own: duplicates, schema check, merged
metrics, a child run by hand. (The time limit: tests/faults/test_job_fails.py.)"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from regcore.spec import ExperimentSpec
from service import jobstore
from service.db import Database
from service.schema import upgrade_database
from service.tables import Experiment, JobState
from tests.worker.conftest import FAST_SPEC, Backend, Processes, spec_with
from worker.launcher import plan_workers
from worker.supervisor import supervise_job


def test_a_duplicate_delivery_claims_nothing_and_returns_at_once(embedded: Backend) -> None:
    experiment_id = embedded.submit(FAST_SPEC, send=False)
    train = embedded.train(experiment_id)
    claim(embedded.db, train.id, "other:1")  # another worker holds it, alive
    started = time.monotonic()
    outcome = supervise_job(train.id, settings=embedded.settings, worker="me:2", device="cpu")
    assert outcome == "skipped" and time.monotonic() - started < 2
    train = embedded.train(experiment_id)
    assert (train.worker, train.attempt) == ("other:1", 1)  # untouched


def test_a_worker_refuses_an_outdated_job_store(embedded: Backend, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"  # a data dir whose job store was never migrated
    processes = Processes(tmp_path / "fresh-logs", {**embedded.processes.env})
    processes.env["REGBENCH_DATA_DIR"] = str(fresh)
    (plan,) = plan_workers([])
    try:
        worker = processes.start("worker", plan.argv)
        assert worker.wait(timeout=60) != 0
        assert "regbench db upgrade" in processes.log("worker")
    finally:
        processes.stop_all()


def test_analysis_metrics_finishing_together_are_merged(postgres_url: str) -> None:
    upgrade_database(postgres_url)
    db = Database(postgres_url)
    try:
        spec = ExperimentSpec.model_validate(
            spec_with(FAST_SPEC, analyses=[{"kind": "calibration"}, {"kind": "geometry"}])
        )
        with db.session() as session:
            experiment = jobstore.submit_experiment(session, spec).experiment
            train = jobstore.train_job(experiment)
            analyses = [job.id for job in experiment.jobs if job.depends_on]
            train.state = JobState.SUCCEEDED  # its analyses may run now
            session.commit()
            experiment_id = experiment.id
        for number, job_id in enumerate(analyses):
            claim(db, job_id, f"w{number}")

        def finish_second() -> None:
            with db.session() as session:
                jobstore.finish(session, analyses[1], "w1", JobState.SUCCEEDED, metrics={"b": 2.0})
                session.commit()

        with db.session() as first:
            jobstore.finish(first, analyses[0], "w0", JobState.SUCCEEDED, metrics={"a": 1.0})
            second = threading.Thread(target=finish_second)
            second.start()
            time.sleep(0.5)  # the second one reads the metrics now, or waits for the lock
            first.commit()
        second.join(timeout=30)
        with db.session() as session:
            assert session.get(Experiment, experiment_id).metrics == {"a": 1.0, "b": 2.0}
    finally:
        db.dispose()


def test_the_child_runs_by_hand_and_an_analysis_fetches_the_model_from_mlflow(
    embedded: Backend, tmp_path: Path
) -> None:
    """``python -m worker.child JOB_ID`` on a claimed job (how one debugs a job); an
    analysis on a machine without the trained model takes it from the MLflow run."""
    spec = spec_with(FAST_SPEC, analyses=[{"kind": "calibration"}])
    experiment_id = embedded.submit(spec, send=False)
    jobs = embedded.jobs(experiment_id)
    claim(embedded.db, jobs["train"].id, "by-hand")
    child = embedded.processes.start(
        "train", [sys.executable, "-m", "worker.child", jobs["train"].id]
    )
    assert child.wait(timeout=120) == 0, embedded.processes.log("train")
    train = embedded.train(experiment_id)
    assert train.state == "running"  # the supervisor records the end, not the child
    assert "trained 3 epochs" in train.message and train.mlflow_run_id is not None
    with embedded.db.session() as session:
        assert jobstore.finish(session, train.id, "by-hand", JobState.SUCCEEDED)
        session.commit()

    workdir = embedded.settings.runs_dir / experiment_id
    for name in ("model.pt", "history.json"):  # as if trained on another machine
        (workdir / name).unlink()
    claim(embedded.db, jobs["calibration"].id, "by-hand")
    result = tmp_path / "result.json"
    argv = [sys.executable, "-m", "worker.child", jobs["calibration"].id, "--result", str(result)]
    child = embedded.processes.start("calibration", argv)
    assert child.wait(timeout=120) == 0, embedded.processes.log("calibration")
    report = json.loads(result.read_text())
    assert report["status"] == "succeeded" and report["mlflow_run_id"] == train.mlflow_run_id
    assert 0 <= report["metrics"]["calibration/ece"] <= 1
    assert not (workdir / "fetched").exists() or not any((workdir / "fetched").iterdir())
    artifacts = embedded.mlflow().list_artifacts(train.mlflow_run_id, "analyses/calibration")
    assert "analyses/calibration/reliability.csv" in {a.path for a in artifacts}


def claim(db: Database, job_id: str, worker: str) -> None:
    with db.session() as session:
        job = jobstore.claim(
            session, job_id, worker=worker, device="cpu",
            stale_before=jobstore.utcnow(), max_attempts=3,
        )  # fmt: skip
        session.commit()
    assert job is not None, f"could not claim {job_id}"
