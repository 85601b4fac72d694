"""The MLflow tracker: one MLflow run per experiment, logged in batches.

Each MLflow call costs a round trip to a tracking server, so params and per-epoch
metrics go in ``log_batch`` calls (MLflow caps a batch at 100 params / 100 tags / 1000
entries). A ``buffered`` tracker (the workers') goes further: params, tags and metrics
wait in memory and go out together in as few ``log_batch`` calls as the caps allow, at
most every ``flush_every_s`` while a job runs; artifacts are copied into a staging
directory as they come and uploaded with one ``log_artifacts`` call at the same
moments. ``flush`` (and ``finish``, which flushes first) sends everything, so a job is
never recorded as done before its numbers and files are in MLflow. (MLflow's own
asynchronous logging was measured here: terminating a run joins its logging threads,
0.8 s per run, more than the whole batch it saves on a small job.)
"""

from __future__ import annotations

import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

# MLflow announces schema migrations of a new local store at INFO; that is not our output.
for _logger in ("mlflow", "alembic"):
    logging.getLogger(_logger).setLevel(logging.WARNING)

MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ENTRIES_PER_BATCH = 1000
DEFAULT_FLUSH_EVERY_S = 5.0
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


class ArtifactLocationError(RuntimeError):
    """A run whose artifacts would be written outside the artifact root."""


def check_run_location(client: MlflowClient, run: Run, root: Path | None) -> None:
    """Refuse (and mark FAILED) a new run whose artifact directory is a local path outside
    ``root``; nothing to check without a root (a tracking server keeps the artifacts)."""
    if root is None:
        return
    location = local_path(run.info.artifact_uri)
    if location is None or location.resolve().is_relative_to(root.resolve()):
        return
    client.set_terminated(run.info.run_id, "FAILED")
    raise ArtifactLocationError(
        f"MLflow run {run.info.run_id} would keep its artifacts outside {root}; its "
        "experiment's artifact location was made from a name by an earlier version: "
        "submit the work again under a new name"
    )


def local_path(uri: str) -> Path | None:
    """The local directory of a ``file:`` URI or a plain path; None for any other scheme."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:2] == ":"):  # C:\...
        return Path(uri)
    return None


class MlflowTracker:
    """Implements ``regcore.tracking.Tracker`` on one MLflow run."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        *,
        artifact_location: str | None = None,
        confine_to: Path | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        client: MlflowClient | None = None,
        experiment_id: str | None = None,
        buffered: bool = False,
        flush_every_s: float = DEFAULT_FLUSH_EVERY_S,
    ) -> None:
        """``experiment_id``, when the caller knows it, saves the lookup by name;
        ``artifact_location`` is where the experiment keeps artifacts if it is created here;
        ``confine_to``: a new run whose artifacts would lie outside this directory is
        refused (``ArtifactLocationError``), as an experiment made by an earlier version
        from a hostile name could place them."""
        self.client = client or MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = experiment_id or ensure_experiment(
            self.client, experiment_name, artifact_location
        )
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id, run_name=run_name, tags=dict(tags or {})
            )
            run_id = run.info.run_id
            check_run_location(self.client, run, confine_to)
        self.run_id: str = run_id
        self._buffer_setup(buffered, flush_every_s)

    @classmethod
    def of_run(
        cls,
        client: MlflowClient,
        run_id: str,
        *,
        buffered: bool = False,
        flush_every_s: float = DEFAULT_FLUSH_EVERY_S,
    ) -> MlflowTracker:
        """A tracker on an existing run, without a single lookup."""
        tracker = cls.__new__(cls)
        tracker.client, tracker.run_id, tracker.experiment_id = client, run_id, None
        tracker._buffer_setup(buffered, flush_every_s)
        return tracker

    def _buffer_setup(self, buffered: bool, flush_every_s: float) -> None:
        self.buffered, self.flush_every_s = buffered, flush_every_s
        self._params: list[Param] = []
        self._tags: list[RunTag] = []
        self._metrics: list[Metric] = []
        self._staging: Path | None = None  # artifacts waiting for the next flush
        self._last_flush = time.monotonic()

    def log_params(self, params: Mapping[str, str]) -> None:
        self._params += [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        self._sent_or_kept()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._tags += [RunTag(key, str(value)) for key, value in tags.items()]
        self._sent_or_kept()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        self._metrics += [
            Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()
        ]
        self._sent_or_kept()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.buffered:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            return
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="regbench-artifacts-"))
        target = self._staging / (artifact_path or "") / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # as it is now, even if rewritten before the flush
        self._sent_or_kept()

    def _sent_or_kept(self) -> None:
        if not self.buffered or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        """Send every buffered param, tag, metric and artifact now."""
        self._last_flush = time.monotonic()
        params, tags, metrics = self._params, self._tags, self._metrics
        self._params, self._tags, self._metrics = [], [], []
        for batch in _batches(params, tags, metrics):
            self.client.log_batch(self.run_id, **batch)
        staging, self._staging = self._staging, None
        if staging is not None:
            try:
                self.client.log_artifacts(self.run_id, str(staging))
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def download(self, artifact_path: str, destination: Path) -> str:
        """Fetch one artifact of the run into ``destination``; returns the local path."""
        destination.mkdir(parents=True, exist_ok=True)
        return self.client.download_artifacts(self.run_id, artifact_path, str(destination))

    def finish(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED; everything buffered is sent first."""
        self.flush()
        self.client.set_terminated(self.run_id, status)


def _batches(
    params: Sequence[Param], tags: Sequence[RunTag], metrics: Sequence[Metric]
) -> list[dict[str, list[Param] | list[RunTag] | list[Metric]]]:
    """As few ``log_batch`` payloads as MLflow's caps allow (a param or tag is sent once
    per key: the last value wins, as separate calls would have it)."""
    params = list({param.key: param for param in params}.values())
    tags = list({tag.key: tag for tag in tags}.values())
    batches = []
    for number in itertools.count():
        chunk_params = params[number * MAX_PARAMS_PER_BATCH : (number + 1) * MAX_PARAMS_PER_BATCH]
        chunk_tags = tags[number * MAX_TAGS_PER_BATCH : (number + 1) * MAX_TAGS_PER_BATCH]
        room = min(
            MAX_METRICS_PER_BATCH, MAX_ENTRIES_PER_BATCH - len(chunk_params) - len(chunk_tags)
        )
        chunk_metrics, metrics = list(metrics[:room]), metrics[room:]
        if not (chunk_params or chunk_tags or chunk_metrics):
            break
        batches.append({"params": chunk_params, "tags": chunk_tags, "metrics": chunk_metrics})
    return batches
