"""The sweep report built from a real stored sweep: the members' per-epoch histories read
from MLflow for the learning curves, the noise metrics beside the attacks, a link to every
run and each configuration's spec, all in the report run's self-contained HTML."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from regcore.spec import SweepSpec
from service import reports, sweeps
from service.db import Database
from service.settings import Settings
from service.tables import Experiment, JobState
from service.tracking import ensure_experiment

BASE: dict[str, Any] = {
    "dataset": {"name": "digits", "size": 8},
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"epochs": 3},
    "analyses": [{"kind": "calibration"}],
}
GRID = {"regularizers": [[], [{"name": "l2", "weight": 0.001}]], "training.seed": [0, 1]}
NONE_LABEL, L2_LABEL = "regularizers=none", "regularizers=l2(weight=0.001)"
UI = "http://mlflow.example:5000/"


def final_metrics(number: int) -> dict[str, Any]:
    return {
        "test_accuracy": 0.9 + 0.01 * number,
        "attack/pgd_linf/acc_eps0": 0.9 + 0.01 * number,
        "attack/pgd_linf/acc_eps0.1": 0.5 - 0.05 * number,
        "noise/gaussian_l2/acc_eps0": 0.9 + 0.01 * number,
        "noise/gaussian_l2/acc_eps1": 0.8 - 0.01 * number,
        "boundary/w20/tv_iso_mean": 1.0 + number,
        "geometry/curvature_mean": 3.0 * (number + 1),
        "seed": number % 2,
    }


def history(number: int, epoch: int) -> dict[str, float]:
    return {
        "train/loss": 2.0 / epoch + 0.5,  # with a penalty: not what the report draws
        "train/data_loss": 1.0 / epoch + 0.1 * number,
        "val/loss": 1.2 / epoch + 0.1 * number,
        "val/accuracy": 0.5 + 0.1 * epoch + 0.01 * number,
    }


@pytest.fixture
def stored(database: Database, tmp_path: Path) -> tuple[Settings, str, dict[str, str]]:
    """A finished sweep of 2 configurations x 2 seeds; three members trained with MLflow
    runs holding 3 epochs of history each, the fourth failed before it had a run."""
    settings = Settings(data_dir=tmp_path, mlflow_ui_url=UI)
    client = MlflowClient(settings.tracking_uri)
    experiment_id = ensure_experiment(client, "report test", settings.mlflow_artifact_location("t"))
    document = SweepSpec(name="reported", base=BASE, grid=GRID)
    with database.session() as session:
        submission = sweeps.submit_sweep(
            session, sweeps.plan(document, 100), document, mlflow_experiment_id=experiment_id
        )
        session.commit()
        sweep_id = submission.sweep.id
        run_ids: dict[str, str] = {}
        for number, member in enumerate(sorted(submission.sweep.members, key=lambda m: m.position)):
            experiment = session.get(Experiment, member.experiment_id)
            assert experiment is not None
            failed = number == 3
            for job in experiment.jobs:
                job.state = (
                    JobState.FAILED if failed and job.kind == "train" else JobState.SUCCEEDED
                )
            if failed:
                continue
            run = client.create_run(experiment_id, run_name=f"member {number}")
            for epoch in (1, 2, 3):
                for key, value in history(number, epoch).items():
                    client.log_metric(run.info.run_id, key, value, step=epoch)
            client.set_terminated(run.info.run_id)
            experiment.mlflow_experiment_id = experiment_id
            experiment.mlflow_run_id = run.info.run_id
            experiment.metrics = final_metrics(number)
            run_ids[experiment.id] = run.info.run_id
        session.commit()
    return settings, sweep_id, run_ids


def report_page(settings: Settings, database: Database, sweep_id: str, tmp_path: Path) -> str:
    built = reports.build(settings, database, sweep_id)
    assert built is not None and built.error is None, built
    client = MlflowClient(settings.tracking_uri)
    local = client.download_artifacts(built.run_id, "report.html", str(tmp_path / "got"))
    return Path(local).read_text(encoding="utf-8")


def test_the_members_histories_come_from_mlflow(
    stored: tuple[Settings, str, dict[str, str]], database: Database
) -> None:
    settings, sweep_id, _ = stored
    with database.session() as session:
        sweep = sweeps.load(session, sweep_id)
        assert sweep is not None
        members = sorted(sweep.members, key=lambda m: m.position)
        histories = reports.member_histories(
            MlflowClient(settings.tracking_uri), members, threads=3
        )
    assert list(histories) == [NONE_LABEL, L2_LABEL]
    assert len(histories[NONE_LABEL]) == 2 and len(histories[L2_LABEL]) == 1  # one failed
    first = histories[NONE_LABEL][0]
    assert first["train/data_loss"] == [(e, pytest.approx(1.0 / e)) for e in (1.0, 2.0, 3.0)]
    assert first["val/accuracy"] == [(e, pytest.approx(0.5 + 0.1 * e)) for e in (1.0, 2.0, 3.0)]
    assert set(first) == {"train/loss", "train/data_loss", "val/loss", "val/accuracy"}


def test_the_report_of_a_stored_sweep_is_a_readable_page(
    stored: tuple[Settings, str, dict[str, str]], database: Database, tmp_path: Path
) -> None:
    settings, sweep_id, run_ids = stored
    page = report_page(settings, database, sweep_id, tmp_path)

    assert page.count("<h1>") == 1 and page.count("regbench sweep: reported") == 2
    captions = re.findall(r"<figcaption><b>(.*?)\.</b>", page)
    assert captions == [
        "Learning curves", "Test accuracy", "Robust accuracy vs eps", "Noise robustness",
        "Decision-boundary TV and curvature",
    ]  # fmt: skip
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(captions)
    assert all(base64.b64decode(data)[:4] == b"\x89PNG" for data in images)
    assert '<th><abbr title="noise/gaussian_l2/acc_eps1">Gaussian L2 ε=1</abbr></th>' in page
    assert "Against the baseline regularizers=none" in page

    # a link to every run that has one, into the configured MLflow UI
    with database.session() as session:
        experiments = {e.id: e for e in session.query(Experiment).all()}
        for experiment_id, run_id in run_ids.items():
            mlflow_experiment = experiments[experiment_id].mlflow_experiment_id
            url = f"{UI}#/experiments/{mlflow_experiment}/runs/{run_id}"
            assert f'<a href="{html.escape(url)}">seed ' in page
    assert page.count("no MLflow run (failed)") == 1

    # each configuration's spec, parsed back: the stored spec of its first member
    details = re.findall(r"<summary>spec \(YAML\)</summary><pre>(.*?)</pre>", page, re.S)
    assert len(details) == 2
    specs = [yaml.safe_load(html.unescape(text)) for text in details]
    with database.session() as session:
        sweep = sweeps.load(session, sweep_id)
        assert sweep is not None
        firsts = [m for m in sorted(sweep.members, key=lambda m: m.position) if m.seed == 0]
        assert specs == [member.experiment.spec for member in firsts]
    assert "the runs differ only in training.seed: 0, 1" in html.unescape(page)


def test_without_a_ui_address_the_links_are_relative_and_the_page_says_so(
    stored: tuple[Settings, str, dict[str, str]], database: Database, tmp_path: Path
) -> None:
    settings, sweep_id, run_ids = stored
    bare = settings.model_copy(update={"mlflow_ui_url": None})
    page = report_page(bare, database, sweep_id, tmp_path)
    assert "http://mlflow.example" not in page
    assert page.count('<a href="#/experiments/') == len(run_ids)
    assert "REGBENCH_MLFLOW_UI_URL" in page
