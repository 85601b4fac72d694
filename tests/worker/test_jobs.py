"""A submitted spec goes through a real Celery worker: trained, analysed, logged to MLflow."""

from __future__ import annotations

from datetime import timedelta

import pytest

from service import jobstore
from tests.worker.conftest import FAST_SPEC, Backend, alive, descendants, spec_with

pytestmark = pytest.mark.slow


def test_spec_is_trained_then_its_analysis_runs_into_the_same_run(backend: Backend) -> None:
    experiment_id = backend.submit(spec_with(FAST_SPEC, analyses=[{"kind": "calibration"}]))
    # `regbench worker` on a machine without GPUs: one worker on the cpu queue (the
    # embedded default also runs the reconciler beside it).
    backend.start_launcher(*(["--no-reconcile"] if backend.name == "cluster" else []))

    seen: list[str] = []

    def finished() -> bool:
        jobs = backend.jobs(experiment_id)
        if not seen or seen[-1] != jobs["train"].state:
            seen.append(jobs["train"].state)
        return all(job.state in ("succeeded", "failed", "cancelled") for job in jobs.values())

    backend.wait(finished, 120, "the train and calibration jobs to finish", every=0.05)
    jobs = backend.jobs(experiment_id)
    train, calibration = jobs["train"], jobs["calibration"]
    assert train.state == "succeeded", f"{train}\n{backend.processes.logs()}"
    assert calibration.state == "succeeded", f"{calibration}\n{backend.processes.logs()}"
    assert seen == ["queued", "running", "succeeded"]
    assert train.attempt == 1 and train.progress == 1.0 and train.worker.startswith("cpu@")
    assert "trained 3 epochs" in train.message
    assert calibration.started_at >= train.finished_at  # it waited for the checkpoint

    experiment = backend.experiment(experiment_id)
    metrics = experiment["metrics"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs"] == 3
    assert "calibration/ece" in metrics  # the analysis job's metrics, merged in
    with backend.db.session() as session:  # the test labels, for instability across seeds
        predicted = jobstore.stored_predictions(session, [experiment_id])[experiment_id]
    assert len(predicted.labels) > 0 and len(predicted.labels_checksum) == 64

    client = backend.mlflow()
    run_id = experiment["mlflow_run_id"]
    assert run_id is not None and train.mlflow_run_id == calibration.mlflow_run_id == run_id
    runs = client.search_runs(
        [client.get_experiment_by_name(backend.settings.mlflow_experiment).experiment_id]
    )
    assert [run.info.run_id for run in runs] == [run_id]  # one run for the experiment
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["regbench.experiment_id"] == experiment_id
    assert run.data.tags["spec_hash"] == metrics["spec_hash"]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == [1, 2, 3]
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.metrics["calibration/ece"] == metrics["calibration/ece"]
    checkpoints = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert "checkpoints/model.pt" in checkpoints
    analyses = {a.path for a in client.list_artifacts(run_id, "analyses/calibration")}
    assert "analyses/calibration/reliability.png" in analyses

    with backend.db.session() as session:  # the worker reports itself alive, with its queue
        workers = jobstore.live_workers(session, timedelta(seconds=30))
        assert [(w.queues, w.device) for w in workers] == [("cpu", "cpu")]

    if backend.name == "cluster":  # (a warm shutdown on the SQLite broker is just slower)
        launched = descendants(backend.processes.started["launcher"].pid)
        assert backend.processes.stop("launcher") == 0  # SIGTERM: forwarded, then waited for
        assert not [pid for pid in launched if alive(pid)], "the launcher left processes behind"
