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

An unreachable tracking server never fails a buffered tracker's job: what a flush could
not deliver waits in a spool on local disk (``Spool``: batches as JSON lines, artifacts
in a staging directory, one directory per run), training goes on, and every later flush
tries again. ``finish`` waits for the server, retrying with back-off for up to
``retry_s``, then closes the run. Each delivery attempt makes one request per call (no
MLflow client retries, which would block training for minutes): the spool is the retry.
Resending a batch the server took but whose answer was lost adds nothing: MLflow keeps a
metric once per (key, timestamp, step, value), and the spool keeps the timestamps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
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
DEFAULT_RETRY_S = 6 * 3600.0  # how long finish() waits for an unreachable server
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 30.0  # finish()'s back-off between delivery attempts
# What a run is, so the MLflow UI can filter training runs apart from sweep reports:
# tags.`regbench.kind` = 'train'.
RUN_KIND_TAG = "regbench.kind"
TRAIN_RUN_KIND = "train"
REPORT_RUN_KIND = "sweep-report"
OUTAGE_FLUSH_EVERY_S = 10.0  # while training, an unreachable server is tried this often

log = logging.getLogger(__name__)


class Spool:
    """A run's undelivered params, tags, metrics (JSON lines, in order) and artifacts (a
    staging directory: the latest copy of each file), on local disk."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.batches = directory / "batches.jsonl"
        self.artifacts = directory / "artifacts"

    def append(self, params: list[Param], tags: list[RunTag], metrics: list[Metric]) -> None:
        if not (params or tags or metrics):
            return
        line = {
            "params": [[p.key, p.value] for p in params],
            "tags": [[t.key, t.value] for t in tags],
            "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.batches.open("a") as spool:
            spool.write(json.dumps(line) + "\n")

    def pending(self) -> list[dict[str, Any]]:
        try:
            text = self.batches.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def keep(self, batches: list[dict[str, Any]]) -> None:
        """Only these batches are still undelivered."""
        if not batches:
            self.batches.unlink(missing_ok=True)
            return
        tmp = self.batches.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(batch) + "\n" for batch in batches))
        os.replace(tmp, self.batches)

    def stage(self, path: Path, artifact_path: str | None) -> None:
        target = self.artifacts / (artifact_path or "") / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)  # as it is now, even if rewritten before the flush

    def has_artifacts(self) -> bool:
        return self.artifacts.is_dir() and any(self.artifacts.iterdir())

    def steps(self, key: str) -> set[int]:
        """Steps of metric ``key`` waiting here."""
        return {m[3] for batch in self.pending() for m in batch["metrics"] if m[0] == key}

    def empty(self) -> bool:
        return not self.batches.exists() and not self.has_artifacts()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def transient(exc: BaseException) -> bool:
    """The server could not be reached or failed (worth trying again), as opposed to a
    request it refused (4xx: the same request would be refused again)."""
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(exc, OSError | ConnectionError | TimeoutError) or (
        type(exc).__module__.startswith(("requests", "urllib3"))
    )


@contextlib.contextmanager
def one_try_per_request() -> Iterator[None]:
    """MLflow's HTTP client without its own retries (minutes of back-off per call by
    default): the spool retries instead, and training never waits on it."""
    name = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    saved = os.environ.get(name)
    os.environ[name] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


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
        spool_root: Path | None = None,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        """``experiment_id``, when the caller knows it, saves the lookup by name;
        ``artifact_location`` is where the experiment keeps artifacts if it is created here;
        ``confine_to``: a new run whose artifacts would lie outside this directory is
        refused (``ArtifactLocationError``), as an experiment made by an earlier version
        from a hostile name could place them.
        A buffered tracker spools under ``spool_root`` (default: the temp dir), one
        directory per run."""
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
        self._buffer_setup(buffered, flush_every_s, spool_root, retry_s)

    @classmethod
    def of_run(
        cls,
        client: MlflowClient,
        run_id: str,
        *,
        buffered: bool = False,
        flush_every_s: float = DEFAULT_FLUSH_EVERY_S,
        spool_root: Path | None = None,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> MlflowTracker:
        """A tracker on an existing run, without a single lookup. A spool left by an
        earlier tracker of the run (its process was killed in an outage) is delivered
        with this one's first flush, before anything newer."""
        tracker = cls.__new__(cls)
        tracker.client, tracker.run_id, tracker.experiment_id = client, run_id, None
        tracker._buffer_setup(buffered, flush_every_s, spool_root, retry_s)
        return tracker

    def _buffer_setup(
        self, buffered: bool, flush_every_s: float, spool_root: Path | None, retry_s: float
    ) -> None:
        self.buffered, self.flush_every_s, self.retry_s = buffered, flush_every_s, retry_s
        self._params: list[Param] = []
        self._tags: list[RunTag] = []
        self._metrics: list[Metric] = []
        self._last_flush = time.monotonic()
        self._unreachable_since: float | None = None
        self.spool: Spool | None = None
        if buffered:
            root = spool_root or Path(tempfile.gettempdir()) / "regbench-spool"
            self.spool = Spool(root / self.run_id)

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
        if self.spool is None:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            return
        self.spool.stage(path, artifact_path)
        self._sent_or_kept()

    def _sent_or_kept(self) -> None:
        every = self.flush_every_s
        if self._unreachable_since is not None:  # in an outage: fewer tries, same spool
            every = max(every, OUTAGE_FLUSH_EVERY_S)
        if not self.buffered or time.monotonic() - self._last_flush >= every:
            self.flush()

    def pending_steps(self, key: str) -> set[int]:
        """Steps of metric ``key`` logged but not yet delivered (buffered or spooled)."""
        waiting = self.spool.steps(key) if self.spool is not None else set()
        return waiting | {metric.step for metric in self._metrics if metric.key == key}

    def flush(self) -> None:
        """Send every buffered param, tag, metric and artifact now. A buffered tracker
        keeps what the server could not take in its spool, for the next flush."""
        self._last_flush = time.monotonic()
        params, tags, metrics = self._params, self._tags, self._metrics
        self._params, self._tags, self._metrics = [], [], []
        if self.spool is None:
            for batch in _batches(params, tags, metrics):
                self.client.log_batch(self.run_id, **batch)
            return
        self.spool.append(params, tags, metrics)
        try:
            self._deliver()
        except Exception as exc:
            if not transient(exc):
                raise
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                log.warning(
                    "MLflow unreachable: run %s's metrics and artifacts wait in %s: %s",
                    self.run_id, self.spool.directory, exc,
                )  # fmt: skip

    def _deliver(self) -> None:
        """The spool, in order, one request per call; each delivered part leaves it."""
        assert self.spool is not None
        with one_try_per_request():
            pending = self.spool.pending()
            while pending:
                batch = pending[0]
                for payload in _batches(
                    [Param(*param) for param in batch["params"]],
                    [RunTag(*tag) for tag in batch["tags"]],
                    [Metric(*metric) for metric in batch["metrics"]],
                ):
                    self.client.log_batch(self.run_id, **payload)
                pending = pending[1:]
                self.spool.keep(pending)
            if self.spool.has_artifacts():
                self.client.log_artifacts(self.run_id, str(self.spool.artifacts))
                shutil.rmtree(self.spool.artifacts, ignore_errors=True)
        if self._unreachable_since is not None:
            log.warning(
                "MLflow reachable again: run %s's spool delivered after %.0f s",
                self.run_id, time.monotonic() - self._unreachable_since,
            )  # fmt: skip
            self._unreachable_since = None

    def download(self, artifact_path: str, destination: Path) -> str:
        """Fetch one artifact of the run into ``destination``; returns the local path."""
        destination.mkdir(parents=True, exist_ok=True)
        return self.client.download_artifacts(self.run_id, artifact_path, str(destination))

    def deliver_all(self) -> None:
        """``flush``, then, for a buffered tracker, wait until the spool is delivered (an
        unreachable server is retried with back-off for up to ``retry_s``)."""
        self._delivered_then(None)

    def finish(self, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED; everything buffered is delivered first
        (``deliver_all``)."""
        self._delivered_then(lambda: self.client.set_terminated(self.run_id, status))

    def _delivered_then(self, then: Callable[[], object] | None) -> None:
        if self.spool is None:
            self.flush()
            if then is not None:
                then()
            return
        deadline = time.monotonic() + self.retry_s
        delay = RETRY_FIRST_S
        while True:
            self.flush()
            try:
                if self.spool.empty():
                    if then is not None:
                        with one_try_per_request():
                            then()
                    break
            except Exception as exc:
                if not transient(exc):
                    raise
            if time.monotonic() + delay > deadline:
                raise TimeoutError(
                    f"MLflow unreachable for {self.retry_s:.0f} s: its metrics and "
                    f"artifacts for run {self.run_id} wait in {self.spool.directory}"
                )
            time.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        self.spool.remove()


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


def train_run_name(label: str, seed: int) -> str:
    """A training run's name: its configuration (or spec name) and its seed, so the seeds
    of one configuration are told apart in the MLflow UI."""
    return f"{label} seed={seed}"
