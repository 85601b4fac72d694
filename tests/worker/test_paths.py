"""No name can lead a file outside the data directory: the worker's checkpoints, spec
and metrics, the MLflow artifacts and the sweep report all land under paths made from
ids. Reproduces the reported defect: a sweep named ``x/../../../../tmp/somewhere`` had
its MLflow artifact location built from its name, so the worker and the report builder
wrote there.

Names like that are refused by the spec models now (tests/regcore/test_spec_names.py,
tests/api/test_names.py); here the sweep is recorded as an earlier version recorded it
(``STORED`` context), to show that even then no name reaches a path.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from mlflow.tracking import MlflowClient

from api.operations import submit_sweep
from api.tracking import Tracking
from regcore.spec import SweepSpec
from service.tables import Experiment, Job, Sweep
from tests.worker.conftest import FAST_SPEC, Backend, spec_with

pytestmark = pytest.mark.slow

# From <data>/mlartifacts, "sweep x" then three ".." reach the test's tmp_path.
HOSTILE = "x/../../../outside/sweep"


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file() or path.is_symlink())


def sweep_state(backend: Backend, sweep_id: str) -> tuple[list[str], str] | None:
    with backend.db.session() as session:
        sweep = session.get(Sweep, sweep_id)
        assert sweep is not None
        states = [
            job.state
            for experiment in session.query(Experiment).filter(Experiment.sweep_id == sweep_id)
            for job in session.query(Job).filter(Job.experiment_id == experiment.id)
        ]
        if all(s in ("succeeded", "failed", "cancelled") for s in states) and (
            sweep.report_status in ("done", "failed")
        ):
            return states, sweep.report_status
    return None


def test_a_hostile_sweep_name_writes_nothing_outside_the_data_dir(
    embedded: Backend, tmp_path: Path
) -> None:
    settings = embedded.settings
    document = SweepSpec.model_validate(
        {
            "name": HOSTILE,
            "base": spec_with(FAST_SPEC, training={"epochs": 1}),
            "grid": {"training.seed": [0, 1]},
        },
        context={"stored": True},  # regcore.spec.STORED: read as an earlier version wrote it
    )
    assert document.name == HOSTILE
    tracking = Tracking(settings)
    with embedded.db.session() as session:
        submission = submit_sweep(
            session, embedded.celery, tracking, settings, document, owner="local"
        )
        sweep = submission.sweep
        sweep_id, mlflow_experiment_id, sweep_hash = (
            sweep.id,
            sweep.mlflow_experiment_id,
            sweep.sweep_hash,
        )
    assert mlflow_experiment_id is not None

    embedded.start_launcher()  # a worker and the reconciler, as `regbench worker` runs them
    states, report = embedded.wait(
        lambda: sweep_state(embedded, sweep_id), 180, "the sweep's jobs and report"
    )
    assert states == ["succeeded", "succeeded"], embedded.processes.logs()
    assert report == "done", embedded.processes.logs()

    data_dir = settings.data_dir.resolve()
    logs = (tmp_path / "logs").resolve()
    written = files_under(tmp_path)
    outside = [p for p in written if not (p.is_relative_to(data_dir) or p.is_relative_to(logs))]
    assert not outside, f"written outside the data dir: {outside}"
    assert not (tmp_path / "outside").exists()
    location = MlflowClient(settings.tracking_uri).get_experiment(mlflow_experiment_id)
    directory = Path(url2pathname(urlparse(location.artifact_location).path))
    assert directory == settings.artifact_root / f"sweep-{sweep_hash}"  # not from the name
    # What was written lies where the ids say: checkpoints under runs/<experiment id>,
    # artifacts (checkpoints, the report) under the sweep's directory.
    with embedded.db.session() as session:
        experiment_ids = [
            e.id for e in session.query(Experiment).filter(Experiment.sweep_id == sweep_id)
        ]
    for experiment_id in experiment_ids:
        assert (settings.runs_dir / experiment_id).is_dir()
    artifacts = {p.name for p in files_under(directory)}
    assert {"model.pt", "report.html", "report.png"} <= artifacts


def test_a_run_in_an_experiment_located_outside_by_an_earlier_version_is_refused(
    embedded: Backend, tmp_path: Path
) -> None:
    """An MLflow experiment created by an earlier version from a hostile name keeps its
    location; the worker refuses to open a run there (the job fails, saying why) rather
    than write outside."""
    settings = embedded.settings
    outside = tmp_path / "outside"
    client = MlflowClient(settings.tracking_uri)
    mlflow_experiment_id = client.create_experiment(
        f"old sweep {tmp_path.name}", artifact_location=outside.as_uri()
    )
    experiment_id = embedded.submit(spec_with(FAST_SPEC, training={"epochs": 1}))
    with embedded.db.session() as session:  # as that version recorded it (no worker yet)
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.mlflow_experiment_id = mlflow_experiment_id
        session.commit()
    embedded.start_launcher()
    jobs = embedded.wait_finished(experiment_id, timeout=120)
    assert jobs["train"].state == "failed", embedded.processes.logs()
    assert "outside" in (jobs["train"].error or "")
    assert not outside.exists() or not files_under(outside)
