"""The only settings object: ``REGBENCH_*`` environment variables and an optional ``.env``.

The embedded default needs no external service: everything lives under one data
directory (``REGBENCH_DATA_DIR``, default ``./regbench-data``), with MLflow on a local
SQLite store and its artifacts beside it. A cluster points the same code at an MLflow
tracking server with ``REGBENCH_MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        """Where a local MLflow store keeps artifacts (ignored by a tracking server)."""
        return (self.data_dir / "mlartifacts").resolve()

    @property
    def runs_dir(self) -> Path:
        """Working directories of runs: checkpoints for resume, spec, metrics."""
        return (self.data_dir / "runs").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
