"""The workers' MLflow tracker: buffered until a flush, then everything in few calls."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from service.tracking import MAX_PARAMS_PER_BATCH, MlflowTracker, _batches


def test_a_buffered_tracker_sends_nothing_until_it_flushes_then_everything(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    tracker = MlflowTracker(
        uri,
        "buffered",
        artifact_location=(tmp_path / "artifacts").as_uri(),
        buffered=True,
        flush_every_s=1e9,
    )
    params = {f"p{i}": str(i) for i in range(MAX_PARAMS_PER_BATCH + 30)}  # two batches' worth
    tracker.log_params(params)
    tracker.set_tags({"stage": "one"})
    for epoch in (1, 2, 3):
        tracker.log_metrics({"loss": 1.0 / epoch}, step=epoch)
    written = tmp_path / "metrics.json"
    written.write_text("first")
    tracker.log_artifact(written, "results")
    written.write_text("rewritten after it was logged")  # the logged copy stays as it was

    run = client.get_run(tracker.run_id)
    assert run.data.params == {} and "loss" not in run.data.metrics
    assert client.list_artifacts(tracker.run_id) == []

    tracker.set_tags({"stage": "two"})  # the last value of a key wins
    tracker.finish()
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == params and run.data.tags["stage"] == "two"
    history = client.get_metric_history(tracker.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    local = client.download_artifacts(tracker.run_id, "results/metrics.json", str(tmp_path / "d"))
    assert Path(local).read_text() == "first"


def test_an_unbuffered_tracker_sends_at_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "direct", artifact_location=(tmp_path / "artifacts").as_uri())
    tracker.log_metrics({"loss": 2.0}, step=1)
    assert MlflowClient(uri).get_run(tracker.run_id).data.metrics["loss"] == 2.0


def test_batches_respect_mlflow_caps() -> None:
    from mlflow.entities import Metric, Param, RunTag

    params = [Param(f"p{i}", "v") for i in range(250)]
    tags = [RunTag(f"t{i}", "v") for i in range(120)]
    metrics = [Metric("m", float(i), 0, i) for i in range(2500)]
    batches = _batches(params, tags, metrics)
    for batch in batches:
        assert len(batch["params"]) <= 100 and len(batch["tags"]) <= 100
        assert len(batch["params"]) + len(batch["tags"]) + len(batch["metrics"]) <= 1000
    assert sum(len(b["params"]) for b in batches) == 250
    assert sum(len(b["tags"]) for b in batches) == 120
    assert [m.step for b in batches for m in b["metrics"]] == list(range(2500))
    assert len(batches) == 3  # 2,500 metrics need three; the params and tags ride along


def test_what_an_unreachable_server_did_not_take_waits_on_disk_for_the_next_tracker(
    tmp_path: Path,
) -> None:
    """A buffered tracker whose server is unreachable keeps training's metrics and files in
    its spool (no error), gives up closing the run after ``retry_s`` saying where they
    wait; a later tracker of the same run (the job's next attempt) delivers them first,
    once each."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    location = (tmp_path / "artifacts").as_uri()
    run_id = MlflowTracker(uri, "spooled", artifact_location=location).run_id
    spool_root = tmp_path / "spool"
    with socket.socket() as probe:  # a port nobody listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = MlflowClient(f"http://127.0.0.1:{closed}")
    cut_off = MlflowTracker.of_run(
        down, run_id, buffered=True, flush_every_s=0, spool_root=spool_root, retry_s=0.5
    )
    cut_off.log_metrics({"loss": 1.0}, step=1)  # flushed at once: refused, spooled
    written = tmp_path / "model.pt"
    written.write_text("weights")
    cut_off.log_artifact(written, "checkpoints")
    cut_off.log_metrics({"loss": 0.5}, step=2)
    assert cut_off.pending_steps("loss") == {1, 2}
    with pytest.raises(TimeoutError, match=str(spool_root / run_id)):
        cut_off.finish()
    assert client.get_metric_history(run_id, "loss") == []

    resumed = MlflowTracker.of_run(client, run_id, buffered=True, spool_root=spool_root)
    assert resumed.pending_steps("loss") == {1, 2}  # a resumed job does not log them again
    resumed.log_metrics({"loss": 0.25}, step=3)
    resumed.finish()
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoints")] == [
        "checkpoints/model.pt"
    ]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not (spool_root / run_id).exists()
