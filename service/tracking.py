"""The MLflow tracker: one MLflow run per experiment, logged in batches.

Each MLflow call costs a round trip to a tracking server, so params and per-epoch
metrics go in ``log_batch`` calls (MLflow caps a batch at 100 params / 1000 metrics).
With ``asynchronous=True`` those batches are handed to MLflow's async logging queue
(the training loop does not wait for them); ``flush`` waits until every one has landed,
and ``finish`` flushes before it marks the run, so nothing is recorded as done before
its metrics are in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations

# MLflow announces schema migrations of a new local store at INFO; that is not our output.
for _logger in ("mlflow", "alembic"):
    logging.getLogger(_logger).setLevel(logging.WARNING)

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_PARAM_LENGTH = 6000


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of MLflow experiment ``name``, created if missing (safe against a concurrent
    creation by another process)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class MlflowTracker:
    """Implements ``regcore.tracking.Tracker`` on one MLflow run."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        *,
        artifact_root: Path | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        client: MlflowClient | None = None,
        experiment_id: str | None = None,
        asynchronous: bool = False,
    ) -> None:
        """``experiment_id``, when the caller knows it, saves the lookup by name."""
        self.client = client or MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = experiment_id or self.ensure_experiment(experiment_name, artifact_root)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id, run_name=run_name, tags=dict(tags or {})
            )
            run_id = run.info.run_id
        self.run_id: str = run_id
        self.asynchronous = asynchronous
        self._pending: list[RunOperations] = []

    @classmethod
    def of_run(
        cls, client: MlflowClient, run_id: str, *, asynchronous: bool = False
    ) -> MlflowTracker:
        """A tracker on an existing run, without a single lookup."""
        tracker = cls.__new__(cls)
        tracker.client, tracker.run_id, tracker.experiment_id = client, run_id, None
        tracker.asynchronous, tracker._pending = asynchronous, []
        return tracker

    def ensure_experiment(self, name: str, artifact_root: Path | None) -> str:
        location = (artifact_root / name).as_uri() if artifact_root is not None else None
        return ensure_experiment(self.client, name, location)

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self._log_batch(params=items[start : start + MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._log_batch(tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        items = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
        for start in range(0, len(items), MAX_METRICS_PER_BATCH):
            self._log_batch(metrics=items[start : start + MAX_METRICS_PER_BATCH])

    def _log_batch(
        self,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        if not self.asynchronous:
            self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags)
            return
        operation = self.client.log_batch(
            self.run_id, metrics=metrics, params=params, tags=tags, synchronous=False
        )
        if operation is not None:
            self._pending.append(operation)

    def flush(self) -> None:
        """Wait until every asynchronous batch has landed (raises the first failure)."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def download(self, artifact_path: str, destination: Path) -> str:
        """Fetch one artifact of the run into ``destination``; returns the local path."""
        destination.mkdir(parents=True, exist_ok=True)
        return self.client.download_artifacts(self.run_id, artifact_path, str(destination))

    def finish(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED; every batch lands first."""
        self.flush()
        self.client.set_terminated(self.run_id, status)
