"""Dependencies as typed aliases: a route reads
``def get_experiment(experiment: ExperimentDep, settings: SettingsDep)``.

Everything comes from ``app.state``, filled by ``create_app`` and its lifespan: one
settings object, one job-store ``Database``, one Celery app (used only to send), one
``Tracking`` (the MLflow client, made on first use).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, HTTPException, Path, Request, status
from sqlalchemy.orm import Session, selectinload

from api.tracking import Tracking
from service import sweeps, users
from service.db import Database
from service.settings import Settings
from service.tables import Experiment, Sweep
from service.users import Principal


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    return request.app.state.database


def get_celery(request: Request) -> Celery:
    return request.app.state.celery


def get_tracking(request: Request) -> Tracking:
    return request.app.state.tracking


SettingsDep = Annotated[Settings, Depends(get_settings)]

# Ids are hex (``service.tables.new_id``): anything else names no row, and is not sent to
# the database (PostgreSQL refuses NUL in text with an error, not an empty answer).
_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


def _known_form(row_id: str) -> bool:
    return _ID.fullmatch(row_id) is not None


DatabaseDep = Annotated[Database, Depends(get_database)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
TrackingDep = Annotated[Tracking, Depends(get_tracking)]


def get_session(database: DatabaseDep) -> Iterator[Session]:
    """One session per request; routes (through ``api.operations``) commit."""
    with database.session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The dashboard's sign-in (``api.dashboard``) keeps the token in this HttpOnly, SameSite=Strict
# cookie. It is read for reads only: a write always needs the header, so no other site
# can make a browser change anything with it (no CSRF).
TOKEN_COOKIE = "regbench_token"


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


def authenticate(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    authorization: Annotated[str | None, Header(description="Bearer <token>")] = None,
) -> Principal:
    """Who the request acts as (see ``service.users``): the local user while no user
    exists and no ``REGBENCH_API_TOKEN`` is set; else the token's user, and 401 for a
    wrong token, or for none on a write (or on a read with ``REGBENCH_AUTH_READS``). A read
    without the header may present the token in the dashboard's cookie (``TOKEN_COOKIE``).
    The token itself goes nowhere: not into a log line, an error or the database."""
    shared = settings.api_token.get_secret_value() if settings.api_token else ""
    if not shared and not users.any_users(session):
        return Principal(settings.local_user, admin=True)
    if authorization is None and request.method in READ_METHODS:
        cookie = request.cookies.get(TOKEN_COOKIE)
        authorization = f"Bearer {cookie}" if cookie else None
    scheme, _, given = (authorization or "").partition(" ")
    given = given.strip()
    if authorization is not None:
        if scheme.lower() != "bearer" or not given:
            raise _unauthorized("malformed API token: send `Authorization: Bearer <token>`")
        if shared and secrets.compare_digest(given.encode(), shared.encode()):
            return Principal(users.API_TOKEN_USER, admin=True)
        user = users.find_user(session, given)
        if user is None:
            raise _unauthorized("wrong API token (unknown or revoked)")
        return Principal(user.name, admin=user.admin)
    if request.method not in READ_METHODS:
        raise _unauthorized(
            "this request changes something: it needs an API token, sent as "
            "`Authorization: Bearer <token>` (`regbench users add NAME` makes one)"
        )
    if settings.auth_reads or shared:
        raise _unauthorized(
            "missing API token: this server needs one for reads too; send "
            "`Authorization: Bearer <token>`"
        )
    return Principal("anonymous", admin=False, authenticated=False)


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def current_owner(principal: PrincipalDep) -> str:
    """The name of the user the request acts as: the owner of what it submits."""
    return principal.name


OwnerDep = Annotated[str, Depends(current_owner)]


def get_experiment(
    session: SessionDep,
    experiment_id: Annotated[str, Path(description="the experiment's id")],
) -> Experiment:
    experiment = (
        session.get(Experiment, experiment_id, options=[selectinload(Experiment.jobs)])
        if _known_form(experiment_id)
        else None
    )
    if experiment is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no experiment with id {experiment_id!r}")
    return experiment


ExperimentDep = Annotated[Experiment, Depends(get_experiment)]


def get_sweep(
    session: SessionDep, sweep_id: Annotated[str, Path(description="the sweep's id")]
) -> Sweep:
    sweep = sweeps.load(session, sweep_id) if _known_form(sweep_id) else None
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sweep with id {sweep_id!r}")
    return sweep


SweepDep = Annotated[Sweep, Depends(get_sweep)]


def get_sweep_row(
    session: SessionDep, sweep_id: Annotated[str, Path(description="the sweep's id")]
) -> Sweep:
    """The sweep's own row, its members not loaded (progress is counted in SQL)."""
    sweep = session.get(Sweep, sweep_id) if _known_form(sweep_id) else None
    if sweep is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sweep with id {sweep_id!r}")
    return sweep


SweepRowDep = Annotated[Sweep, Depends(get_sweep_row)]
