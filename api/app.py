"""The FastAPI app: ``create_app(settings)``; serve with
``uvicorn --factory api.app:create_app``. Routes under ``/api/v1``, ``/healthz`` at the
root, OpenAPI at ``/docs``, the sweep dashboard at ``/dashboard`` (``api.dashboard``).

Start-up (the lifespan) opens the job store and refuses to serve a database that is not
at the newest migration: ``SchemaOutdatedError`` propagates with the command to run
(``regbench db upgrade``). Nothing at start-up needs the broker or MLflow, so
``/healthz`` can report them down.

Errors keep one shape, ``{"detail": ...}``: 404 for unknown ids, 422 for invalid input
(FastAPI's own answer, whose ``detail[].loc`` is the field path, such as
``["body", "regularizers", 0, "name"]``; also for a body that is not UTF-8 JSON), 401
for a wrong token, or none where one is needed (writes once users exist, reads too with
``REGBENCH_AUTH_READS``; ``/healthz`` and ``/metrics`` stay open), 403 for a change to
another user's work, 400 for a bad artifact path, 409 for analyses on a failed
experiment, 413 for a body over ``REGBENCH_MAX_BODY_BYTES``, 422 for a JSON body nested
too deep or holding a non-finite number, NUL or a lone surrogate (``api.bodies``) and
for a request over a limit on its work (``service.limits``), 429 when the submitter's
queue is full, 503 when the broker, the tracking store or the job store is unavailable
(with ``Retry-After``), and a logged 500 with a short message for anything unexpected
(never a traceback). Each status a route can answer is declared in its OpenAPI
operation (``api.responses``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import Depends, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import dashboard, docs
from api.bodies import BodyLimits
from api.deps import authenticate
from api.operations import ConflictError, ForbiddenError, NotEnqueuedError
from api.responses import API_ROUTES, EVERY_ROUTE
from api.routes import api_router, health, metrics
from api.tracking import (
    ArtifactNotFoundError,
    ArtifactPathError,
    Tracking,
    TrackingUnavailableError,
)
from regcore import __version__
from service import users
from service.broker import make_celery
from service.db import Database
from service.limits import LimitError, QueueFullError
from service.redact import install_log_redaction, mask_text
from service.schema import assert_schema_current
from service.settings import Settings, get_settings
from service.sweeps import SweepInvalidError, SweepTooLargeError

API_PREFIX = "/api/v1"
MAX_BODY_BYTES = Settings.model_fields["max_body_bytes"].default  # REGBENCH_MAX_BODY_BYTES
RETRY_AFTER_S = "30"

logger = logging.getLogger("regbench.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings if settings is not None else get_settings()
    install_log_redaction(settings.secrets)  # no log line of this process shows them
    app = FastAPI(
        title="regbench",
        version=__version__,
        summary="A job queue for benchmarking neural-network regularizers",
        lifespan=_lifespan(settings),
        docs_url=None,  # api.docs serves /docs and /redoc with local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(
        api_router, prefix=API_PREFIX, dependencies=[Depends(authenticate)], responses=API_ROUTES
    )
    app.include_router(health.router, responses=EVERY_ROUTE)
    app.include_router(metrics.router, responses=EVERY_ROUTE)
    docs.install(app)
    dashboard.install(app)  # /dashboard: server-rendered pages over the same calls
    for error, handler in _EXCEPTION_HANDLERS.items():
        app.add_exception_handler(error, handler)
    app.add_middleware(
        BodyLimits, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )
    return app


def _lifespan(settings: Settings) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.job_store_url)
        try:
            await to_thread.run_sync(assert_schema_current, database.engine)
        except BaseException:
            database.dispose()
            raise
        app.state.database = database
        await to_thread.run_sync(log_auth_mode, settings, database)
        app.state.celery = make_celery(settings)  # only to send job ids
        app.state.tracking = Tracking(settings)
        try:
            yield
        finally:
            app.state.celery.close()
            database.dispose()

    return lifespan


def log_auth_mode(settings: Settings, database: Database) -> None:
    if settings.api_token is not None:
        logger.warning(
            "REGBENCH_API_TOKEN is deprecated: make users with `regbench users add NAME`"
        )
    with database.session() as session:
        line = users.auth_mode(settings, session)
    # Open to everyone as an admin: worth a warning where a server is shared.
    level = logging.INFO if line.startswith(users.WITH_USERS) else logging.WARNING
    logger.log(level, "%s", line)


# --------------------------------------------------------------------------- errors


def _detail(status_code: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status_code)


def _masked(request: Request, exc: Exception) -> str:
    """The error's text as it may be shown: URI passwords and the app's secrets masked."""
    return mask_text(str(exc), request.app.state.settings.secrets)


async def _not_enqueued(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, NotEnqueuedError)
    message = _masked(request, exc)
    logger.warning("%s", message)
    response = _detail(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        message,
        **({"sweep_id": exc.sweep_id} if exc.sweep_id else {"experiment_id": exc.experiment_id}),
        job_ids=exc.job_ids,
    )
    response.headers["Retry-After"] = RETRY_AFTER_S
    return response


async def _invalid_sweep(request: Request, exc: Exception) -> JSONResponse:
    """422 in FastAPI's own shape, so clients read a grid's errors like any other."""
    if isinstance(exc, SweepTooLargeError):
        errors = [{"loc": ["body", "grid"], "msg": str(exc), "type": "sweep_too_large"}]
    else:
        assert isinstance(exc, SweepInvalidError)
        errors = [{**error, "loc": ["body", *error["loc"]]} for error in exc.errors]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _over_limit(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LimitError)
    return JSONResponse({"detail": exc.errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    response = _detail(status.HTTP_429_TOO_MANY_REQUESTS, str(exc))
    response.headers["Retry-After"] = RETRY_AFTER_S
    return response


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422, but one whose echoed inputs cannot be written as JSON (a value
    ``api.bodies`` did not see) loses its ``input`` rather than becoming a 500."""
    assert isinstance(exc, RequestValidationError)
    status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
    try:
        response = JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code)
    except (ValueError, UnicodeError, RecursionError):
        plain = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        response = JSONResponse({"detail": jsonable_encoder(plain)}, status_code)
    return response


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: %s", request.method, request.url.path, _masked(request, exc))
    if isinstance(exc, OperationalError):
        message = "the job store is unavailable; try again later"
    else:
        message = _masked(request, exc)
    response = _detail(status.HTTP_503_SERVICE_UNAVAILABLE, message)
    response.headers["Retry-After"] = RETRY_AFTER_S
    return response


# FastAPI's 400 for a body it cannot read as text (not UTF-8); a body that is text but
# not JSON is already its 422 ``json_invalid``.
_BODY_NOT_PARSED = "There was an error parsing the body"


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own answer, but an unreadable body is bad input like any other: 422."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST and exc.detail == _BODY_NOT_PARSED:
        error = {"loc": ["body"], "msg": "the body is not UTF-8 JSON text", "type": "json_invalid"}
        return JSONResponse({"detail": [error]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
    return await http_exception_handler(request, exc)


def _with_status(code: int) -> Callable[[Request, Exception], Any]:
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return _detail(code, _masked(request, exc))

    return handler


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _detail(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        f"internal error ({type(exc).__name__}); the server log has the details",
    )


_EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Any]] = {
    StarletteHTTPException: _http_error,
    NotEnqueuedError: _not_enqueued,
    SweepTooLargeError: _invalid_sweep,
    SweepInvalidError: _invalid_sweep,
    LimitError: _over_limit,
    QueueFullError: _queue_full,
    RequestValidationError: _invalid_request,
    TrackingUnavailableError: _unavailable,
    OperationalError: _unavailable,
    ConflictError: _with_status(status.HTTP_409_CONFLICT),
    ForbiddenError: _with_status(status.HTTP_403_FORBIDDEN),
    ArtifactPathError: _with_status(status.HTTP_400_BAD_REQUEST),
    ArtifactNotFoundError: _with_status(status.HTTP_404_NOT_FOUND),
    Exception: _unexpected,
}
