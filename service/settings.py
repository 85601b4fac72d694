"""The only settings object: ``REGBENCH_*`` environment variables and an optional ``.env``.

The embedded default needs no external service: everything lives under one data
directory (``REGBENCH_DATA_DIR``, default ``./regbench-data``): the job store and the
Celery broker on SQLite files, MLflow on a local SQLite store with its artifacts
beside it. A cluster points the same code at PostgreSQL (``REGBENCH_DATABASE_URL``),
Redis (``REGBENCH_BROKER_URL``) and an MLflow tracking server
(``REGBENCH_MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

TRACKING_SERVER_SCHEMES = ("http://", "https://", "databricks")
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
    default_queue: str = Field("cpu", description="queue of jobs whose resources say auto")
    api_token: SecretStr | None = Field(
        None, description="if set, /api/v1 requires `Authorization: Bearer <token>`"
    )

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
    def tracking_is_server(self) -> bool:
        return self.tracking_uri.startswith(TRACKING_SERVER_SCHEMES)

    def mlflow_artifact_location(self, experiment_name: str) -> str | None:
        """Where a new MLflow experiment keeps its artifacts: under the data dir for a local
        store (MLflow would use ./mlruns of the current directory); a server decides."""
        if self.tracking_is_server:
            return None
        return (self.artifact_root / experiment_name).as_uri()

    @property
    def artifact_root(self) -> Path:
        """Where a local MLflow store keeps artifacts (ignored by a tracking server)."""
        return (self.data_dir / "mlartifacts").resolve()

    @property
    def spool_dir(self) -> Path:
        """Where workers keep MLflow metrics and artifacts the server could not take yet."""
        return (self.data_dir / "spool").resolve()

    @property
    def runs_dir(self) -> Path:
        """Working directories of runs: checkpoints for resume, spec, metrics."""
        return (self.data_dir / "runs").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
