"""The only settings object: ``REGBENCH_*`` environment variables and an optional ``.env``.

The embedded default needs no external service: everything lives under one data
directory (``REGBENCH_DATA_DIR``, default ``./regbench-data``): the job store and the
Celery broker on SQLite files, MLflow on a local SQLite store with its artifacts
beside it. A cluster points the same code at PostgreSQL (``REGBENCH_DATABASE_URL``),
Redis (``REGBENCH_BROKER_URL``) and an MLflow tracking server
(``REGBENCH_MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from regcore.spec import MAX_ANALYSES
from service.redact import uri_secrets

TRACKING_SERVER_SCHEMES = ("http://", "https://", "databricks")
DEFAULT_ARTIFACT_KEY = "default"
_PATH_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
GPU_STACK_SIZE = 8  # experiments stacked on a GPU unless REGBENCH_STACK_SIZE says otherwise


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGBENCH_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("regbench-data"), description="root of everything local")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: SQLite store under the data dir"
    )
    mlflow_experiment: str = Field("regbench", description="experiment for runs outside a sweep")
    mlflow_ui_url: str | None = Field(
        None, description="public address of the MLflow UI, for links (default: none)"
    )
    instance_id: str | None = Field(
        None,
        description="set by `regbench serve` for its API; /healthz echoes it, so serve "
        "knows the answer on its port is its own API's and not another server's",
    )
    database_url: str | None = Field(
        None, description="job store (SQLAlchemy URL); default: SQLite under the data dir"
    )
    broker_url: str | None = Field(
        None, description="Celery broker; default: kombu's SQLAlchemy transport on SQLite"
    )
    broker_timeout_s: float = Field(
        3.0, gt=0, description="connect timeout when the API enqueues (then 503, job stays queued)"
    )
    broker_poll_interval_s: float = Field(
        0.1, gt=0, description="polling interval of the server-less SQLite broker"
    )
    visibility_timeout_s: int = Field(
        25 * 3600, ge=1, description="redelivery after this long unacked: above the longest job"
    )
    job_time_limit_s: int = Field(24 * 3600, ge=1, description="hard limit per job")
    heartbeat_interval_s: float = Field(5.0, gt=0, description="running jobs report this often")
    heartbeat_stale_s: float = Field(
        60.0, gt=0, description="a running job silent this long is requeued by the reaper"
    )
    max_attempts: int = Field(3, ge=1, description="deliveries of a job before it fails")
    job_store_retry_s: float = Field(
        3600.0,
        gt=0,
        description="a worker keeps a finished job's result this long while the job store "
        "is unreachable, retrying with back-off (the job never runs again meanwhile)",
    )
    tracking_retry_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="a job keeps training while its MLflow server is unreachable (metrics "
        "and artifacts wait on local disk, under data_dir/spool); at its end it waits "
        "this long for the server to take them",
    )
    slots: int = Field(
        1, ge=1, le=64, description="jobs one worker runs at once on its device (--slots)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads per job; default: the node's cores / slots"
    )
    warm_runners: bool = Field(
        True, description="keep a warm job process per slot; false: a fresh one per job"
    )
    runner_max_jobs: int = Field(
        200, ge=1, description="a warm job process is replaced after this many jobs"
    )
    runner_max_memory_mb: int = Field(
        8192, ge=64, description="...or when its resident memory is over this after a job"
    )
    runner_dataset_cache_mb: int = Field(
        2048, ge=0, description="datasets a warm job process keeps on its device, in all"
    )
    stack_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="a slot trains up to this many queued experiments of a sweep that "
        "differ only in seeds and numeric params as one stacked model; 1: never; "
        f"default: {GPU_STACK_SIZE} on a GPU, 1 on the CPU (where it gains ~1.3x at best)",
    )
    inline_analyses: bool = Field(
        True,
        description="run an experiment's analyses in its train job's slot right after "
        "training; false: each analysis goes through the broker to any worker",
    )
    max_sweep_size: int = Field(1000, ge=1, description="experiments one sweep may expand to")
    max_jobs_per_request: int = Field(
        10_000,
        ge=1,
        description="jobs one request may create: a sweep's grid points times each point's "
        "train job and analyses, an experiment's, or one call's analyses",
    )
    max_analyses_per_spec: int = Field(
        16,
        ge=0,
        le=MAX_ANALYSES,
        description="analyses one spec may list, and one call may add to an experiment "
        f"(at most {MAX_ANALYSES}, the schema's own limit)",
    )
    max_queued_jobs_per_user: int = Field(
        100_000,
        ge=1,
        description="queued and running jobs one owner may have; a submission past it is 429",
    )
    max_body_bytes: int = Field(
        1024 * 1024, ge=1024, description="a request body over this is refused with 413"
    )
    max_json_depth: int = Field(
        32,
        ge=8,
        le=200,
        description="a JSON body nested deeper than this (arrays and objects) is refused (422)",
    )
    default_queue: str = Field("cpu", description="queue of jobs whose resources say auto")
    api_token: SecretStr | None = Field(
        None,
        description="deprecated: one shared token, acting as the admin user 'admin'; when "
        "set, every /api/v1 request needs a token (use `regbench users add` instead)",
    )
    auth_reads: bool = Field(
        False, description="reads (GET) need a token too, once users exist; writes always do"
    )
    local_user: str = Field(
        "local",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$",
        description="who every request runs as while no user exists (the embedded default)",
    )

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        # docker-compose passes REGBENCH_API_TOKEN="" when API_TOKEN is unset: no token.
        return None if value == "" else value

    def stack_limit(self, device: str | None) -> int:
        """Experiments one stack may hold on this device (see ``stack_size``)."""
        if self.stack_size is not None:
            return self.stack_size
        return GPU_STACK_SIZE if (device or "").startswith("cuda") else 1

    @property
    def job_store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'jobs.db').resolve()}"

    @property
    def celery_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def secrets(self) -> set[str]:
        """Every secret in this configuration (URI passwords and tokens, the API token):
        what ``service.redact`` masks wherever text is shown."""
        found = set().union(
            *(
                uri_secrets(uri)
                for uri in (self.database_url, self.broker_url, self.mlflow_tracking_uri)
            )
        )
        if self.api_token is not None:
            found.add(self.api_token.get_secret_value())
        return found

    @property
    def tracking_is_server(self) -> bool:
        return self.tracking_uri.startswith(TRACKING_SERVER_SCHEMES)

    def mlflow_artifact_location(self, key: str) -> str | None:
        """Where a new MLflow experiment keeps its artifacts: ``<artifact_root>/<key>`` for
        a local store (MLflow would use ./mlruns of the current directory); a server
        decides. ``key`` comes from ids (``sweep-<sweep hash>``, ``default``), never from a
        name: no name can lead a path out of the artifact root. (Experiments created by
        earlier versions keep the locations they have.)"""
        if self.tracking_is_server:
            return None
        return confined(self.artifact_root, key).as_uri()

    @property
    def default_artifact_location(self) -> str | None:
        """The location of the default MLflow experiment (``mlflow_experiment``) if new."""
        return self.mlflow_artifact_location(DEFAULT_ARTIFACT_KEY)

    @property
    def artifact_root(self) -> Path:
        """Where a local MLflow store keeps artifacts (ignored by a tracking server)."""
        return (self.data_dir / "mlartifacts").resolve()

    @property
    def local_artifact_root(self) -> Path | None:
        """The root every artifact this node writes must stay under; None with a server."""
        return None if self.tracking_is_server else self.artifact_root

    @property
    def spool_dir(self) -> Path:
        """Where workers keep MLflow metrics and artifacts the server could not take yet."""
        return (self.data_dir / "spool").resolve()

    @property
    def runs_dir(self) -> Path:
        """Working directories of runs: checkpoints for resume, spec, metrics."""
        return (self.data_dir / "runs").resolve()

    def run_workdir(self, key: str) -> Path:
        """The working directory of one run, named by an id (an experiment id, an MLflow
        run id): refused for anything that is not a plain id."""
        return confined(self.runs_dir, key)


class UnsafePathKeyError(ValueError):
    """A directory name that is not a plain id (letters, digits, ``_`` and ``-``)."""


def confined(root: Path, key: str) -> Path:
    """``root / key`` for a key that is one plain path segment (an id or a hash), checked
    to stay under ``root``; raises UnsafePathKeyError otherwise."""
    if not _PATH_KEY.fullmatch(key):  # not "$", which passes "id\n"
        raise UnsafePathKeyError(f"{key!r} is not a plain id: refused as a directory name")
    path = (root / key).resolve()
    if not path.is_relative_to(root.resolve()):  # a symlink placed under the root
        raise UnsafePathKeyError(f"{key!r} leads outside {root}")
    return path


@lru_cache
def get_settings() -> Settings:
    return Settings()
