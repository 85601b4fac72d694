"""Seeds trained together through the service: a slot stacks the queued experiments of a
sweep that differ only in seeds and numeric params; to the user they stay experiments of
their own (runs, metrics, checkpoints), and they resume after a worker is killed."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from regcore.spec import ExperimentSpec
from service import jobstore
from service.tables import Sweep, new_id
from tests.worker.conftest import FAST_SPEC, SLOW_SPEC, Backend, alive, spec_with

pytestmark = pytest.mark.slow

COMPARED = ("test_accuracy", "test_loss", "train_loss")


def submit_sweep(
    backend: Backend, specs: list[dict[str, Any]], *, force: bool = False
) -> list[str]:
    """The specs as one sweep's experiments (stacking is within a sweep); train jobs sent.
    Workers started afterwards stack up to 8 (on the CPU they do not unless told)."""
    backend.processes.env.setdefault("REGBENCH_STACK_SIZE", "8")
    with backend.db.session() as session:
        sweep = Sweep(name="stack", sweep_hash=new_id(), base={}, grid={}, size=len(specs))
        session.add(sweep)
        session.flush()
        experiments = [
            jobstore.submit_experiment(
                session, ExperimentSpec.model_validate(spec), sweep_id=sweep.id, force=force
            ).experiment
            for spec in specs
        ]
        session.commit()
        trains = [(jobstore.train_job(e).id, jobstore.train_job(e).queue) for e in experiments]
        ids = [experiment.id for experiment in experiments]
    backend.send(trains)
    return ids


def seeds(base: dict[str, Any], *values: int, **changes: Any) -> list[dict[str, Any]]:
    return [spec_with(base, training={"seed": seed}, **changes) for seed in values]


def test_seeds_train_stacked_each_an_experiment_of_its_own(embedded: Backend) -> None:
    specs = seeds(FAST_SPEC, 0, 1, 2, analyses=[{"kind": "calibration"}])
    for spec, weight in zip(specs, (1e-4, 1e-3, 1e-2), strict=True):
        spec["regularizers"] = [{"name": "l2", "weight": weight}]  # numeric params may differ
    stacked = submit_sweep(embedded, specs)
    embedded.start_worker()
    for experiment_id in stacked:
        jobs = embedded.wait_finished(experiment_id, timeout=180)
        assert {job.state for job in jobs.values()} == {"succeeded"}, embedded.processes.logs()
    trains = [embedded.train(experiment_id) for experiment_id in stacked]
    assert all("(stacked with 2 more)" in (train.message or "") for train in trains)
    lead_logs = list(embedded.settings.runs_dir.glob("*/logs/train-*.log"))
    assert any("training 3 jobs stacked" in path.read_text() for path in lead_logs)

    with embedded.db.session() as session:  # each member's own test labels
        predicted = jobstore.stored_predictions(session, stacked)
    assert set(predicted) == set(stacked)
    assert len({p.labels_checksum for p in predicted.values()}) == 1  # one test set

    client = embedded.mlflow()
    run_ids = [train.mlflow_run_id for train in trains]
    assert len(set(run_ids)) == 3 and None not in run_ids  # a run of its own each
    for experiment_id, train, spec in zip(stacked, trains, specs, strict=True):
        experiment = embedded.experiment(experiment_id)
        assert experiment["mlflow_run_id"] == train.mlflow_run_id
        assert experiment["metrics"]["seed"] == spec["training"]["seed"]
        assert "calibration/ece" in experiment["metrics"]  # its analysis ran, after it
        run = client.get_run(train.mlflow_run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["regbench.experiment_id"] == experiment_id
        assert run.data.params["training.seed"] == str(spec["training"]["seed"])
        history = client.get_metric_history(train.mlflow_run_id, "train/loss")
        assert [m.step for m in history] == [1, 2, 3]
        files = {a.path for a in client.list_artifacts(train.mlflow_run_id, "checkpoints")}
        assert "checkpoints/model.pt" in files

    # The same specs trained one by one: the same numbers, up to float rounding.
    embedded.processes.stop_all()
    embedded.processes.started.clear()
    embedded.processes.env["REGBENCH_STACK_SIZE"] = "1"
    alone = submit_sweep(embedded, specs, force=True)
    embedded.start_worker("alone")
    for experiment_id in alone:
        assert embedded.wait_finished(experiment_id, timeout=180)["train"].state == "succeeded"
        assert "stacked" not in (embedded.train(experiment_id).message or "")
    for stacked_id, alone_id in zip(stacked, alone, strict=True):
        together = embedded.experiment(stacked_id)["metrics"]
        apart = embedded.experiment(alone_id)["metrics"]
        for key in ("test_loss", "train_loss"):
            assert math.isclose(together[key], apart[key], rel_tol=1e-4), key


def test_a_stack_cancelled_in_one_member_requeues_the_others(embedded: Backend) -> None:
    stacked = submit_sweep(embedded, seeds(spec_with(SLOW_SPEC, training={"epochs": 3}), 5, 6, 7))
    embedded.start_worker()
    embedded.wait(lambda: all(embedded.train(e).progress >= 1 / 3 for e in stacked), 120, "epoch 1")
    embedded.cancel(stacked[1])
    finished = [embedded.wait_finished(e, timeout=240)["train"] for e in stacked]
    assert [train.state for train in finished] == ["succeeded", "cancelled", "succeeded"]
    for train in (finished[0], finished[2]):
        assert train.attempt == 1  # put back for another's sake: not an attempt of its own
        assert re.search(r"resumed from epoch \d", train.message or ""), train.message


def test_stacked_members_resume_after_a_worker_is_killed(cluster: Backend) -> None:
    base = spec_with(SLOW_SPEC, training={"batch_size": 10, "epochs": 6})
    epochs = base["training"]["epochs"]
    specs = seeds(base, 11, 12, 13)
    stacked = submit_sweep(cluster, specs)
    cluster.start_worker("first")
    cluster.wait(
        lambda: all(cluster.train(e).progress >= 2 / epochs for e in stacked), 400, "epoch 2"
    )
    child = cluster.job_child("first")
    assert child is not None
    cluster.processes.kill("first")
    cluster.wait(lambda: not alive(child), 5, "the stack's process to die with its worker")
    assert {cluster.train(e).state for e in stacked} == {"running"}, "finished before the kill"

    cluster.start_worker("second")
    cluster.start_reconciler()
    trains = [cluster.wait_finished(e, timeout=400)["train"] for e in stacked]
    assert [t.state for t in trains] == ["succeeded"] * 3, cluster.processes.logs()
    client = cluster.mlflow()
    for train in trains:
        assert train.attempt == 2
        resumed = re.search(r"resumed from epoch (\d+)", train.message or "")
        assert resumed is not None and 2 <= int(resumed.group(1)) <= epochs, train.message
        run = client.get_run(train.mlflow_run_id)
        assert run.data.tags["regbench.resumed_from_epoch"] == resumed.group(1)
        logged = [m.step for m in client.get_metric_history(train.mlflow_run_id, "train/loss")]
        assert logged == list(range(1, epochs + 1))  # every epoch logged exactly once
    mlflow_experiment = client.get_experiment_by_name(cluster.settings.mlflow_experiment)
    assert len(client.search_runs([mlflow_experiment.experiment_id])) == 3  # one run each

    # The same stack, never interrupted, ends with the same numbers.
    reference = submit_sweep(cluster, specs, force=True)
    for resumed_id, reference_id in zip(stacked, reference, strict=True):
        assert cluster.wait_finished(reference_id, timeout=400)["train"].state == "succeeded"
        got = cluster.experiment(resumed_id)["metrics"]
        expected = cluster.experiment(reference_id)["metrics"]
        for key in COMPARED:
            assert math.isclose(got[key], expected[key], rel_tol=1e-6), key
