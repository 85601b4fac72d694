"""What the API reads from and writes to MLflow: the experiment at submit, metric
histories, artifact listings and downloads, and the health ping.

The MLflow client is made on first use, so the API starts (and ``/healthz`` answers)
while the tracking store is down. MLflow errors become ``TrackingUnavailableError``
(503), a run or artifact that does not exist ``ArtifactNotFoundError`` (404), and an
artifact path that could leave the run ``ArtifactPathError`` (400).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
from mlflow.entities import FileInfo
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from service.redact import mask_text
from service.settings import Settings
from service.tracking import ensure_experiment

NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


class TrackingUnavailableError(RuntimeError):
    """MLflow did not answer (or failed)."""


class ArtifactPathError(ValueError):
    """An artifact path that could point outside its run's artifacts."""


class ArtifactNotFoundError(LookupError):
    """No such run or no such artifact in the run."""


@dataclass(frozen=True)
class DownloadedArtifact:
    directory: Path  # temporary: remove_download(directory) once the file is sent
    file: Path


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float | None  # NaN and infinities (a diverged run) have no JSON number
    timestamp: int


def check_artifact_path(path: str) -> str:
    """The path, relative and confined to the run's artifacts; raises ArtifactPathError.

    Refused: empty, a leading ``/``, backslashes, NUL, and empty, ``.`` or ``..``
    segments. A trailing ``/`` is dropped.
    """
    if "\\" in path or "\x00" in path:
        raise ArtifactPathError(f"artifact path {path!r} may not contain backslashes or NUL")
    if path.startswith("/"):
        raise ArtifactPathError(f"artifact path {path!r} must be relative to the run")
    parts = path.rstrip("/").split("/")
    if not path.strip("/") or any(part in ("", ".", "..") for part in parts):
        raise ArtifactPathError(
            f"artifact path {path!r} must be a plain relative path (no '..', '.' or empty parts)"
        )
    return "/".join(parts)


def is_inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


class Tracking:
    """One lazily made MlflowClient for the app, and the experiment ids it created."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: MlflowClient | None = None
        self._experiments: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> MlflowClient:
        """The client; a tracking server is first asked for /health with the short timeout,
        so an outage answers 503 at once instead of after MLflow's own retries (minutes)."""
        if self.settings.tracking_uri.startswith(("http://", "https://")):
            self._check_server(self.settings.broker_timeout_s)
        with self._lock:
            if self._client is None:
                if not self.settings.tracking_is_server:  # a local store: under the data dir
                    self.settings.data_dir.mkdir(parents=True, exist_ok=True)
                with _tracking_errors("open the tracking store"):
                    self._client = MlflowClient(tracking_uri=self.settings.tracking_uri)
            return self._client

    def _check_server(self, timeout_s: float) -> None:
        url = self.settings.tracking_uri.rstrip("/") + "/health"
        try:
            httpx.get(url, timeout=timeout_s).raise_for_status()
        except httpx.HTTPError as exc:
            raise TrackingUnavailableError(
                mask_text(f"the MLflow server at {url} did not answer: {exc}")
            ) from exc

    # -- experiments

    def experiment_id(self, name: str, location_key: str) -> str:
        """The MLflow experiment ``name``, created on first use (once per name and app)
        with its artifacts under ``location_key`` (an id, never the name)."""
        if name in self._experiments:
            return self._experiments[name]
        client = self.client
        with _tracking_errors(f"create the MLflow experiment {name!r}"):
            location = self.settings.mlflow_artifact_location(location_key)
            experiment_id = ensure_experiment(client, name, location)
        self._experiments[name] = experiment_id
        return experiment_id

    # -- runs

    def metric_histories(self, run_id: str) -> dict[str, list[MetricPoint]]:
        client = self.client
        with _tracking_errors(f"read the metrics of run {run_id}"):
            keys = sorted(client.get_run(run_id).data.metrics)
            histories = {key: client.get_metric_history(run_id, key) for key in keys}
        return {
            key: [
                MetricPoint(m.step, m.value if math.isfinite(m.value) else None, m.timestamp)
                for m in sorted(history, key=lambda m: (m.step, m.timestamp))
            ]
            for key, history in histories.items()
        }

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        """Every file and directory under ``path`` (default: the run's root), depth first."""
        client = self.client
        found: list[FileInfo] = []
        with _tracking_errors(f"list the artifacts of run {run_id}"):
            pending = [path]
            while pending:
                for info in client.list_artifacts(run_id, pending.pop()):
                    found.append(info)
                    if info.is_dir:
                        pending.append(info.path)
        return sorted(found, key=lambda info: info.path)

    def find_artifact(self, run_id: str, path: str) -> FileInfo:
        """The listing entry of one artifact; ArtifactNotFoundError when the run lists none."""
        parent = str(PurePosixPath(path).parent)
        client = self.client
        with _tracking_errors(f"list the artifacts of run {run_id}"):
            listed = client.list_artifacts(run_id, None if parent == "." else parent)
        for info in listed:
            if info.path == path:
                return info
        raise ArtifactNotFoundError(f"run {run_id} has no artifact {path!r}")

    def download(self, run_id: str, path: str) -> DownloadedArtifact:
        """Fetch one artifact file into a fresh temporary directory; the caller removes it
        (after streaming it) with ``remove_download``."""
        directory = Path(tempfile.mkdtemp(prefix="regbench-artifact-"))
        try:
            with _tracking_errors(f"download {path!r} of run {run_id}"):
                local = Path(self.client.download_artifacts(run_id, path, str(directory)))
            if not is_inside(local, directory) or not local.is_file():
                raise ArtifactPathError(f"artifact path {path!r} is not a file inside the run")
        except BaseException:
            remove_download(directory)
            raise
        return DownloadedArtifact(directory, local)

    def fetch_file(self, run_id: str, path: str) -> DownloadedArtifact:
        """One artifact file, checked: ArtifactPathError (400) for a path that could leave
        the run or names a directory, ArtifactNotFoundError (404) for none."""
        relative = check_artifact_path(path)
        if self.find_artifact(run_id, relative).is_dir:
            raise ArtifactPathError(
                f"{relative!r} is a directory; list the artifacts to see its files"
            )
        return self.download(run_id, relative)

    # -- health

    def ping(self, timeout_s: float) -> None:
        """A tracking server's /health within the timeout; a local store's one query."""
        if self.settings.tracking_uri.startswith(("http://", "https://")):
            self._check_server(timeout_s)
            return
        client = self.client
        with _tracking_errors("query the tracking store"):
            client.search_experiments(max_results=1)


@contextmanager
def _tracking_errors(doing: str) -> Iterator[None]:
    try:
        yield
    except MlflowException as exc:
        if exc.error_code in NOT_FOUND_CODES:
            raise ArtifactNotFoundError(f"MLflow: {exc.message}") from exc
        raise TrackingUnavailableError(mask_text(f"could not {doing}: {exc.message}")) from exc
    except (OSError, httpx.HTTPError) as exc:
        raise TrackingUnavailableError(mask_text(f"could not {doing}: {exc}")) from exc


def remove_download(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
