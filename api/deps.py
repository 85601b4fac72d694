"""Dependencies as typed aliases: a route reads
``def get_experiment(experiment: ExperimentDep, settings: SettingsDep)``.

Everything comes from ``app.state``, filled by ``create_app`` and its lifespan: one
settings object, one job-store ``Database``, one Celery app (used only to send), one
``Tracking`` (the MLflow client, made on first use).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, HTTPException, Path, Request, status
from sqlalchemy.orm import Session, selectinload

from api.tracking import Tracking
from service import sweeps
from service.db import Database
from service.settings import Settings
from service.tables import Experiment, Sweep


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.database


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_tracking(request: Request) -> Tracking:
    return request.app.state.tracking


SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_token(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <token>")] = None,
) -> None:
    """With ``REGBENCH_API_TOKEN`` set, every /api/v1 request must carry it (401 if not)."""
    expected = settings.api_token.get_secret_value() if settings.api_token else ""
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API token: send `Authorization: Bearer <token>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


DatabaseDep = Annotated[Database, Depends(get_database)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
TrackingDep = Annotated[Tracking, Depends(get_tracking)]


def get_session(database: DatabaseDep) -> Iterator[Session]:
    """One session per request; routes (through ``api.operations``) commit."""
    with database.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def findable(row_id: str) -> bool:
    """Whether a row may have this id. PostgreSQL text cannot hold NUL: no id has one, and
    a query with one fails (a 500) instead of finding nothing."""
    return "\x00" not in row_id


def get_experiment(
    session: SessionDep,
    experiment_id: Annotated[str, Path(description="the experiment's id")],
) -> Experiment:
    experiment = (
        session.get(Experiment, experiment_id, options=[selectinload(Experiment.jobs)])
        if findable(experiment_id)
        else None
    )
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment with id {experiment_id!r}")
    return experiment


ExperimentDep = Annotated[Experiment, Depends(get_experiment)]


def get_sweep(
    session: SessionDep, sweep_id: Annotated[str, Path(description="the sweep's id")]
) -> Sweep:
    sweep = sweeps.load(session, sweep_id) if findable(sweep_id) else None
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sweep with id {sweep_id!r}")
    return sweep


SweepDep = Annotated[Sweep, Depends(get_sweep)]


def get_sweep_row(
    session: SessionDep, sweep_id: Annotated[str, Path(description="the sweep's id")]
) -> Sweep:
    """The sweep's own row, its members not loaded (progress is counted in SQL)."""
    sweep = session.get(Sweep, sweep_id) if findable(sweep_id) else None
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sweep with id {sweep_id!r}")
    return sweep


SweepRowDep = Annotated[Sweep, Depends(get_sweep_row)]
