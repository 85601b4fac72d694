"""What the MLflow UI shows of a sweep run by a real worker: one training run per
experiment named by its configuration and seed, the sweep report apart from them (its
own ``regbench.kind``), and the code's git commit on every run."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from api.operations import submit_sweep
from api.tracking import Tracking
from regcore.spec import SweepSpec
from tests.regcore.test_provenance import git_head
from tests.worker.conftest import FAST_SPEC, Backend, spec_with
from tests.worker.test_paths import sweep_state

pytestmark = pytest.mark.slow


def test_sweep_runs_are_named_by_seed_tagged_by_kind_and_commit(embedded: Backend) -> None:
    settings = embedded.settings
    document = SweepSpec.model_validate(
        {
            "name": "names",
            "base": spec_with(FAST_SPEC, training={"epochs": 1}),
            "grid": {"training.seed": [0, 1]},
        }
    )
    with embedded.db.session() as session:
        submission = submit_sweep(
            session, embedded.celery, Tracking(settings), settings, document, owner="local"
        )
        sweep_id, mlflow_experiment_id = submission.sweep.id, submission.sweep.mlflow_experiment_id
    embedded.start_launcher()
    states, report = embedded.wait(
        lambda: sweep_state(embedded, sweep_id), 180, "the sweep's jobs and report"
    )
    assert states == ["succeeded", "succeeded"] and report == "done", embedded.processes.logs()

    client = MlflowClient(settings.tracking_uri)
    every = client.search_runs([mlflow_experiment_id])
    assert len(every) == 3  # two seeds and the report
    # The filter a user types in the MLflow UI keeps the training runs only.
    training = client.search_runs(
        [mlflow_experiment_id], filter_string="tags.`regbench.kind` = 'train'"
    )
    names = sorted(run.info.run_name for run in training)
    assert names == ["base seed=0", "base seed=1"]  # the configuration, then the seed
    (report_run,) = client.search_runs(
        [mlflow_experiment_id], filter_string="tags.`regbench.kind` = 'sweep-report'"
    )
    assert report_run.data.tags["regbench.sweep_id"] == sweep_id
    for run in [*training, report_run]:
        assert run.data.tags.get("mlflow.source.git.commit") == git_head()
        assert run.data.tags.get("regbench.git_commit") == git_head()
